"""End to end: the job snapshot and report under ``timer-watchdog run``, and ``report`` across hosts.

Real jobs of several rank processes; real watchdogs standing in for hosts (``--host-label``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timer_watchdog import JobSnapshot, Signalled, decode_event

BOUND = 90.0
WATCHDOG = [sys.executable, "-m", "timer_watchdog"]

#: A launcher: starts one rank per argv entry ``MODE:TIMEOUT`` with RANK in its
#: environment; when a rank dies, kills the others and exits 1. Ranks in mode
#: ``load`` hang in load_batch(), ``wait`` in wait_for_peer(), ``deaf`` wait with
#: the dump signal blocked (they never answer the snapshot).
#: One rank: argv[1] its mode, argv[2] its timer's timeout. Mode ``load`` hangs in
#: load_batch(), ``wait`` in wait_for_peer(), ``deaf`` waits with the dump signal
#: blocked (it never answers the snapshot).
RANK = """
import signal, sys, time
from timer_api import DEFAULT_STACK_SIGNAL, expires
from timer_file import configure_from_env

configure_from_env()
mode, timeout = sys.argv[1], float(sys.argv[2])
if mode == "deaf":
    signal.pthread_sigmask(signal.SIG_BLOCK, {DEFAULT_STACK_SIGNAL})

def load_batch():
    while True:
        time.sleep(0.05)

def wait_for_peer():
    while True:
        time.sleep(0.05)

with expires(after=timeout):
    (load_batch if mode == "load" else wait_for_peer)()
"""

#: A launcher: starts one rank (argv[1] its script) per later argv entry
#: ``MODE:TIMEOUT``, with RANK in its environment; when a rank dies, kills the others
#: and exits 1.
LAUNCHER = """
import os, subprocess, sys, time

script, specs = sys.argv[1], sys.argv[2:]
ranks = []
for rank, spec in enumerate(specs):
    mode, timeout = spec.split(":")
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(len(specs)))
    ranks.append(subprocess.Popen([sys.executable, script, mode, timeout], env=env))
end = time.monotonic() + 80
while all(r.poll() is None for r in ranks) and time.monotonic() < end:
    time.sleep(0.02)
for r in ranks:
    if r.poll() is None:
        r.kill()
    r.wait()
sys.exit(1)
"""


def launcher(tmp_path: Path) -> list[str]:
    """Return the command that starts the launcher (its rank specs follow)."""
    (tmp_path / "train.py").write_text(RANK)
    (tmp_path / "launch.py").write_text(LAUNCHER)
    return [sys.executable, str(tmp_path / "launch.py"), str(tmp_path / "train.py")]


def watchdog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WATCHDOG, *args], capture_output=True, text=True, timeout=BOUND, check=False
    )


def summary_of(stderr: str) -> dict:
    """Return the ``--json`` summary (the last JSON line with ``stats``)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("{") and '"stats"' in line:
            return json.loads(line)
    raise AssertionError(f"no summary in: {stderr}")


def events_of(path: Path) -> list:
    return [decode_event(line) for line in path.read_bytes().splitlines()]


@pytest.mark.slow
def test_run_reports_every_rank_grouped_by_user_frame_and_names_the_culprit(tmp_path):
    stacks, events = tmp_path / "stacks", tmp_path / "events.jsonl"
    result = watchdog(
        "run",
        "--json",
        "--snapshot-budget",
        "20",
        "--stacks",
        str(stacks),
        "--events",
        str(events),
        "--",
        *launcher(tmp_path),
        "wait:60",
        "load:1",
        "wait:60",
    )
    assert result.returncode == 1, result.stderr
    job = summary_of(result.stderr)["job"]
    assert job is not None, result.stderr
    assert job["culprit_rank"] == "1"
    groups = [
        (g["frame"]["function"] if g["frame"] else None, g["members"], g["culprit"])
        for g in job["groups"]
    ]
    assert groups[0] == ("load_batch", ["rank 1"], True), groups
    assert ("wait_for_peer", ["rank 0", "rank 2"], False) in groups
    launcher_group = [g for g in job["groups"] if g["members"] == [f"pid {g['pids'][0]}"]]
    assert launcher_group, "the launcher (no rank label) is in the report"
    (snapshot,) = [e for e in events_of(events) if isinstance(e, JobSnapshot)]
    ranks = {p.labels.get("RANK"): p for p in snapshot.processes if p.labels}
    assert ranks["1"].labels == {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "3"}
    assert all(ranks[r].source == "handler" for r in "012")
    (report,) = stacks.glob("*/job-report.txt")
    text = report.read_text()
    assert "1 process (rank 1): load_batch() at " in text
    assert "its timer expired first" in text
    assert "2 processes (ranks 0, 2): wait_for_peer() at " in text


