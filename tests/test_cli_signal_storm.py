"""End to end: a storm of signals at ``timer-watchdog run`` never wedges it.

``run``'s main thread is woken by signal handlers. A handler that takes a lock the
interrupted thread holds (``threading.Event.set()`` does) waits for itself forever;
these tests send thousands of signals while ``run`` waits, then check that it still
notices its job's end and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: Bound on any one command or wait; only reached when something is broken.
BOUND = 60.0
#: Signals sent in one storm.
STORM = 20_000

JOB = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
(out / "started").touch()
while not (out / "finish").exists():
    time.sleep(0.01)
"""


def wait_for(what: str, condition, bound: float = BOUND) -> None:
    end = time.monotonic() + bound
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"within {bound:.0f}s: {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGCHLD])
def test_run_survives_a_storm_of_signals_and_still_ends_with_its_job(tmp_path: Path, signum):
    job = tmp_path / "job.py"
    job.write_text(JOB)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "timer_watchdog",
            "run",
            "--",
            sys.executable,
            str(job),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for("the job to start", (tmp_path / "started").exists)
        for _ in range(STORM):
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                break
        (tmp_path / "finish").touch()
        try:
            _, err = proc.communicate(timeout=BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run did not exit {BOUND:.0f}s after its job ended: wedged by the storm")
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
