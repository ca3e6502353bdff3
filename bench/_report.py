"""Figures and how they are shown: the stdout table, the Markdown table, the JSON record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench._stats import Stats

__all__ = ["Figure", "markdown_table", "text_table"]


@dataclass
class Figure:
    """One measured quantity, ours against torch, with the target its issue set (if any).

    ``stat`` names the summary value shown and judged (``median`` or ``p99``);
    ``better`` says which way is good; ``target`` is in ``unit``; ``target_ratio``
    asks ours to be at least that many times better than torch (judged only when
    torch was measured).
    """

    key: str
    workload: int
    title: str
    unit: str
    better: str  # "lower" or "higher"
    ours: Stats | None = None
    torch: Stats | None = None
    target: float | None = None
    target_ratio: float | None = None
    stat: str = "median"
    note: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    def value(self, impl: str) -> float | None:
        """Return the judged value of ``impl`` (``None`` when not measured or a run failed)."""
        if impl in self.errors:
            return None
        stats = self.ours if impl == "ours" else self.torch
        return None if stats is None else float(getattr(stats, self.stat))

    def ratio(self) -> float | None:
        """Return how many times better ours is than torch (> 1: ours better)."""
        ours, torch = self.value("ours"), self.value("torch")
        if ours is None or torch is None:
            return None
        good, bad = (torch, ours) if self.better == "lower" else (ours, torch)
        if bad == 0:
            return math.inf if good > 0 else 1.0
        if good <= 0 and self.better == "lower":
            return None  # a difference measure crossed zero: no meaningful ratio
        return good / bad

    def verdict(self) -> str:
        """Return ``PASS``/``MISS`` against the target, ``ERROR`` if ours failed, or ``-``."""
        if "ours" in self.errors:
            return "ERROR"
        ours = self.value("ours")
        verdicts = []
        if self.target is not None and ours is not None:
            ok = ours <= self.target if self.better == "lower" else ours >= self.target
            verdicts.append(ok)
        ratio = self.ratio()
        if self.target_ratio is not None and ratio is not None:
            verdicts.append(ratio >= self.target_ratio)
        if not verdicts:
            return "-"
        return "PASS" if all(verdicts) else "MISS"

    def target_text(self) -> str:
        """Return the target as ``<= 3 us`` / ``>= 100,000 /s`` / ``>= 2x torch``, or ``-``."""
        parts = []
        if self.target is not None:
            sign = "<=" if self.better == "lower" else ">="
            stat = "" if self.stat == "median" else f"{self.stat} "
            parts.append(f"{stat}{sign} {_num(self.target)} {self.unit}".strip())
        if self.target_ratio is not None:
            parts.append(f">= {self.target_ratio:g}x torch")
        return ", ".join(parts) or "-"

    def cell(self, impl: str) -> str:
        """Return ``median (p25-p75)`` or the single judged value, or why it is missing."""
        if impl in self.errors:
            return "error"
        stats = self.ours if impl == "ours" else self.torch
        if stats is None:
            return "n/a"
        if self.stat != "median":
            return _num(getattr(stats, self.stat))
        if stats.n == 1 or stats.p25 == stats.p75:
            return _num(stats.median)
        return f"{_num(stats.median)} ({_num(stats.p25)}-{_num(stats.p75)})"

    def ratio_text(self) -> str:
        """Return the ratio as ``12x better`` / ``1.3x worse``, or ``-``."""
        ratio = self.ratio()
        if ratio is None:
            return "-"
        if self.value("ours") == self.value("torch"):
            return "same"
        if math.isinf(ratio):
            return "ours: none"
        if ratio >= 1:
            return f"{_num(ratio)}x better"
        return f"{_num(1 / ratio)}x worse"

    def as_dict(self) -> dict[str, Any]:
        """Return the figure as a JSON-ready dict."""
        ratio = self.ratio()
        return {
            "key": self.key,
            "workload": self.workload,
            "title": self.title,
            "unit": self.unit,
            "better": self.better,
            "stat": self.stat,
            "ours": None if self.ours is None else self.ours.as_dict(),
            "torch": None if self.torch is None else self.torch.as_dict(),
            "ratio": None if ratio is None or math.isinf(ratio) else ratio,
            "target": self.target,
            "target_ratio": self.target_ratio,
            "target_text": self.target_text(),
            "verdict": self.verdict(),
            "note": self.note,
            "errors": self.errors,
        }


def _num(value: float) -> str:
    """Format a number with about three significant digits and thousands separators."""
    if value == 0:
        return "0"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


_HEADER = ("#", "figure", "unit", "ours", "torch 2.13", "ours vs torch", "target", "verdict")


def _rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    return [
        (
            str(f.workload),
            f.title,
            f.unit,
            f.cell("ours"),
            f.cell("torch"),
            f.ratio_text(),
            f.target_text(),
            f.verdict(),
        )
        for f in figures
    ]


def text_table(figures: list[Figure]) -> str:
    """Return the figures as an aligned plain-text table, notes and errors below it."""
    rows = [_HEADER, *_rows(figures)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        "ours/torch cells: median (p25-p75) over repeated runs; p50/p99 rows: that percentile."
    )
    lines += [f"[{keys}] {text}" for keys, text in _notes(figures)]
    return "\n".join(lines)


def _notes(figures: list[Figure]) -> list[tuple[str, str]]:
    """Return (figure keys, text) for every distinct note and error, in table order."""
    keys: dict[str, list[str]] = {}
    for f in figures:
        texts = [f.note] if f.note else []
        texts += [f"{impl} failed: {error}" for impl, error in f.errors.items()]
        for text in texts:
            keys.setdefault(text, []).append(f.key)
    return [(", ".join(k), text) for text, k in keys.items()]


def markdown_table(figures: list[Figure]) -> str:
    """Return the figures as a Markdown table, notes and errors as a list below it."""
    lines = [
        "| " + " | ".join(_HEADER) + " |",
        "|" + "|".join("---" for _ in _HEADER) + "|",
    ]
    for row in _rows(figures):
        cells = [cell.replace("|", "\\|") for cell in row]
        cells[-1] = f"**{cells[-1]}**" if cells[-1] in ("MISS", "ERROR") else cells[-1]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- `{keys}`: {text}" for keys, text in _notes(figures)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
