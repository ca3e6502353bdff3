"""The command watches more workers than its soft limit on open files would allow.

The engine holds one pidfd per worker and reads /proc for each new one. These tests
start the command with a soft limit of 64 open files (standing in for the usual 1024
on a host with a thousand workers) and a hard limit above it: every one of 100 hung
workers must be killed, and under ``run`` the job must keep the limit it was given.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

#: Bound on any one wait; only reached when something is broken.
BOUND = 60.0
SOFT, HARD = 64, 4096
WORKERS = 100

_HARD_HERE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _HARD_HERE != resource.RLIM_INFINITY and _HARD_HERE < HARD,
        reason=f"the hard limit on open files here ({_HARD_HERE}) is below {HARD}",
    ),
]

#: Runs ``python -m timer_watchdog ARGS`` with the soft and hard limits above.
LIMITED = (
    "import os, resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({SOFT}, {HARD}))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'timer_watchdog', *sys.argv[1:]])\n"
)

#: Forks WORKERS workers that hang in a timed block; prints how many were killed, the
#: soft limit it was started with and, once it has changed, its parent's.
JOB = f"""
    import os, resource, sys, time
    from timer_api import configure, expires
    from timer_file import FileTimerClient

    own = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    me = os.getpid()
    pids = []
    for _ in range({WORKERS}):
        pid = os.fork()
        if pid == 0:
            configure(FileTimerClient(os.environ.get("TORCHELASTIC_TIMER_FILE") or sys.argv[1]))
            with expires(after=1.0):
                while os.getppid() == me:  # hung, until the job is gone
                    time.sleep(0.05)
            os._exit(3)
        pids.append(pid)
    killed = 0
    end = time.monotonic() + {BOUND / 2}
    while pids:
        for pid in list(pids):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pids.remove(pid)
                killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
            elif time.monotonic() > end:  # spared by the watchdog: stop it here
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pids.remove(pid)
        time.sleep(0.05)
    parent = None
    end = time.monotonic() + {BOUND}
    while parent in (None, {SOFT}) and time.monotonic() < end:
        with open(f"/proc/{{os.getppid()}}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        parent = int(line.split()[3])
        time.sleep(0.05)
    print(f"killed {{killed}} own {{own}} parent {{parent}}", flush=True)
"""


def _job(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run :data:`JOB` with ``args`` to the end."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(JOB))
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
    )


def test_serve_kills_every_hung_worker_beyond_its_soft_limit(tmp_path):
    pipe, events = tmp_path / "timer.pipe", tmp_path / "events.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-c", LIMITED, "serve", "--path", str(pipe), "--events", str(events)],
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + BOUND
        while not (pipe.exists() and stat.S_ISFIFO(os.stat(pipe).st_mode)):
            assert server.poll() is None, "serve exited"
            assert time.monotonic() < end, "serve did not create its pipe"
            time.sleep(0.05)
        done = _job(tmp_path, str(pipe))
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[:2] == ["killed", str(WORKERS)], done.stdout
        kinds = [json.loads(line)["event"] for line in events.read_bytes().splitlines()]
        assert "rejected" not in kinds
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=BOUND)


def test_run_kills_every_hung_worker_and_the_job_keeps_its_limit(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(JOB))
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "run", "--", sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "killed",
        str(WORKERS),
        "own",
        str(SOFT),
        "parent",
        str(HARD),
    ], done.stdout + done.stderr
