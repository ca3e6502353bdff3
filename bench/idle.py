"""Workload 5: idle server CPU with n armed timers (and the RSS they take).

The server (a ``LocalTimerServer`` on an empty queue, ``max_interval`` 0.1: torch's
agent's value) runs in this process; its timers, one hour ahead, belong to a live
``sleep`` child. After ``register_timers`` and one settling second, the process's
CPU time is read over fixed wall-clock windows while nothing else runs in it.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from typing import Any

from bench import _impls
from bench._child import child_main
from bench._collect import figure, interleaved
from bench._report import Figure
from bench._workers import SleepingWorker

__all__ = ["build_requests", "figures", "main", "measure"]


def build_requests(impl: str, worker: SleepingWorker, n: int) -> list[Any]:
    """Return ``n`` arm requests of ``worker``, an hour ahead, on distinct default-style scopes."""
    expiration = time.time() + 3600
    return [
        _impls.make_request(
            impl, worker.pid, f"/workspace/train.py#{i}", expiration, worker.start_time
        )
        for i in range(n)
    ]


def _rss() -> int:
    """Return this process's resident set size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def measure(
    impl: str, n: int, windows: int, window: float, max_interval: float = 0.1
) -> dict[str, Any]:
    """Arm ``n`` timers, then return the server's CPU share (%) over each window."""
    queue = multiprocessing.get_context("spawn").Queue()
    with SleepingWorker() as worker:
        server = _impls.mp_server(impl, queue, max_interval)
        gc.collect()
        rss_before = _rss()
        requests = build_requests(impl, worker, n)
        start = time.perf_counter()
        server.register_timers(requests)
        register_seconds = time.perf_counter() - start
        del requests
        gc.collect()
        rss_after = _rss()
        server.start()
        try:
            time.sleep(1.0)
            shares = []
            for _ in range(windows):
                cpu, wall = time.process_time(), time.perf_counter()
                time.sleep(window)
                shares.append(100.0 * (time.process_time() - cpu) / (time.perf_counter() - wall))
            timers = _impls.timer_count(impl, server)
        finally:
            server.stop()
    if timers != n:
        raise RuntimeError(f"server holds {timers} timers, armed {n}")
    return {
        "cpu_percent": shares,
        "register_seconds": register_seconds,
        "rss_per_timer": (rss_after - rss_before) / n if n else None,
    }


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process."""
    child_main(measure)


COUNTS = (0, 1_000, 10_000, 100_000)


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Measure every timer count; return the figures and the CPU samples per count."""
    out: list[Figure] = []
    raw: dict[str, Any] = {"cpu_percent": {}, "register_seconds": {}}
    for n in COUNTS:
        runs = interleaved(
            "idle",
            impls,
            cfg["rounds"],
            {"n": n, "windows": cfg["windows"], "window": cfg["window"]},
        )
        for impl in impls:
            raw["cpu_percent"].setdefault(impl, {})[n] = [
                s for r in runs.of(impl) for s in r["cpu_percent"]
            ]
        out.append(
            figure(
                runs,
                lambda r: r["cpu_percent"],
                key=f"idle_cpu_{n}",
                workload=5,
                title=f"idle server CPU, {n:,} armed timers, max_interval 0.1",
                unit="% of a core",
                better="lower",
                target=0.5 if n == 100_000 else None,
                note=(
                    f"CPU time of the server process over {cfg['window']:g} s windows"
                    if n == 0
                    else ""
                ),
            )
        )
        if n == COUNTS[-1]:
            out.append(
                figure(
                    runs,
                    lambda r: [r["rss_per_timer"]],
                    key="rss_per_timer",
                    workload=6,
                    title="RSS growth per armed timer (100,000 timers, allocator included)",
                    unit="bytes",
                    better="lower",
                )
            )
    return out, raw
