"""Workload 0: the cost of one ``with expires(after=60):`` block with the default scope.

The client does nothing, so what is measured is ``expires`` itself: naming the
scope from the caller's frame and calling the client. The same loop calling the
null client's ``acquire``/``release`` directly is the baseline; ``expires`` minus
baseline is the overhead the target (<= 3 us) is about. The ``with`` statement runs
at an exact stack depth (frames on the stack, the ``with``'s own included),
reached by recursion.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from bench import _impls
from bench._child import emit, read_params
from bench._collect import figure, interleaved
from bench._report import Figure

__all__ = ["figures", "main"]


def _depth() -> int:
    """Return the stack depth of the caller's frame (1 = a module's top level)."""
    frame: FrameType | None = sys._getframe(1)
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def _at_depth(pad: int, fn: Callable[[], list[float]]) -> list[float]:
    """Call ``fn`` from ``pad`` extra frames below this one."""
    if pad > 0:
        return _at_depth(pad - 1, fn)
    return fn()


def _loops(
    impl: str, depth: int, iterations: int, samples: int
) -> tuple[Callable[[], list[float]], Callable[[], list[float]], list[int]]:
    """Build the two timing loops: ``with expires()`` and the bare client calls."""
    expires = _impls.expires_fn(impl)
    client = _impls.null_client(impl)
    acquire, release, now = client.acquire, client.release, time.time
    scope = f"{__file__}#0"
    seen: list[int] = []

    def blocks() -> list[float]:
        seen.append(_depth())
        out = []
        for _ in range(samples):
            start = time.perf_counter()
            for _ in range(iterations):
                with expires(after=60, client=client):
                    pass
            out.append((time.perf_counter() - start) / iterations)
        return out

    def bare() -> list[float]:
        seen.append(_depth())
        out = []
        for _ in range(samples):
            start = time.perf_counter()
            for _ in range(iterations):
                acquire(scope, now() + 60)
                release(scope)
            out.append((time.perf_counter() - start) / iterations)
        return out

    return blocks, bare, seen


def main() -> None:
    """Time ``expires`` and the bare client at the requested depth; print per-block seconds.

    Parameters: ``impl``, ``depth``, ``iterations`` (blocks per sample), ``samples``.
    The loops run from this function so that depths as shallow as 3 can be reached
    (``python -c``: the top level is 1, this function 2, a loop it calls 3).
    """
    try:
        params = read_params()
        depth = int(params["depth"])
        blocks, bare, seen = _loops(
            params["impl"], depth, int(params["iterations"]), int(params["samples"])
        )
        pad = depth - _depth() - 1
        if pad < 0:
            raise ValueError(f"already deeper than {depth} frames")
        if pad == 0:
            with_expires, baseline = blocks(), bare()
        else:
            with_expires, baseline = _at_depth(pad - 1, blocks), _at_depth(pad - 1, bare)
        if set(seen) != {depth}:
            raise AssertionError(f"loops ran at depth {seen}, wanted {depth}")
        emit({"expires": with_expires, "baseline": baseline, "depth": depth})
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Run the workload for both depths; return its figures and raw samples (seconds)."""
    out: list[Figure] = []
    raw: dict[str, Any] = {}
    for depth in (3, 30):
        runs = interleaved(
            "expires_cost",
            impls,
            cfg["rounds"],
            {"depth": depth, "samples": cfg["samples"] + 1},  # the first sample is a warm-up
            {impl: {"iterations": cfg["iterations"][impl]} for impl in impls},
        )
        raw[f"depth{depth}"] = runs.results
        out.append(
            figure(
                runs,
                _total,
                key=f"expires_block_depth{depth}",
                workload=0,
                title=f"`with expires(after=60)` block, null client, depth {depth}",
                unit="us",
                better="lower",
            )
        )
        out.append(
            figure(
                runs,
                _overhead,
                key=f"expires_overhead_depth{depth}",
                workload=0,
                title=f"`expires` cost beyond the client's own calls, depth {depth}",
                unit="us",
                better="lower",
                target=3.0,
            )
        )
    return out, raw


def _total(result: dict[str, Any]) -> list[float]:
    return [s * 1e6 for s in result["expires"][1:]]


def _overhead(result: dict[str, Any]) -> list[float]:
    baseline = statistics.median(result["baseline"][1:])
    return [(s - baseline) * 1e6 for s in result["expires"][1:]]