@pytest.mark.slow
def test_a_rank_that_never_answers_is_marked_and_the_kill_waits_only_the_budget(tmp_path):
    events = tmp_path / "events.jsonl"
    result = watchdog(
        "run",
        "--stacks",
        str(tmp_path / "stacks"),
        "--snapshot-budget",
        "1",
        "--events",
        str(events),
        "--",
        *launcher(tmp_path),
        "deaf:60",
        "load:0.5",
    )
    assert result.returncode == 1, result.stderr
    recorded = events_of(events)
    (snapshot,) = [e for e in recorded if isinstance(e, JobSnapshot)]
    deaf = next(p for p in snapshot.processes if p.labels.get("RANK") == "0")
    assert deaf.answered is False
    assert deaf.reason is not None
    assert "no answer within budget" in deaf.reason
    culprit = next(p for p in snapshot.processes if p.labels.get("RANK") == "1")
    first = next(e for e in recorded if isinstance(e, Signalled) and e.pid == culprit.pid)
    assert first.detail == "first"
    assert first.held >= 0.99  # it waited for the budget (the deaf rank never answered)
    assert "no answer within budget" in result.stderr


def test_no_job_snapshot_takes_none(tmp_path):
    events = tmp_path / "events.jsonl"
    result = watchdog(
        "run",
        "--no-job-snapshot",
        "--events",
        str(events),
        "--",
        *launcher(tmp_path),
        "load:0.3",
    )
    assert result.returncode == 1, result.stderr
    assert not [e for e in events_of(events) if isinstance(e, JobSnapshot)]
    assert "job report" not in result.stderr


@pytest.mark.slow
def test_report_merges_three_hosts_in_wall_clock_order(tmp_path):
    reports = tmp_path / "reports"
    # One after the other, so the expiries' wall-clock order is known: b, then a, then c.
    for host, ranks in (
        ("host-b", ["wait:60", "load:0.3"]),
        ("host-a", ["load:0.3", "wait:60"]),
        ("host-c", ["wait:60", "wait:60", "load:0.3"]),
    ):
        result = watchdog(
            "run",
            "--snapshot-budget",
            "20",
            "--stacks",
            str(tmp_path / "stacks"),
            "--report-dir",
            str(reports),
            "--host-label",
            host,
            "--",
            *launcher(tmp_path),
            *ranks,
        )
        assert result.returncode == 1, result.stderr
    names = sorted(os.listdir(reports))
    assert names == [
        "events.host-a.jsonl",
        "events.host-b.jsonl",
        "events.host-c.jsonl",
        "job-report.host-a.json",
        "job-report.host-b.json",
        "job-report.host-c.json",
    ]
    merged = watchdog("report", "--json", str(reports))
    assert merged.returncode == 0, merged.stderr
    view = json.loads(merged.stdout)
    assert view["hosts"] == ["host-a", "host-b", "host-c"]
    assert (view["first"]["host"], view["first"]["rank"]) == ("host-b", "1")
    culprits = [(e["host"], e["rank"]) for e in view["expiries"]]
    assert culprits == [("host-b", "1"), ("host-a", "0"), ("host-c", "2")]
    (loading,) = [
        g for g in view["groups"] if g["frame"] and g["frame"]["function"] == "load_batch"
    ]
    assert loading["members"] == ["host-a: rank 0", "host-b: rank 1", "host-c: rank 2"]
    assert loading["culprit"] is True
    text = watchdog("report", str(reports))
    assert text.returncode == 0, text.stderr
    assert f"first to expire: pid {view['first']['pid']} (rank 1) on host-b" in text.stdout


def test_report_of_an_empty_directory_fails_clearly(tmp_path):
    result = watchdog("report", str(tmp_path))
    assert result.returncode == 1
    assert f"no job report in {tmp_path}" in result.stderr


def test_serve_takes_the_job_snapshot_when_asked(tmp_path):
    pipe, events = tmp_path / "timer.pipe", tmp_path / "events.jsonl"
    serve = subprocess.Popen(
        [
            *WATCHDOG,
            "serve",
            "--path",
            str(pipe),
            "--events",
            str(events),
            "--job-snapshot",
            "--snapshot-budget",
            "20",
            "--stacks",
            str(tmp_path / "stacks"),
            "--host-label",
            "node-7",
            "--report-dir",
            str(tmp_path / "reports"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + BOUND
        while not pipe.exists():
            assert serve.poll() is None, serve.communicate()
            assert time.monotonic() < end, "serve never created its pipe"
            time.sleep(0.05)
        (tmp_path / "train.py").write_text(RANK)
        env = {
            **os.environ,
            "TORCHELASTIC_TIMER_FILE": str(pipe),
            "TIMER_WATCHDOG_STACKS": str(tmp_path / "stacks"),
            "RANK": "5",
        }
        rank = subprocess.run(
            [sys.executable, str(tmp_path / "train.py"), "load", "0.3"],
            env=env,
            timeout=BOUND,
            check=False,
        )
        assert rank.returncode == -signal.SIGKILL
        while not [e for e in events_of(events) if isinstance(e, JobSnapshot)]:
            assert time.monotonic() < end, "no snapshot event"
            time.sleep(0.05)
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=BOUND)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()
    assert serve.returncode == 0, err
    assert "1 process (rank 5): load_batch() at " in err
    host_file = json.loads((tmp_path / "reports" / "job-report.node-7.json").read_text())
    assert host_file["report"]["culprit_rank"] == "5"
