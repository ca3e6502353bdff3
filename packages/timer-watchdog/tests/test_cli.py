"""The command's parts that need no transport: arguments, exit statuses, discovery, reporting."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from timer_api import RejectReason, signal_name
from timer_watchdog import (
    Armed,
    Exited,
    Expired,
    Frame,
    Reaped,
    Rejected,
    Released,
    Signalled,
    Unkillable,
    WatchdogStats,
    decode_event,
)
from timer_watchdog._cli import build_parser, main
from timer_watchdog._job import exit_status
from timer_watchdog._options import signal_number as parse_signal
from timer_watchdog._summary import EventLog, describe, format_summary
from timer_watchdog._transports import ENTRY_POINT_GROUP, TransportError, available, load

BOUND = 60.0

HUNG = [
    Armed(time=1.0, pid=42, scope_id="train.py#10", expires_in=2.0),
    Expired(time=3.0, pid=42, scope_id="train.py#10", late=0.01, expiration_time=3.0),
    Signalled(time=3.1, pid=42, scope_id="train.py#10", signal=15, late=0.1, detail="first"),
    Signalled(time=8.1, pid=42, scope_id="train.py#10", signal=9, late=5.1, detail="escalation"),
    Reaped(
        time=8.2,
        pid=42,
        scope_id="train.py#10",
        signal=9,
        late=5.2,
        stack_path="/s/worker-42-7.stack",
        frame=Frame("train.py", 33, "all_reduce"),
    ),
]


class TestArguments:
    @pytest.mark.parametrize(
        ("text", "number"),
        [
            ("SIGTERM", 15),
            ("TERM", 15),
            ("term", 15),
            ("9", 9),
            ("SIGUSR1", signal.SIGUSR1),
            ("RTMIN+4", int(signal.SIGRTMIN) + 4),
        ],
    )
    def test_signal_names_and_numbers(self, text, number):
        assert parse_signal(text) == number

    @pytest.mark.parametrize("text", ["SIGNOPE", "0", "-1", "999", ""])
    def test_bad_signal(self, text):
        with pytest.raises(Exception, match="not a signal"):
            parse_signal(text)

    def test_defaults(self):
        args = build_parser().parse_args(["run", "--", "true"])
        assert args.signal == signal.SIGKILL
        assert args.grace == 0.0
        assert args.max_interval == 60.0
        assert args.transport == "pipe"

    @pytest.mark.parametrize(
        "argv",
        [
            ["run"],
            ["run", "--grace", "nan", "--", "true"],
            ["run", "--grace", "-2", "--", "true"],
            ["run", "--max-interval", "0", "--", "true"],
            ["run", "--signal", "BOGUS", "--", "true"],
            ["run", "--transport", "none-such", "--", "true"],
            ["serve"],
            ["launch"],
        ],
    )
    def test_errors_are_one_line_and_status_2(self, capsys, argv):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("timer-watchdog")

    def test_unwritable_events_file(self, capsys, tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--events", str(tmp_path / "no" / "dir.jsonl"), "--", "true"])
        assert exit_info.value.code == 2
        assert "cannot write --events" in capsys.readouterr().err


class TestExitStatus:
    @pytest.mark.parametrize(
        ("returncode", "status"), [(0, 0), (3, 3), (255, 255), (-9, 137), (-15, 143), (-2, 130)]
    )
    def test_like_a_shell(self, returncode, status):
        assert exit_status(returncode) == status


class TestTransports:
    def test_unknown_transport_names_the_installed_ones(self):
        with pytest.raises(TransportError, match="no transport named 'none-such'"):
            load("none-such")

    def test_found_through_entry_points(self, tmp_path):
        site = tmp_path / "site"
        dist = site / "demo_transport-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: demo-transport\nVersion: 1.0\n"
        )
        (dist / "entry_points.txt").write_text(
            f"[{ENTRY_POINT_GROUP}]\ndemo = demo_transport:Factory\n"
        )
        (site / "demo_transport.py").write_text("class Factory:\n    pass\n")
        code = textwrap.dedent(
            """
            from timer_watchdog._transports import available, load
            print("demo" in available(), load("demo").__name__)
            """
        )
        env = {**os.environ, "PYTHONPATH": str(site)}
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert result.stdout.split() == ["True", "Factory"], result.stderr

    def test_available_is_sorted(self):
        names = available()
        assert names == sorted(names)


class TestEventLog:
    def test_events_file_gets_every_event_as_a_json_line(self):
        events, log = io.BytesIO(), io.StringIO()
        sink = EventLog(log=log, events=events)
        for event in HUNG:
            sink(event)
        assert [decode_event(line) for line in events.getvalue().splitlines()] == HUNG

    def test_notes_from_another_thread_never_write_inside_an_event(self):
        class OneWriterAtATime(io.StringIO):
            """Fail a write that starts while another thread's write is still going on."""

            busy = False
            overlaps = 0

            def write(self, text: str) -> int:
                if self.busy:
                    self.overlaps += 1
                self.busy = True
                time.sleep(0.0005)  # a slow terminal: widens the window
                self.busy = False
                return super().write(text)

        log = OneWriterAtATime()
        sink = EventLog(log=log, verbose=True)

        def server_thread() -> None:
            for _ in range(100):
                for event in HUNG:
                    sink(event)

        thread = threading.Thread(target=server_thread)
        thread.start()
        for _ in range(200):
            sink.note("a line of the command's own")
        thread.join()
        assert log.overlaps == 0
        assert log.getvalue().count("a line of the command's own") == 200

    def test_log_skips_arms_unless_verbose(self):
        quiet, loud = io.StringIO(), io.StringIO()
        for event in HUNG:
            EventLog(log=quiet)(event)
            EventLog(log=loud, verbose=True)(event)
        assert "armed" not in quiet.getvalue()
        assert "armed 'train.py#10'" in loud.getvalue()
        assert all(
            line.startswith(("timer-watchdog: ", "    ")) for line in quiet.getvalue().splitlines()
        )

    def test_json_log_is_the_events(self):
        log = io.StringIO()
        sink = EventLog(log=log, as_json=True)
        for event in HUNG:
            sink(event)
        lines = [json.loads(line) for line in log.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["expired", "signalled", "signalled", "reaped"]

    def test_summary_of_a_killed_worker(self):
        sink = EventLog(log=io.StringIO())
        for event in HUNG:
            sink(event)
        summary = sink.summary(
            stopped="command exited", exit_status=1, seconds=9.0, stats=WatchdogStats(armed=1)
        )
        assert summary.workers == 1
        (expiry,) = summary.expiries
        assert (expiry.pid, expiry.outcome, expiry.signal) == (42, "reaped", "SIGKILL")
        assert expiry.frame == Frame("train.py", 33, "all_reduce")
        text = format_summary(summary)
        assert "command exited (status 1)" in text
        assert "pid 42: killed with SIGKILL, 5.20s after the deadline of 'train.py#10'" in text
        assert "stuck in all_reduce() at train.py:33" in text
        assert "stack dump: /s/worker-42-7.stack" in text

    def test_summary_of_an_observed_expiry(self):
        sink = EventLog(log=io.StringIO())
        sink(HUNG[1])
        summary = sink.summary(stopped="x", exit_status=0, seconds=1.0, stats=WatchdogStats())
        assert summary.expiries[0].outcome == "expired"
        assert "not signalled" in format_summary(summary)

    def test_summary_without_expiries(self):
        sink = EventLog(log=io.StringIO())
        summary = sink.summary(stopped="x", exit_status=0, seconds=1.0, stats=WatchdogStats())
        assert "no timer expired" in format_summary(summary)


class TestDescribe:
    @pytest.mark.parametrize(
        ("event", "text"),
        [
            (HUNG[1], "pid 42: timer 'train.py#10' expired (0.01s late)"),
            (HUNG[2], "pid 42: sent SIGTERM"),
            (HUNG[3], "pid 42: sent SIGKILL, the grace period being over"),
            (
                Released(time=1.0, pid=42, scope_id="a"),
                "pid 42: released 'a'",
            ),
            (
                Unkillable(
                    time=1.0, pid=42, scope_id="a", signal=9, late=9.0, state="D (disk sleep)"
                ),
                "pid 42: still alive after SIGKILL (state D (disk sleep)); sending it again",
            ),
            (
                Rejected(time=1.0, reason=RejectReason.BAD_PID, detail="pid 0", pid=None),
                "rejected a request: bad_pid: pid 0",
            ),
            (Exited(time=1.0, pid=42, timers=2), "pid 42 exited holding 2 timer(s)"),
        ],
    )
    def test_one_readable_line(self, event, text):
        assert describe(event) == text

    @pytest.mark.parametrize(
        ("signum", "name"),
        [(9, "SIGKILL"), (int(signal.SIGRTMIN) + 4, "SIGRTMIN+4"), (15, "SIGTERM")],
    )
    def test_signal_names(self, signum, name):
        assert signal_name(signum) == name
