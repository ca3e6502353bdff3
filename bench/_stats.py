"""Summarise repeated samples: median, quartiles, extremes, count."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Stats", "percentile", "summarise"]


def percentile(values: list[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Stats:
    """The summary of one figure's samples."""

    median: float
    p25: float
    p75: float
    p99: float
    min: float
    max: float
    n: int

    def scaled(self, factor: float) -> Stats:
        """Return the same summary with every value multiplied by ``factor``."""
        return Stats(
            self.median * factor,
            self.p25 * factor,
            self.p75 * factor,
            self.p99 * factor,
            self.min * factor,
            self.max * factor,
            self.n,
        )

    def minus(self, value: float) -> Stats:
        """Return the same summary with ``value`` subtracted from every value."""
        return Stats(
            self.median - value,
            self.p25 - value,
            self.p75 - value,
            self.p99 - value,
            self.min - value,
            self.max - value,
            self.n,
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict."""
        return asdict(self)


def summarise(samples: Iterable[float]) -> Stats:
    """Summarise ``samples`` (at least one)."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("no samples")
    return Stats(
        median=statistics.median(values),
        p25=percentile(values, 25),
        p75=percentile(values, 75),
        p99=percentile(values, 99),
        min=min(values),
        max=max(values),
        n=len(values),
    )
