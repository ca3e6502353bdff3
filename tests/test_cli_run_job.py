"""End to end: ``timer-watchdog run`` owns its job: orphans, signals, terminals, other jobs.

Each test runs the real command in a subprocess with real workers; waits are bounded
polls, never sleeps that hope.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from timer_api import process_stat
from timer_watchdog import Reaped, Rejected, decode_event

#: Bound on any one command or wait; only reached when something is broken.
BOUND = 60.0

WATCHDOG = [sys.executable, "-m", "timer_watchdog"]


def script(tmp_path: Path, body: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def wait_for(what: str, condition: Callable[[], object], bound: float = BOUND) -> None:
    """Poll ``condition`` until it is true; fail saying ``what`` did not happen."""
    end = time.monotonic() + bound
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"within {bound:.0f}s: {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    stat = process_stat(pid)
    return stat is not None and stat[0] not in "ZXx"


def events_of(path: Path) -> list:
    return [decode_event(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def pids_to_kill() -> Iterator[list[int]]:
    """Pids a test started indirectly; killed at the end if a failure left them running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- item 8: the job's processes that outlive COMMAND --------------------------------

BACKGROUND_JOB = """
    import os, subprocess, sys, time
    from pathlib import Path

    out = Path(sys.argv[1])

    def wait_for(path):
        end = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > end:
                sys.exit(f"no {path}")
            time.sleep(0.02)

    if len(sys.argv) == 2:
        # COMMAND: start a worker in the background, and an orphan-to-be that exits at once.
        worker = subprocess.Popen([sys.executable, __file__, sys.argv[1], "worker"])
        quick = subprocess.Popen([sys.executable, __file__, sys.argv[1], "quick"])
        wait_for(out / "armed")
        wait_for(out / "quick-started")
        (out / "pids.tmp").write_text(f"{worker.pid} {quick.pid}")
        os.replace(out / "pids.tmp", out / "pids")
        sys.exit(0)  # neither waited for: both become orphans

    if sys.argv[2] == "quick":
        parent = os.getppid()
        (out / "quick-started").touch()
        while os.getppid() == parent:
            time.sleep(0.02)
        sys.exit(0)

    from timer_api import expires
    from timer_file import configure_from_env

    def hung_after_the_command_exited():
        while True:
            time.sleep(0.05)

    configure_from_env()
    parent = os.getppid()
    with expires(after=60, scope="setup"):
        (out / "armed").touch()
        while os.getppid() == parent:
            time.sleep(0.02)
        (out / "new-parent.tmp").write_text(str(os.getppid()))
        os.replace(out / "new-parent.tmp", out / "new-parent")
        # Go on once run has said that it watches this worker.
        end = time.monotonic() + 60
        while "still hold timers" not in (out / "stderr").read_text():
            if time.monotonic() > end:
                sys.exit("run never said it watches the worker")
            time.sleep(0.02)
    with expires(after=0.3, scope="step"):
        hung_after_the_command_exited()
"""


