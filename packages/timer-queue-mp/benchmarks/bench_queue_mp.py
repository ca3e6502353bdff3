"""Measure the multiprocessing-queue transport: server ingest, client pairs/s, 16 workers.

Run: ``python packages/timer-queue-mp/benchmarks/bench_queue_mp.py [--torch]`` with
timer-queue-mp installed (``--torch``: torch 2.13's classes instead, for comparison).
Prints one JSON object per measurement. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from typing import Any

TORCH = "--torch" in sys.argv
SCOPES = [f"/workspace/train.py#{100 + i}" for i in range(64)]


def _classes() -> tuple[Any, Any]:
    if TORCH:
        from torch.distributed.elastic.timer import LocalTimerClient, LocalTimerServer
    else:
        from timer_queue_mp import LocalTimerClient, LocalTimerServer
    return LocalTimerClient, LocalTimerServer


def _counting_server(queue: Any) -> Any:
    """Return a server (not started) and a function giving how many requests it took in."""
    _, server_class = _classes()
    if not TORCH:
        return server_class(queue, max_interval=0.1)

    class Counting(server_class):  # type: ignore[misc, valid-type]
        received = 0

        def register_timers(self, timer_requests: list[Any]) -> None:
            self.received += len(timer_requests)
            super().register_timers(timer_requests)

    return Counting(queue, max_interval=0.1)


def _received(server: Any) -> int:
    return int(server.received if TORCH else server.stats().received)


def _producer(queue: Any, pairs: int, ready: Any, done: Any, report: Any) -> None:
    """Put ``pairs`` acquire/release pairs as fast as the client goes, then wait to be told."""
    client_class, _ = _classes()
    client = client_class(queue)
    expiration = time.time() + 3600
    ready.wait(60)
    start = time.perf_counter()
    for i in range(pairs):
        scope = SCOPES[i & 63]
        client.acquire(scope, expiration)
        client.release(scope)
    report.put(time.perf_counter() - start)
    done.wait(300)  # stay alive: requests of exited workers are refused


def _run(workers: int, pairs: int, prefill: bool) -> dict[str, Any]:
    """Run ``workers`` producers of ``pairs`` pairs each against one server in this process."""
    ctx = multiprocessing.get_context("fork")
    queue, report = ctx.Queue(), ctx.Queue()
    go, done = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=_producer, args=(queue, pairs, go, done, report)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    server = _counting_server(queue)
    expected = workers * pairs * 2
    go.set()
    if prefill:  # ingest: every request put (in the feeders) before the server starts
        client_seconds = [report.get(timeout=300) for _ in procs]
    start = time.perf_counter()
    cpu = time.process_time()
    server.start()
    deadline = time.monotonic() + 300
    while _received(server) < expected and time.monotonic() < deadline:
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    received = _received(server)
    if not prefill:
        client_seconds = [report.get(timeout=300) for _ in procs]
    stats = None if TORCH else server.stats()
    server.stop()
    done.set()
    for p in procs:
        p.join(30)
    result: dict[str, Any] = {
        "impl": "torch" if TORCH else "ours",
        "workers": workers,
        "pairs_each": pairs,
        "expected": expected,
        "received": received,
        "server_seconds": round(elapsed, 3),
        "server_requests_per_s": round(received / elapsed),
        "server_cpu_us_per_request": round(cpu / max(1, received) * 1e6, 2),
        "client_pairs_per_s_each": [round(pairs / s) for s in client_seconds],
    }
    if stats is not None:
        result["stats"] = {
            name: getattr(stats, name) for name in ("received", "armed", "released", "rejected")
        }
    return result


def main() -> None:
    # Server ingest: 200,000 requests queued before the server starts.
    print(json.dumps({"measure": "ingest", **_run(1, 100_000, prefill=True)}))
    # One client, acquire + release pairs/s, with the server running.
    print(json.dumps({"measure": "client", **_run(1, 200_000, prefill=False)}))
    # 16 workers x 10,000 pairs: every request accounted for.
    print(json.dumps({"measure": "workers16", **_run(16, 10_000, prefill=False)}))


if __name__ == "__main__":
    main()
