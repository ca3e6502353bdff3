"""End to end: ``timer-watchdog run --progress/--heartbeat`` on real shell jobs."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tty

import pytest

#: Bound on any one command; only reached when something is broken.
BOUND = 60.0

STALLED = re.compile(
    r"  stalled: no line matching 'step \\d\+' for 1 s; "
    r"last progress: 'step 3 loss 0\.3' at \d\d:\d\d:\d\d\n"
)

#: A first progress may come this late (a loaded machine may take seconds to start a
#: shell); after it, ``--stall`` alone counts.
SLOW_START = ("--startup", "30")

#: Prints one line on stderr, starts a child that holds on too, prints three progress
#: lines (in one write, so that a pause of the shell cannot fall between them), hangs.
PROGRESS_THEN_HANG = (
    "echo on stderr >&2; sleep 600 & "
    "printf 'step 1 loss 0.1\\nstep 2 loss 0.2\\nstep 3 loss 0.3\\n'; sleep 600; echo never"
)


#: The command line of ``timer-watchdog``.
WATCHDOG = (sys.executable, "-m", "timer_watchdog")


def watchdog(*args: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
    """Run ``timer-watchdog ARGS`` to the end and return what it did (bytes)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [*WATCHDOG, *args],
        timeout=BOUND,
        check=False,
        **kwargs,
    )


def run_args(
    *command: str,
    stall: str,
    progress: str | None = None,
    heartbeat: str | None = None,
    options: tuple[str, ...] = (),
) -> list[str]:
    """Return ``run [--progress P] [--heartbeat H] --stall S OPTIONS -- COMMAND``."""
    args = ["run"]
    if progress is not None:
        args += ["--progress", progress]
    if heartbeat is not None:
        args += ["--heartbeat", heartbeat]
    return [*args, "--stall", stall, *options, "--", *command]


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(0.02)


