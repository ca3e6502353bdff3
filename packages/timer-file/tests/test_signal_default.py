"""The client's default signal leaves the choice to the server (docs/operations.md)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from timer_api import TimerRequest, process_start_time
from timer_file import FileTimerServer
from timer_watchdog import Expired, Signalled, WatchdogPolicy

PATIENCE = 60.0

#: A worker configured as docs/operations.md shows; on SIGTERM it checkpoints and stays hung.
WORKER = """
import signal, sys, time
from timer_file import FileTimerClient

def checkpoint(*_):
    with open(sys.argv[2], "w") as f:
        f.write("saved")

signal.signal(signal.SIGTERM, checkpoint)
client = FileTimerClient(sys.argv[1], *[int(a) for a in sys.argv[3:]])
client.acquire("step", time.time() + 0.2)
while True:
    time.sleep(0.05)
"""


def _run(pipe_path: str, tmp_path: Path, *signal_arg: int) -> tuple[int, Path]:
    checkpoint = tmp_path / "checkpoint"
    worker = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER), pipe_path, str(checkpoint)]
        + [str(s) for s in signal_arg],
    )
    try:
        return worker.wait(PATIENCE), checkpoint
    finally:
        worker.kill()
        worker.wait(PATIENCE)


def test_operator_signal_and_grace_apply_to_a_default_client(pipe_path: str, tmp_path: Path):
    server = FileTimerServer(
        pipe_path, "run", 0.1, policy=WatchdogPolicy(signal=signal.SIGTERM, grace=0.5)
    )
    sent: list[Signalled] = []
    server.subscribe(lambda e: sent.append(e) if isinstance(e, Signalled) else None)
    server.start()
    try:
        status, checkpoint = _run(pipe_path, tmp_path)
    finally:
        server.stop()
    assert status == -signal.SIGKILL
    assert checkpoint.read_text() == "saved"
    assert [(e.signal, e.detail) for e in sent] == [
        (signal.SIGTERM, "first"),
        (signal.SIGKILL, "escalation"),
    ]


@pytest.mark.parametrize("asked", [0, -1])
def test_signal_zero_or_negative_only_reports(pipe_path: str, tmp_path: Path, asked: int):
    server = FileTimerServer(pipe_path, "run", 0.1)
    events: list[object] = []
    server.subscribe(events.append)
    server.start()
    checkpoint = tmp_path / "checkpoint"
    worker = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER), pipe_path, str(checkpoint), str(asked)]
    )
    try:
        end = time.monotonic() + PATIENCE
        while not any(isinstance(e, Expired) for e in events):
            assert time.monotonic() < end, events
            time.sleep(0.01)
        sentinel = subprocess.Popen(["sleep", "60"])
        start = process_start_time(sentinel.pid)
        server.register_timers(
            [TimerRequest(sentinel.pid, "s", time.time() + 0.1, start_time=start)]
        )
        assert sentinel.wait(PATIENCE) == -signal.SIGKILL
        assert worker.poll() is None
        assert [e for e in events if isinstance(e, Signalled) and e.pid == worker.pid] == []
    finally:
        server.stop()
        worker.kill()
        worker.wait(PATIENCE)
