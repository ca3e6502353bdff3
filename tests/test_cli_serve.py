"""End to end: the real ``timer-watchdog serve`` command in a subprocess, with real workers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from timer_watchdog import Reaped, decode_event

BOUND = 60.0

WORKER = """
    import time
    from timer_api import expires
    from timer_file import configure_from_env

    def stuck_in_serve_test():
        while True:
            time.sleep(0.05)

    configure_from_env()
    with expires(after=0.3):
        stuck_in_serve_test()
"""


class Server:
    """A ``timer-watchdog serve`` process on a pipe in ``tmp_path``."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        self.pipe = tmp_path / "timer.pipe"
        self.events = tmp_path / "events.jsonl"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "timer_watchdog",
                "serve",
                "--path",
                str(self.pipe),
                "--events",
                str(self.events),
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        end = time.monotonic() + BOUND
        while not self._ready() and time.monotonic() < end:
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.05)
        assert self._ready()

    def _ready(self) -> bool:
        # The events file is opened before the pipe is created; "serving" follows the start.
        try:
            return stat.S_ISFIFO(os.stat(self.pipe).st_mode)
        except FileNotFoundError:
            return False

    def wait_for_event(self, kind: str) -> None:
        end = time.monotonic() + BOUND
        while time.monotonic() < end:
            if f'"event":"{kind}"'.encode() in self.events.read_bytes():
                return
            time.sleep(0.05)
        pytest.fail(f"no {kind} event")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(signum)
        return self.wait()

    def wait(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=BOUND)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    started = Server(tmp_path)
    yield started
    started.kill()


def run_worker(tmp_path: Path, pipe: Path) -> int:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "TORCHELASTIC_TIMER_FILE": str(pipe)}
    return subprocess.run(
        [sys.executable, str(path)], env=env, timeout=BOUND, check=False
    ).returncode


class TestServe:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_kills_a_hung_worker_and_stops_cleanly(self, tmp_path, server, signum):
        assert run_worker(tmp_path, server.pipe) == -signal.SIGKILL
        server.wait_for_event("reaped")
        status, err = server.stop(signum)
        assert status == 0, err
        assert f"serving {server.pipe}" in err
        assert f"stopped by {signal.Signals(signum).name} (status 0)" in err
        assert "killed by SIGKILL" in err
        assert not server.pipe.exists()
        reaped = [
            e
            for e in map(decode_event, server.events.read_bytes().splitlines())
            if isinstance(e, Reaped)
        ]
        assert len(reaped) == 1

    def test_removed_pipe_stops_it_with_status_1(self, server):
        server.pipe.unlink()
        status, err = server.wait()
        assert status == 1
        assert "was removed" in err

    def test_json_logs(self, tmp_path):
        server = Server(tmp_path, "--json")
        try:
            assert run_worker(tmp_path, server.pipe) == -signal.SIGKILL
            server.wait_for_event("reaped")
            status, err = server.stop()
        finally:
            server.kill()
        assert status == 0
        lines = [json.loads(line) for line in err.splitlines()]
        assert lines[0] == {"log": "info", "message": lines[0]["message"]}
        assert "reaped" in [line.get("event") for line in lines]
        assert lines[-1]["stopped"] == "stopped by SIGTERM"
        assert lines[-1]["stats"]["reaped"] == 1


#: Arms "finishes", then on a line from stdin writes other requests and releases it.
BACKLOG_WORKER = """
    import sys, time
    from timer_file import FileTimerClient

    client = FileTimerClient(sys.argv[1])
    expiration = time.time() + float(sys.argv[2])
    client.acquire("finishes", expiration)
    print(expiration, flush=True)
    sys.stdin.readline()
    for i in range(300):  # requests ahead of the release in the pipe
        client.acquire(f"filler{i % 10}", time.time() + 600)
        client.release(f"filler{i % 10}")
    client.release("finishes")
    print(time.time(), flush=True)
    sys.stdin.readline()
"""


def _fate(events: Path, scope: str) -> list[str]:
    """Return the kinds of the events about ``scope`` after its arming, in order."""
    kinds = []
    for event in map(decode_event, events.read_bytes().splitlines()):
        if getattr(event, "scope_id", None) == scope and event.event != "armed":
            kinds.append(event.event)
    return kinds


@pytest.mark.slow
def test_a_release_written_before_the_deadline_saves_a_worker_the_server_reads_late(
    tmp_path, server
):
    # The server is stopped while the worker writes other requests, then its release,
    # all before the deadline; it resumes after the deadline. It must take in the
    # release before judging the timer, not after the first batch it reads.
    worker = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(BACKLOG_WORKER), str(server.pipe), "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None
    assert worker.stdout is not None
    try:
        expiration = float(worker.stdout.readline())
        server.wait_for_event("armed")
        server.proc.send_signal(signal.SIGSTOP)
        try:
            worker.stdin.write("go\n")
            worker.stdin.flush()
            released = float(worker.stdout.readline())
            assert released < expiration, "the worker released after its deadline"
            time.sleep(max(0.0, expiration - time.time()) + 1.0)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        end = time.monotonic() + BOUND
        while not _fate(server.events, "finishes") and time.monotonic() < end:
            time.sleep(0.05)
        assert _fate(server.events, "finishes") == ["released"]
        assert worker.poll() is None
    finally:
        worker.kill()
        worker.communicate()
