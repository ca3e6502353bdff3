"""Run a workload's measurement processes for both implementations, interleaved."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from bench._child import ChildError, run_child
from bench._report import Figure
from bench._stats import Stats, summarise

__all__ = ["Runs", "figure", "interleaved"]


class Runs:
    """The results of one workload's processes per implementation, and the first error of each."""

    def __init__(self) -> None:
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.errors: dict[str, str] = {}

    def of(self, impl: str) -> list[dict[str, Any]]:
        """Return the results of ``impl`` (empty if it failed or was not run)."""
        return self.results.get(impl, [])


def interleaved(
    module: str,
    impls: list[str],
    rounds: int,
    params: dict[str, Any],
    per_impl: dict[str, dict[str, Any]] | None = None,
    timeout: float = 180.0,
) -> Runs:
    """Run ``bench.<module>`` ``rounds`` times per implementation, alternating which goes first.

    Each process gets ``{"impl": impl, **params, **per_impl[impl]}``. An
    implementation whose process fails is reported once and not run again.
    """
    runs = Runs()
    for r in range(rounds):
        order = impls if r % 2 == 0 else impls[::-1]
        for impl in order:
            if impl in runs.errors:
                continue
            p = {"impl": impl, **params, **(per_impl or {}).get(impl, {})}
            print(f"  {module} {impl} {p} ...", end="", file=sys.stderr, flush=True)
            try:
                result = run_child(module, p, timeout=timeout)
            except ChildError as exc:
                runs.errors[impl] = str(exc)
                print(f" failed: {exc}", file=sys.stderr, flush=True)
                continue
            print(" done", file=sys.stderr, flush=True)
            runs.results.setdefault(impl, []).append(result)
    return runs


def figure(
    runs: Runs,
    samples: Callable[[dict[str, Any]], list[float]],
    **fields: Any,
) -> Figure:
    """Build a :class:`Figure` from every sample that ``samples`` picks out of each result."""
    stats: dict[str, Stats | None] = {}
    for impl in ("ours", "torch"):
        values = [v for result in runs.of(impl) for v in samples(result)]
        stats[impl] = summarise(values) if values else None
    return Figure(ours=stats["ours"], torch=stats["torch"], errors=dict(runs.errors), **fields)
