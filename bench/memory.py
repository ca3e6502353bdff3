"""Workload 6: memory a server keeps per armed timer.

A ``LocalTimerServer`` takes ``n`` arm requests of a live ``sleep`` child through
``register_timers``; the requests are then dropped by the caller. The server is
not started: its loop would add nothing per timer, and torch's ``stop()`` waits
up to ``max_interval``. What Python allocations the server
still holds (``tracemalloc``, from before the requests were built) divided by
``n`` is the figure: it counts the requests themselves when the server keeps them.
"""

from __future__ import annotations

import gc
import multiprocessing
import tracemalloc
from typing import Any

from bench import _impls
from bench._child import child_main
from bench._collect import figure, interleaved
from bench._report import Figure
from bench._workers import SleepingWorker
from bench.idle import build_requests

__all__ = ["figures", "main", "measure"]


def measure(impl: str, n: int) -> dict[str, Any]:
    """Return the bytes per armed timer that the server retains, for ``n`` timers."""
    queue = multiprocessing.get_context("spawn").Queue()
    with SleepingWorker() as worker:
        server = _impls.mp_server(impl, queue, 60.0)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        requests = build_requests(impl, worker, n)
        server.register_timers(requests)
        del requests
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        timers = _impls.timer_count(impl, server)
    if timers != n:
        raise RuntimeError(f"server holds {timers} timers, armed {n}")
    return {"bytes_per_timer": retained / n, "n": n}


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process."""
    child_main(measure)


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Return the bytes-per-timer figure and the raw results."""
    runs = interleaved("memory", impls, cfg["rounds"], {"n": cfg["n"]})
    fig = figure(
        runs,
        lambda r: [r["bytes_per_timer"]],
        key="memory_per_timer",
        workload=6,
        title=f"memory the server keeps per armed timer ({cfg['n']:,} timers, tracemalloc)",
        unit="bytes",
        better="lower",
        target_ratio=1.0,
    )
    return [fig], {"results": runs.results}
