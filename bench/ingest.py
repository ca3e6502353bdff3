"""Workload 3: server ingest, requests/s taken off the transport, decoded and registered.

A producer process has ``n`` requests ready before the server starts: arm/release
pairs over 64 scopes of its own pid, as its implementation's client encodes them
(the mp client's puts are queued in its feeder; the pipe producer holds the
encoded lines, writes them as fast as the pipe drains, then closes it). The clock runs from
``server.start()`` until the server's request count reaches ``n``; the server
runs in this process and is polled every 2 ms.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from typing import Any

from bench import _impls
from bench._child import child_main
from bench._collect import figure, interleaved
from bench._report import Figure

__all__ = ["figures", "main", "measure"]

_SCOPES = 64


def _scope(i: int) -> str:
    return f"/workspace/train.py#{100 + i % _SCOPES}"


def _produce_mp(impl: str, queue: Any, n: int, ready: Any, finish: Any) -> None:
    client = _impls.mp_client(impl, queue)
    expiration = time.time() + 3600
    for i in range(n // 2):
        client.acquire(_scope(i), expiration)
        client.release(_scope(i))
    ready.set()
    finish.wait(300)


def _produce_pipe(impl: str, path: str, n: int, ready: Any, go: Any, finish: Any) -> None:
    from timer_api import process_start_time

    pid = os.getpid()
    start_time = process_start_time(pid)
    expiration = time.time() + 3600
    lines = []
    for i in range(n // 2):
        lines.append(_impls.wire_line(impl, pid, _scope(i), expiration, start_time))
        lines.append(_impls.wire_line(impl, pid, _scope(i), -1.0, start_time))
    data = memoryview(b"".join(lines))
    ready.set()
    go.wait(300)
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    os.set_blocking(fd, True)
    while data:
        data = data[os.write(fd, data[: 1 << 16]) :]
    os.close(fd)  # torch's reader registers its last batch only after EOF
    finish.wait(300)


def measure(impl: str, transport: str, n: int, max_interval: float) -> dict[str, Any]:
    """Feed ``n`` requests to a fresh server; return the seconds and requests/s it took."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, finish = ctx.Event(), ctx.Event(), ctx.Event()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if transport == "mp":
            queue = ctx.Queue()
            producer = ctx.Process(target=_produce_mp, args=(impl, queue, n, ready, finish))
            producer.start()
            server = _impls.mp_server(impl, queue, max_interval)
            go.set()
        else:
            path = os.path.join(tmp, "timer.pipe")
            server = _impls.file_server(impl, path, max_interval)
            producer = ctx.Process(target=_produce_pipe, args=(impl, path, n, ready, go, finish))
            producer.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("producer not ready within 120 s")
            time.sleep(0.2)  # let the mp feeder fill the pipe
            go.set()
            start = time.perf_counter()
            server.start()
            count = 0
            deadline = start + 120
            while count < n and time.perf_counter() < deadline:
                time.sleep(0.002)
                count = _impls.processed(impl, server)
            seconds = time.perf_counter() - start
            timers = _impls.timer_count(impl, server)
        finally:
            finish.set()
            server.stop()
            producer.join(30)
            if producer.is_alive():
                producer.kill()
    if count < n:
        raise RuntimeError(f"server took in {count} of {n} requests in {seconds:.1f} s")
    return {"n": n, "seconds": seconds, "rate": n / seconds, "timers_left": timers}


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process."""
    child_main(measure)


_TRANSPORTS = {"file": ("pipe", 300_000.0), "mp": ("mp queue", 150_000.0)}


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Run both transports; return the figures and the raw results."""
    out: list[Figure] = []
    raw: dict[str, Any] = {}
    for transport, (label, target) in _TRANSPORTS.items():
        params = {"transport": transport, "n": cfg["n"], "max_interval": 0.1}
        runs = interleaved("ingest", impls, cfg["rounds"], params)
        raw[transport] = runs.results
        out.append(
            figure(
                runs,
                lambda r: [r["rate"]],
                key=f"ingest_{transport}",
                workload=3,
                title=f"server ingest, {label}: {cfg['n']:,} requests decoded and registered",
                unit="req/s",
                better="higher",
                target=target,
            )
        )
    return out, raw
