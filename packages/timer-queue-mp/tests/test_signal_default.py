"""The client's default signal leaves the choice to the server (docs/operations.md)."""

from __future__ import annotations

import multiprocessing
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from timer_api import TimerRequest, process_start_time
from timer_queue_mp import LocalTimerClient, LocalTimerServer
from timer_watchdog import Expired, Signalled, WatchdogPolicy

PATIENCE = 60.0


def _worker(queue: Any, checkpoint: str, kwargs: dict[str, Any]) -> None:
    """Arm a short timer with a client built from ``kwargs``; on SIGTERM checkpoint, stay hung."""

    def save(*_: object) -> None:
        with open(checkpoint, "w") as out:
            out.write("saved")

    signal.signal(signal.SIGTERM, save)
    LocalTimerClient(queue, **kwargs).acquire("step", time.time() + 0.2)
    while True:
        time.sleep(0.05)


def _start(ctx: Any, queue: Any, checkpoint: Path, **kwargs: Any) -> Any:
    process = ctx.Process(target=_worker, args=(queue, str(checkpoint), kwargs), daemon=True)
    process.start()
    return process


def test_operator_signal_and_grace_apply_to_a_default_client(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    server = LocalTimerServer(
        queue, max_interval=0.1, policy=WatchdogPolicy(signal=signal.SIGTERM, grace=0.5)
    )
    sent: list[Signalled] = []
    server.subscribe(lambda e: sent.append(e) if isinstance(e, Signalled) else None)
    server.start()
    checkpoint = tmp_path / "checkpoint"
    try:
        worker = _start(ctx, queue, checkpoint)
        worker.join(PATIENCE)
    finally:
        server.stop()
    assert worker.exitcode == -signal.SIGKILL
    assert checkpoint.read_text() == "saved"
    assert [(e.signal, e.detail) for e in sent] == [
        (signal.SIGTERM, "first"),
        (signal.SIGKILL, "escalation"),
    ]


@pytest.mark.parametrize("asked", [0, -1, signal.SIGQUIT])
def test_client_accepts_observe_only_and_signal_enums(tmp_path: Path, asked: int) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    server = LocalTimerServer(queue, max_interval=0.1)
    events: list[object] = []
    server.subscribe(events.append)
    server.start()
    worker = _start(ctx, queue, tmp_path / "checkpoint", signal=asked)
    sentinel = ctx.Process(target=time.sleep, args=(60,), daemon=True)
    try:
        if asked > 0:
            worker.join(PATIENCE)
            assert worker.exitcode == -asked
            return
        end = time.monotonic() + PATIENCE
        while not any(isinstance(e, Expired) for e in events):
            assert time.monotonic() < end, events
            time.sleep(0.01)
        sentinel.start()  # a reap after the expiry shows the loop went past it
        start = process_start_time(sentinel.pid)
        server.register_timers(
            [TimerRequest(sentinel.pid, "s", time.time() + 0.1, start_time=start)]
        )
        sentinel.join(PATIENCE)
        assert sentinel.exitcode == -signal.SIGKILL
        assert worker.is_alive()
        assert [e for e in events if isinstance(e, Signalled) and e.pid == worker.pid] == []
    finally:
        server.stop()
        for process in (worker, sentinel):
            if process.pid is None:
                continue
            if process.is_alive():
                process.kill()
            process.join(PATIENCE)
