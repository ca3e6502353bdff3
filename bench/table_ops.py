"""Workload 7: the timer table's public calls on 100,000 armed timers.

A ``LocalTimerServer`` (not started) takes ``n`` arm requests of a live ``sleep``
child, one hour ahead, in one ``register_timers`` call (timed). Then
``get_expired_timers(inf)`` returns all of them (each call timed, its result
checked), and ``get_expired_timers(time.time())`` returns none: the poll a
watchdog loop makes, with nothing due.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import time
from typing import Any

from bench import _impls
from bench._child import child_main
from bench._collect import figure, interleaved
from bench._report import Figure
from bench._workers import SleepingWorker
from bench.idle import build_requests

__all__ = ["figures", "main", "measure"]


def measure(impl: str, n: int, calls: int) -> dict[str, Any]:
    """Register ``n`` timers, then time ``calls`` queries of all of them and of none."""
    queue = multiprocessing.get_context("spawn").Queue()
    with SleepingWorker() as worker:
        server = _impls.mp_server(impl, queue, 60.0)
        requests = build_requests(impl, worker, n)
        gc.collect()
        start = time.perf_counter()
        server.register_timers(requests)
        register_seconds = time.perf_counter() - start
        del requests
        every, none = [], []
        for _ in range(calls):
            start = time.perf_counter()
            expired = server.get_expired_timers(math.inf)
            every.append(time.perf_counter() - start)
            held = sum(len(timers) for timers in expired.values())
            if held != n:
                raise RuntimeError(f"get_expired_timers(inf) returned {held} timers, armed {n}")
            del expired
            start = time.perf_counter()
            expired = server.get_expired_timers(time.time())
            none.append(time.perf_counter() - start)
            if expired:
                raise RuntimeError("get_expired_timers(now) returned timers an hour ahead")
    return {"register_seconds": register_seconds, "expired_all": every, "expired_none": none}


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process."""
    child_main(measure)


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Return the register and query figures and the raw results."""
    n = cfg["n"]
    runs = interleaved("table_ops", impls, cfg["rounds"], {"n": n, "calls": cfg["calls"]})
    out = [
        figure(
            runs,
            lambda r: [r["register_seconds"]],
            key="register_100000",
            workload=7,
            title=f"register_timers() of {n:,} arm requests, one direct call",
            unit="s",
            better="lower",
            target_ratio=1.0,
        ),
        figure(
            runs,
            lambda r: r["expired_all"],
            key="expired_all_100000",
            workload=7,
            title=f"get_expired_timers(inf) over {n:,} armed timers, all returned",
            unit="s",
            better="lower",
            target_ratio=1.0,
        ),
        figure(
            runs,
            lambda r: r["expired_none"],
            key="expired_none_100000",
            workload=7,
            title=f"get_expired_timers(time.time()) over {n:,} armed timers, none due",
            unit="s",
            better="lower",
            target_ratio=1.0,
        ),
    ]
    return out, {"results": runs.results}