class TestStall:
    def test_progress_then_silence_kills_the_whole_job(self):
        result = watchdog(
            *run_args(
                "sh", "-c", PROGRESS_THEN_HANG, progress=r"step \d+", stall="1", options=SLOW_START
            )
        )
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGKILL, err
        assert result.stdout == b"step 1 loss 0.1\nstep 2 loss 0.2\nstep 3 loss 0.3\n", err
        assert err.startswith("on stderr\n"), err
        assert STALLED.search(err), err
        # The live line, then the sh and its background sleep killed as expired timers.
        assert "; stopping the job\n" in err
        assert "still holding timers" not in err  # the stall's timers are no outlivers
        assert len(re.findall(r"pid \d+: killed with SIGKILL, .* of 'stall'", err)) >= 2, err

    def test_the_policy_signal_applies(self):
        result = watchdog(
            *run_args(
                "sh",
                "-c",
                "echo step 1; exec sleep 600",
                progress=r"step \d+",
                stall="1s",
                options=(*SLOW_START, "--signal", "TERM"),
            )
        )
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGTERM, err
        assert "killed with SIGTERM" in err, err
        assert "last progress: 'step 1'" in err, err

    def test_command_that_exits_by_itself_while_stopped_still_fails(self):
        # sh ignores the policy's SIGTERM, its child (which does not) dies of it, and
        # sh goes on to exit 0.
        child = f"{sys.executable} -c 'import signal, time; "
        child += 'signal.signal(signal.SIGTERM, signal.SIG_DFL); print("step 1", flush=True); '
        child += "time.sleep(600)'"
        result = watchdog(
            *run_args(
                "sh",
                "-c",
                f"trap '' TERM; {child}; exit 0",
                progress=r"step \d+",
                stall="1",
                # The stall comes after the child is set up and says so.
                options=("--startup", "60", "--signal", "TERM", "--grace", "30"),
            )
        )
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGTERM, err
        assert "command exited (status 143)" in err, err

    def test_keeps_printing_is_never_touched(self):
        result = watchdog(
            *run_args(
                "sh",
                "-c",
                "i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo step $i; sleep 0.05; done",
                progress=r"step \d+",
                stall="20",
            )
        )
        err = result.stderr.decode()
        assert result.returncode == 0, err
        assert "stalled" not in err
        assert "no timer expired" in err
        assert result.stdout.splitlines()[-1] == b"step 20"

    def test_startup_allows_a_slow_start(self, tmp_path):
        go = tmp_path / "go"
        # Without --startup the job would stall at 1 s; it waits for the test, then runs.
        result_proc = subprocess.Popen(
            [
                *WATCHDOG,
                *run_args(
                    "sh",
                    "-c",
                    f"echo starting; while [ ! -e {go} ]; do sleep 0.05; done; echo step 1",
                    progress=r"step \d+",
                    stall="30",
                    options=("--startup", "60"),
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert result_proc.stdout is not None
            assert result_proc.stdout.readline() == b"starting\n"
            go.touch()
            out, err = result_proc.communicate(timeout=BOUND)
        finally:
            result_proc.kill()
            result_proc.wait()
        assert result_proc.returncode == 0, err
        assert out == b"step 1\n"
        assert b"stalled" not in err

    def test_startup_limits_the_wait_for_the_first_progress(self):
        result = watchdog(
            *run_args(
                "sh",
                "-c",
                "echo loading; exec sleep 600",
                progress=r"step \d+",
                stall="1h",
                options=("--startup", "1"),
            )
        )
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGKILL, err
        assert (
            "  stalled: no line matching 'step \\d+' for 1 s since the start; no progress seen\n"
            in err
        )

    def test_json_summary_says_why(self):
        result = watchdog(
            *run_args("sh", "-c", "exec sleep 600", progress="step", stall="1", options=("--json",))
        )
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGKILL, err
        summary = json.loads(err.splitlines()[-1])
        assert summary["exit_status"] == 128 + signal.SIGKILL, err
        assert summary["stalled"] == (
            "stalled: no line matching 'step' for 1 s since the start; no progress seen"
        ), err
        assert [e["scope_id"] for e in summary["expiries"]] == ["stall"], err

    def test_a_timer_of_the_job_fires_first(self, tmp_path):
        worker = tmp_path / "worker.py"
        worker.write_text(
            textwrap.dedent(
                """
                import time
                from timer_api import expires
                from timer_file import configure_from_env

                configure_from_env()
                with expires(after=0.5, scope="hung-step"):
                    while True:
                        print("step 1", flush=True)
                        time.sleep(0.05)
                """
            )
        )
        result = watchdog(*run_args(sys.executable, str(worker), progress=r"step \d+", stall="1h"))
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGKILL, err
        assert "of 'hung-step'" in err
        assert "stalled" not in err


class TestHeartbeat:
    def test_touches_then_none_is_a_stall(self, tmp_path):
        beat = tmp_path / "alive"
        result = watchdog(
            *run_args(
                "sh",
                "-c",
                f"echo touched; touch {beat}; exec sleep 600",
                heartbeat=str(beat),
                stall="1",
                options=SLOW_START,
            )
        )
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGKILL, err
        # --heartbeat alone leaves the output alone: the job writes straight to ours.
        assert result.stdout == b"touched\n", err
        assert re.search(
            rf"  stalled: no change of {re.escape(str(beat))}'s mtime for 1 s; "
            rf"last progress: {re.escape(str(beat))} touched at \d\d:\d\d:\d\d\n",
            err,
        ), err

    def test_kept_touching_is_never_touched(self, tmp_path):
        beat = tmp_path / "alive"
        result = watchdog(
            *run_args(
                "sh",
                "-c",
                f"i=0; while [ $i -lt 20 ]; do i=$((i+1)); touch {beat}; sleep 0.05; done",
                heartbeat=str(beat),
                stall="20",
            )
        )
        err = result.stderr.decode()
        assert result.returncode == 0, err
        assert "stalled" not in err


class TestOutput:
    def test_both_streams_byte_exact(self, tmp_path):
        out = os.urandom(5_000_000) + b"\r\nstep 1\n\0no newline at the end"
        err = b"step 2\r" + os.urandom(3_000_000) + b"\n\n\x1b[31m"
        (tmp_path / "out").write_bytes(out)
        (tmp_path / "err").write_bytes(err)
        script = (
            f"cat {tmp_path / 'out'} & cat {tmp_path / 'err'} >&2 & "
            "wait; printf tail; printf tail >&2"
        )
        result = watchdog(*run_args("sh", "-c", script, progress="step", stall="1h"))
        assert result.returncode == 0, result.stderr[-2000:]
        assert (
            hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(out + b"tail").hexdigest()
        )
        job_err = result.stderr[: len(err) + 4]
        assert hashlib.sha256(job_err).hexdigest() == hashlib.sha256(err + b"tail").hexdigest()
        assert result.stderr[len(err) + 4 :].startswith(b"timer-watchdog summary:")

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run drops its right to read")
    @pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
    def test_files_we_cannot_read_opened_to_append_byte_exact(self, tmp_path):
        # run cannot follow a file it may not read: the output goes through a pipe of
        # its own, and a file opened O_APPEND takes no splice: the bytes are copied.
        out = os.urandom(3_000_000) + b"\nstep 1\nno newline"
        err = b"step 2\r" + os.urandom(2_000_000) + b"\n"
        (tmp_path / "out").write_bytes(out)
        (tmp_path / "err").write_bytes(err)
        logs = {name: tmp_path / f"{name}.log" for name in ("out", "err")}
        for log in logs.values():
            log.write_bytes(b"before\n")
            log.chmod(0o200)
        script = f"cat {tmp_path / 'out'} & cat {tmp_path / 'err'} >&2 & wait"
        with open(logs["out"], "ab") as job_out, open(logs["err"], "ab") as job_err:
            result = subprocess.run(
                [
                    "setpriv",
                    "--bounding-set=-dac_override,-dac_read_search",
                    "--",
                    sys.executable,
                    "-m",
                    "timer_watchdog",
                    "run",
                    "--progress",
                    "step",
                    "--stall",
                    "1h",
                    "--",
                    "sh",
                    "-c",
                    script,
                ],
                stdout=job_out,
                stderr=job_err,
                timeout=BOUND,
                check=False,
            )
        written = {name: log.read_bytes() for name, log in logs.items()}
        assert result.returncode == 0, written["err"][-2000:]
        expected_out = b"before\n" + out
        assert (
            hashlib.sha256(written["out"]).hexdigest() == hashlib.sha256(expected_out).hexdigest()
        )
        job_err_bytes = written["err"][: len(err) + 7]
        expected_err = b"before\n" + err
        assert hashlib.sha256(job_err_bytes).hexdigest() == hashlib.sha256(expected_err).hexdigest()
        assert written["err"][len(err) + 7 :].startswith(b"timer-watchdog summary:")

    def test_a_file_of_ours_is_the_jobs_own(self, tmp_path):
        log = tmp_path / "log"
        with open(log, "wb") as out:
            result = watchdog(
                *run_args(
                    "sh",
                    "-c",
                    "readlink /proc/$$/fd/1; printf 'step 1\\nstep 2 loss 0.5\\n'; exec sleep 600",
                    progress=r"step \d+",
                    stall="1",
                    options=SLOW_START,
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # The job wrote into the file itself (nothing passed through), and run read it.
        text = log.read_text()
        assert result.returncode == 128 + signal.SIGKILL, text
        assert text.startswith(f"{log}\nstep 1\nstep 2 loss 0.5\n"), text
        assert "; last progress: 'step 2 loss 0.5' at " in text, text

    def test_text_without_newline_is_passed_at_once(self, tmp_path):
        go = tmp_path / "go"
        proc = subprocess.Popen(
            [
                *WATCHDOG,
                *run_args(
                    "sh",
                    "-c",
                    f"printf 'password: '; while [ ! -e {go} ]; do sleep 0.05; done; echo ok",
                    progress="x",
                    stall="1h",
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            # Blocks until the prompt comes through: a pump waiting for the newline never ends.
            assert os.read(proc.stdout.fileno(), 100) == b"password: "
            go.touch()
            out, _ = proc.communicate(timeout=BOUND)
        finally:
            proc.kill()
            proc.wait()
        assert out == b"ok\n"

    def test_stdin_is_passed_through(self):
        result = watchdog(*run_args("cat", progress="x", stall="1h"), input=b"hello\n")
        assert result.returncode == 0
        assert result.stdout == b"hello\n"

    def test_a_closed_stdout_ends_a_writer_as_bare(self):
        with subprocess.Popen(
            [*WATCHDOG, *run_args("yes", progress="x", stall="1h")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdout.read(2) == b"y\n"
            proc.stdout.close()
            err = proc.stderr.read() if proc.stderr else b""
            assert proc.wait(BOUND) == 128 + signal.SIGPIPE, err

    def test_the_job_sees_our_terminal_as_a_terminal(self):
        master, slave = pty.openpty()
        tty.setraw(slave)
        job = (
            "test -t 1 && echo stdout is a tty; test -t 2 && echo stderr is a tty >&2; "
            "printf '\\033[32mgreen\\033[0m\\n'; echo step 1"
        )
        proc = subprocess.Popen(
            [*WATCHDOG, *run_args("sh", "-c", job, progress="step", stall="1h")],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        got = bytearray()
        try:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every holder of the slave has closed it
                    break
                if not data:
                    break
                got += data
            assert proc.wait(BOUND) == 0, got
        finally:
            proc.kill()
            proc.wait()
            os.close(master)
        # Our stdout and stderr are one terminal: the job gets one pty, so its writes to
        # both keep their order, as they would bare.
        assert got.startswith(
            b"stdout is a tty\nstderr is a tty\n\x1b[32mgreen\x1b[0m\nstep 1\n"
        ), got
        assert b"\r\n" not in got  # the job's pty passes its bytes unchanged


class TestArguments:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--progress", "x"], "need --stall"),
            (["--stall", "5"], "need --progress"),
            (["--progress", "(", "--stall", "5"], "not a regular expression"),
            (["--progress", "x", "--stall", "5d"], "expected a duration"),
            (["--heartbeat", "hb", "--stall", "0"], "expected a duration > 0"),
        ],
    )
    def test_bad_arguments_are_status_2(self, args, message):
        result = watchdog("run", *args, "--", "true")
        assert result.returncode == 2
        assert message in result.stderr.decode()