@pytest.mark.slow
def test_processes_holding_timers_after_the_command_exits_are_policed(tmp_path, pids_to_kill):
    job = script(tmp_path, BACKGROUND_JOB)
    events = tmp_path / "events.jsonl"
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err_file:
        proc = subprocess.Popen(
            [*WATCHDOG, "run", "--events", str(events), "--", sys.executable, job, str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    wait_for("the job to start its workers", (tmp_path / "pids").exists)
    worker, quick = map(int, (tmp_path / "pids").read_text().split())
    pids_to_kill.extend([worker, quick])
    # The orphan that exited is waited for by `run`, its new parent: no zombie is left.
    wait_for(f"the orphan {quick} to be reaped", lambda: process_stat(quick) is None)
    try:
        proc.wait(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = stderr.read_text()
    assert proc.returncode == 0, err
    # The worker was re-parented to `run` (a subreaper), not to init.
    assert (tmp_path / "new-parent").read_text() == str(proc.pid)
    reaped = [e for e in events_of(events) if isinstance(e, Reaped)]
    assert [e.pid for e in reaped] == [worker], err
    assert not alive(worker)
    assert "still hold timers" in err
    assert "still holding timers when the command exited:" in err
    assert f"pid {worker} ('setup'): killed" in err


# -- item 9: only the job's processes may be signalled ------------------------------

OUTSIDER_JOB = """
    import json, os, sys, time
    from pathlib import Path

    victim = int(sys.argv[1])
    events = Path(sys.argv[2])
    pipe = os.environ["TORCHELASTIC_TIMER_FILE"]
    request = {"version": 1, "pid": victim, "scope_id": "not-mine",
               "expiration_time": time.time() + 0.1, "signal": 9}
    with open(pipe, "w") as fifo:
        fifo.write(json.dumps(request) + "\\n")
    # Wait until the watchdog decided: rejected, or killed the victim.
    end = time.monotonic() + 60
    while time.monotonic() < end:
        text = events.read_text() if events.exists() else ""
        if '"rejected"' in text or '"reaped"' in text:
            break
        time.sleep(0.02)
"""


def test_a_process_outside_the_job_cannot_be_killed(tmp_path):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        events = tmp_path / "events.jsonl"
        job = script(tmp_path, OUTSIDER_JOB)
        result = subprocess.run(
            [
                *WATCHDOG,
                "run",
                "--events",
                str(events),
                "--",
                sys.executable,
                job,
                str(victim.pid),
                str(events),
            ],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        rejected = [e for e in events_of(events) if isinstance(e, Rejected)]
        assert [(e.reason.value, e.pid) for e in rejected] == [("not_in_job", victim.pid)]
        assert not any(isinstance(e, Reaped) for e in events_of(events))
        assert victim.poll() is None, "the process outside the job was killed"
        # Printed once, as the event's line (not also as a log line).
        assert result.stderr.count("not_in_job") == 1, result.stderr
    finally:
        victim.kill()
        victim.wait()


# -- item 10: signals run receives --------------------------------------------------

STOPPABLE_JOB = """
    import os, signal, sys, time
    from pathlib import Path

    out = Path(sys.argv[1])
    print(f"pipe {os.environ['TORCHELASTIC_TIMER_FILE']}", flush=True)

    def stop(signum, frame):
        print(f"got {signum}", flush=True)
        sys.exit(5)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, stop)
    (out / "ready").touch()
    end = time.monotonic() + 60
    while time.monotonic() < end:
        time.sleep(0.05)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_signal_is_forwarded_and_the_summary_printed(tmp_path, signum):
    job = script(tmp_path, STOPPABLE_JOB)
    proc = subprocess.Popen(
        [*WATCHDOG, "run", "--", sys.executable, job, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the job to be ready", (tmp_path / "ready").exists)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 5, err
    assert f"got {int(signum)}" in out
    assert "timer-watchdog summary: command exited (status 5)" in err
    (pipe,) = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("pipe ")]
    assert not os.path.exists(pipe)
    assert not os.path.exists(os.path.dirname(pipe))


def test_supervision_goes_on_after_a_hangup(tmp_path, pids_to_kill):
    job = script(
        tmp_path,
        """
        import os, signal, sys, time
        from pathlib import Path
        from timer_api import expires
        from timer_file import configure_from_env

        out = Path(sys.argv[1])
        hung_up = []
        signal.signal(signal.SIGHUP, lambda signum, frame: hung_up.append(signum))
        configure_from_env()
        (out / "ready.tmp").write_text(str(os.getpid()))
        os.replace(out / "ready.tmp", out / "ready")
        end = time.monotonic() + 60
        while not hung_up and time.monotonic() < end:
            time.sleep(0.02)
        os.write(1, b"hung up, carrying on\\n")

        def hung_after_hangup():
            while True:
                time.sleep(0.05)

        with expires(after=0.3):
            hung_after_hangup()
        """,
    )
    proc = subprocess.Popen(
        [*WATCHDOG, "run", "--", sys.executable, job, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the job to be ready", (tmp_path / "ready").exists)
        pids_to_kill.append(int((tmp_path / "ready").read_text()))
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out == "hung up, carrying on\n"
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert "killed with SIGKILL" in err


def _controlling_terminal() -> None:
    """In the child (a new session): make stdin, a PTY, the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``timer-watchdog run`` on a pseudo-terminal, as a shell's foreground job would be."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()
        self.output = b""
        try:
            self.proc = subprocess.Popen(
                args,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                preexec_fn=_controlling_terminal,
            )
        finally:
            os.close(slave)

    def read(self) -> str:
        """Return everything written to the terminal so far."""
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError as exc:  # EIO: every slave side is closed
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            self.output += chunk
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_job_stopped_by_sigttin_is_reported_and_ctrl_c_ends_it(tmp_path, pids_to_kill):
    job = script(
        tmp_path,
        """
        import os, sys
        from pathlib import Path
        out = Path(sys.argv[1])
        (out / "pid.tmp").write_text(str(os.getpid()))
        os.replace(out / "pid.tmp", out / "pid")
        input()  # from the background: stopped by SIGTTIN
        print("read a line")
        """,
    )
    terminal = Terminal([*WATCHDOG, "run", "--", sys.executable, job, str(tmp_path)])
    try:
        wait_for("the job to start", (tmp_path / "pid").exists)
        pid = int((tmp_path / "pid").read_text())
        pids_to_kill.append(pid)
        wait_for(f"the job {pid} to be stopped", lambda: (process_stat(pid) or ("",))[0] == "T")
        wait_for("run to say the job is stopped", lambda: "stopped by SIGTTIN" in terminal.read())
        os.write(terminal.master, b"\x03")  # Ctrl-C: SIGINT to the foreground group, run's
        end = time.monotonic() + BOUND
        while terminal.proc.poll() is None and time.monotonic() < end:
            terminal.read()
            time.sleep(0.02)
        text = terminal.read()
        assert terminal.proc.poll() is not None, f"run ignored Ctrl-C:\n{text}"
        assert terminal.proc.returncode == 128 + signal.SIGINT, text
        assert "press Ctrl-C" in text
        assert "timer-watchdog summary: command exited" in text
        assert not alive(pid)
    finally:
        terminal.close()


STUBBORN_BACKGROUND_JOB = """
    import os, signal, subprocess, sys, time
    from pathlib import Path

    out = Path(sys.argv[1])
    if len(sys.argv) == 2:
        worker = subprocess.Popen([sys.executable, __file__, sys.argv[1], "worker"])
        end = time.monotonic() + 60
        while not (out / "armed").exists() and time.monotonic() < end:
            time.sleep(0.02)
        sys.exit(0)

    from timer_api import expires
    from timer_file import configure_from_env

    signal.signal(signal.SIGTERM, lambda signum, frame: (out / "got-sigterm").touch())
    configure_from_env()
    with expires(after=120, scope="long"):
        (out / "armed.tmp").write_text(str(os.getpid()))
        os.replace(out / "armed.tmp", out / "armed")
        end = time.monotonic() + 120
        while time.monotonic() < end:
            time.sleep(0.05)
"""


@pytest.mark.slow
def test_second_signal_after_the_command_exited_ends_the_wait(tmp_path, pids_to_kill):
    job = script(tmp_path, STUBBORN_BACKGROUND_JOB)
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err_file:
        proc = subprocess.Popen(
            [*WATCHDOG, "run", "--", sys.executable, job, str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        wait_for("the worker to arm its timer", (tmp_path / "armed").exists)
        pids_to_kill.append(int((tmp_path / "armed").read_text()))
        wait_for("run to say it waits for the worker", lambda: "still hold" in stderr.read_text())
        proc.send_signal(signal.SIGTERM)
        wait_for("the worker to get SIGTERM", (tmp_path / "got-sigterm").exists)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = stderr.read_text()
    assert proc.returncode == 0, err
    assert "no longer waiting" in err
    assert "('long'): still holding them when the watchdog stopped" in err


def test_job_that_ignores_ctrl_c_and_stops_again_is_killed_by_a_second_one(tmp_path, pids_to_kill):
    job = script(
        tmp_path,
        """
        import os, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        out = Path(sys.argv[1])
        (out / "pid.tmp").write_text(str(os.getpid()))
        os.replace(out / "pid.tmp", out / "pid")
        while True:
            try:
                input()  # from the background: stopped by SIGTTIN, every time
            except EOFError:
                pass
        """,
    )
    terminal = Terminal([*WATCHDOG, "run", "--", sys.executable, job, str(tmp_path)])
    try:
        wait_for("the job to start", (tmp_path / "pid").exists)
        pid = int((tmp_path / "pid").read_text())
        pids_to_kill.append(pid)
        wait_for("run to say the job is stopped", lambda: "stopped by SIGTTIN" in terminal.read())
        os.write(terminal.master, b"\x03")
        wait_for("run to say it is stopped again", lambda: "Ctrl-C again" in terminal.read())
        os.write(terminal.master, b"\x03")
        end = time.monotonic() + BOUND
        while terminal.proc.poll() is None and time.monotonic() < end:
            terminal.read()
            time.sleep(0.02)
        text = terminal.read()
        assert terminal.proc.poll() is not None, f"run ignored the second Ctrl-C:\n{text}"
        assert terminal.proc.returncode == 128 + signal.SIGKILL, text
        assert "killing its process group" in text
        assert not alive(pid)
    finally:
        terminal.close()
