"""Typed usage of timer_queue_mp's public names; checked by mypy --strict, never run."""

from __future__ import annotations

import multiprocessing
import signal
import time

from timer_api import (
    InvalidRequestError,
    RequestQueue,
    TimerClient,
    TimerRequest,
    TimerServer,
    configure,
    expires,
)
from timer_queue_mp import LocalTimerClient, LocalTimerServer, MultiprocessingRequestQueue
from timer_watchdog import WatchdogPolicy, WatchdogServer, WatchdogStats


def worker(queue: multiprocessing.Queue[bytes]) -> None:
    client: TimerClient = LocalTimerClient(queue)
    configure(client)
    with expires(after=60):
        pass
    LocalTimerClient(queue, signal=int(signal.SIGTERM)).acquire("step", time.time() + 5)


def parent() -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[bytes] = ctx.Queue()
    server = LocalTimerServer(queue, max_interval=1, daemon=True)
    engine: WatchdogServer = server
    base: TimerServer = server
    strict = LocalTimerServer(
        ctx.Queue(), policy=WatchdogPolicy(signal=int(signal.SIGTERM), grace=5.0)
    )
    server.start()
    stats: WatchdogStats = server.stats()
    assert stats.received >= 0, (engine, base, strict)
    server.stop()

    with multiprocessing.Manager() as manager:
        requests: RequestQueue = MultiprocessingRequestQueue(manager.Queue())
        size: int = requests.size()
        batch: list[TimerRequest | InvalidRequestError] = requests.get(size, 1.0)
        assert isinstance(batch, list)
        requests.interrupt()
