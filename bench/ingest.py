"""Workload 3: server ingest, requests/s taken off the transport, decoded and registered.

A producer process has ``n`` requests ready before the server starts: arm/release
pairs over 64 scopes of its own pid, as its implementation's client encodes them
(the mp client's puts are queued in its feeder; the pipe producer holds the
encoded lines, writes them as fast as the pipe drains, then closes it). The clock runs from
``server.start()`` until the server's request count reaches ``n``; the server
runs in this process and is polled every 2 ms.

A third figure feeds ``n`` (at most 100,000) arms of distinct timers over the mp
queue while a thread calls ``get_expired_timers(time.time())`` every 10 ms, as a
watchdog loop or a test would: the table grows to ``n`` timers under the polls.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
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


def _produce_mp(impl: str, queue: Any, n: int, ready: Any, finish: Any, arms: bool) -> None:
    client = _impls.mp_client(impl, queue)
    expiration = time.time() + 3600
    if arms:  # n timers on distinct scopes, all still armed at the end
        for i in range(n):
            client.acquire(f"/workspace/train.py#{i}", expiration)
    else:
        for i in range(n // 2):
            client.acquire(_scope(i), expiration)
            client.release(_scope(i))
    ready.set()
    finish.wait(300)


def _poll(server: Any, every: float, stop: threading.Event, polls: list[int]) -> None:
    """Call ``get_expired_timers(time.time())`` every ``every`` seconds until ``stop``."""
    while not stop.wait(every):
        server.get_expired_timers(time.time())
        polls[0] += 1


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


def measure(
    impl: str, transport: str, n: int, max_interval: float, poll: float = 0.0, arms: bool = False
) -> dict[str, Any]:
    """Feed ``n`` requests to a fresh server; return the seconds and requests/s it took.

    ``arms``: the requests arm ``n`` distinct timers (mp only) instead of arm/release
    pairs; ``poll`` > 0: a thread calls ``get_expired_timers`` that often meanwhile.
    """
    ctx = multiprocessing.get_context("spawn")
    ready, go, finish = ctx.Event(), ctx.Event(), ctx.Event()
    stop = threading.Event()
    polls = [0]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if transport == "mp":
            queue = ctx.Queue()
            producer = ctx.Process(target=_produce_mp, args=(impl, queue, n, ready, finish, arms))
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
            poller = threading.Thread(target=_poll, args=(server, poll, stop, polls), daemon=True)
            start = time.perf_counter()
            server.start()
            if poll > 0:
                poller.start()
            count = 0
            deadline = start + 120
            while count < n and time.perf_counter() < deadline:
                time.sleep(0.002)
                count = _impls.processed(impl, server)
            seconds = time.perf_counter() - start
            stop.set()
            if poller.is_alive():
                poller.join(30)
            timers = _impls.timer_count(impl, server)
        finally:
            stop.set()
            finish.set()
            server.stop()
            producer.join(30)
            if producer.is_alive():
                producer.kill()
    if count < n:
        raise RuntimeError(f"server took in {count} of {n} requests in {seconds:.1f} s")
    return {
        "n": n,
        "seconds": seconds,
        "rate": n / seconds,
        "timers_left": timers,
        "polls": polls[0],
    }


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
    n = min(cfg["n"], 100_000)
    params = {"transport": "mp", "n": n, "max_interval": 0.1, "poll": 0.01, "arms": True}
    runs = interleaved("ingest", impls, cfg["rounds"], params)
    raw["mp_polled"] = runs.results
    out.append(
        figure(
            runs,
            lambda r: [r["rate"]],
            key="ingest_mp_polled",
            workload=3,
            title=(
                f"server ingest, mp queue: {n:,} arms of distinct timers, "
                "get_expired_timers(time.time()) polled every 10 ms"
            ),
            unit="req/s",
            better="higher",
            target_ratio=2.0,
        )
    )
    return out, raw
