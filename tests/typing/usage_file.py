"""Typed usage of timer_file's public names; checked by mypy --strict, never run."""

from __future__ import annotations

import signal
import time

from timer_api import TimerClient, TimerRequest, configure, expires
from timer_file import (
    FileTimerClient,
    FileTimerRequest,
    FileTimerServer,
    PipeFullError,
    ServerUnavailableError,
    UnsafePipeError,
    configure_from_env,
)
from timer_watchdog import WatchdogPolicy, WatchdogServer


def worker(path: str) -> None:
    client: TimerClient = FileTimerClient(path, signal.SIGTERM, send_timeout=10.0)
    configure(client)
    try:
        with expires(after=60):
            pass
    except (PipeFullError, ServerUnavailableError):
        pass
    from_env: FileTimerClient | None = configure_from_env(required=False)
    assert from_env is None or from_env.file_path


def server() -> None:
    try:
        watchdog: WatchdogServer = FileTimerServer(
            None, "run-1", max_interval=1.0, policy=WatchdogPolicy(grace=5.0)
        )
    except UnsafePipeError:
        return
    watchdog.start()
    watchdog.stop()


def wire() -> None:
    request = FileTimerRequest(1234, "scope", time.time() + 5, int(signal.SIGKILL))
    line: str = request.to_json()
    same: TimerRequest = request.to_timer_request()
    assert line
    assert same
