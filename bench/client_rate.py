"""Workload 2: one client's sustained acquire + release pairs/s, with a live server consuming.

The server runs in its own process; this process is the worker. Every exception
the client raises into the caller is counted; the failed call is then retried
after 1 ms, so a client that raises when the pipe is full is paced by its own
errors (torch's ``FileTimerClient`` raises ``BlockingIOError`` then). Rates are
taken over 0.5 s slices. When the client stops, the bench reads how far behind
the server is, then waits (20 s at most) for it to take in every request sent.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections import Counter
from typing import Any

from bench import _impls
from bench._child import child_main
from bench._collect import Runs, figure, interleaved
from bench._report import Figure
from bench._servers import ServerProcess

__all__ = ["figures", "main", "measure"]

_SLICE = 0.5
_RETRY_PAUSE = 0.001


def measure(impl: str, transport: str, seconds: float, max_interval: float) -> dict[str, Any]:
    """Run pairs for ``seconds``; return per-slice rates, exception counts and the backlog."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if transport == "mp":
            target: Any = multiprocessing.get_context("spawn").Queue()
            # Exit without flushing a backlog that a stopped server will never read.
            target.cancel_join_thread()
        else:
            target = os.path.join(tmp, "timer.pipe")
        server = ServerProcess(impl, transport, target, max_interval)
        try:
            if transport == "mp":
                client = _impls.mp_client(impl, target)
            else:
                client = _impls.file_client(impl, target)
            result = _pairs(client, seconds)
            result["backlog_at_stop"] = 2 * result["pairs"] - server.ask("count")
            count, waited = server.wait_count(2 * result["pairs"], timeout=20.0)
            result["server_count"] = count
            result["unread"] = 2 * result["pairs"] - count
            result["drain_seconds"] = waited
        finally:
            server.close()
    return result


def _pairs(client: Any, seconds: float) -> dict[str, Any]:
    """Call acquire + release for ``seconds``; count pairs per slice and exceptions."""
    acquire, release, now = client.acquire, client.release, time.time
    scope = "bench#pairs"
    errors: Counter[str] = Counter()
    first_error_after: int | None = None
    slices: list[float] = []
    pairs = 0
    start = slice_start = time.perf_counter()
    end = start + seconds
    slice_pairs = 0
    while True:
        for _ in range(100):
            while True:
                try:
                    acquire(scope, now() + 60)
                    break
                except Exception as exc:
                    if first_error_after is None:
                        first_error_after = pairs + slice_pairs
                    errors[type(exc).__name__] += 1
                    time.sleep(_RETRY_PAUSE)
            while True:
                try:
                    release(scope)
                    break
                except Exception as exc:
                    if first_error_after is None:
                        first_error_after = pairs + slice_pairs
                    errors[type(exc).__name__] += 1
                    time.sleep(_RETRY_PAUSE)
            slice_pairs += 1
        t = time.perf_counter()
        if t - slice_start >= _SLICE:
            slices.append(slice_pairs / (t - slice_start))
            pairs += slice_pairs
            slice_pairs, slice_start = 0, t
            if t >= end:
                break
    return {
        "rates": slices,
        "pairs": pairs,
        "seconds": time.perf_counter() - start,
        "exceptions": sum(errors.values()),
        "exception_types": dict(errors),
        "first_error_after": first_error_after,
    }


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process."""
    child_main(measure)


_TRANSPORTS = {"file": ("pipe", 100_000.0), "mp": ("mp queue", 150_000.0)}


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Run both transports; return the figures and the raw results."""
    out: list[Figure] = []
    raw: dict[str, Any] = {}
    for transport, (label, target) in _TRANSPORTS.items():
        params = {"transport": transport, "seconds": cfg["seconds"], "max_interval": 0.1}
        runs = interleaved("client_rate", impls, cfg["rounds"], params)
        raw[transport] = runs.results
        common = {"workload": 2}
        out.append(
            figure(
                runs,
                lambda r: r["rates"],
                key=f"client_pairs_{transport}",
                title=f"client acquire+release pairs/s, {label}, server in another process",
                unit="pairs/s",
                better="higher",
                target=target,
                note=(
                    "server max_interval 0.1 (torch's agent's value); a call that raises is "
                    "counted, then retried after 1 ms, so a client that raises on a full "
                    "pipe is paced by its own errors"
                    if transport == "file"
                    else ""
                ),
                **common,
            )
        )
        out.append(
            figure(
                runs,
                lambda r: [r["exceptions"]],
                note=_first_errors(runs, impls),
                key=f"client_exceptions_{transport}",
                title=f"exceptions raised into the caller per {cfg['seconds']:g} s run, {label}",
                unit="count",
                better="lower",
                target=0.0 if transport == "file" else None,
                **common,
            )
        )
        out.append(
            figure(
                runs,
                lambda r: [100.0 * r["backlog_at_stop"] / (2 * r["pairs"])],
                key=f"client_backlog_{transport}",
                title=f"share of requests sent not yet taken in when the client stopped, {label}",
                unit="%",
                better="lower",
                **common,
            )
        )
        if transport == "mp":
            out.append(
                figure(
                    runs,
                    lambda r: [r["drain_seconds"]],
                    key=f"client_drain_{transport}",
                    title=f"seconds the server then took to take in that backlog, {label}",
                    unit="s",
                    better="lower",
                    note="both clients' puts return at once; a backlog waits in the "
                    "worker's queue feeder (capped at 20 s)",
                    **common,
                )
            )
        unread = figure(
            runs,
            lambda r: [max(0, r["unread"])],
            key=f"client_unread_{transport}",
            title=f"requests still not taken in 20 s after the client stopped, {label}",
            unit="requests",
            better="lower",
            target=0.0 if transport == "file" else None,
            **common,
        )
        extra = {
            impl: -sum(min(0, r["unread"]) for r in runs.of(impl))
            for impl in impls
            if any(r["unread"] < 0 for r in runs.of(impl))
        }
        if extra:
            unread.note = "; ".join(
                f"{impl}: {n} request(s) whose call raised reached the server anyway"
                for impl, n in extra.items()
            )
        out.append(unread)
    return out, raw


def _first_errors(runs: Runs, impls: list[str]) -> str:
    """Say after how many pairs each implementation raised its first exception, and what."""
    parts = []
    for impl in impls:
        firsts = [
            r["first_error_after"] for r in runs.of(impl) if r["first_error_after"] is not None
        ]
        if firsts:
            kinds = sorted({kind for r in runs.of(impl) for kind in r["exception_types"]})
            parts.append(
                f"{impl}: first exception ({', '.join(kinds)}) after "
                f"{', '.join(f'{n:,}' for n in firsts)} pairs"
            )
    return "; ".join(parts)
