"""Draw the PNG: reap-overshoot distributions and idle CPU against armed timers.

matplotlib is imported here only, and only the bench session installs it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench._stats import percentile

__all__ = ["plot"]

_COLOURS = {"ours": "#1f77b4", "torch": "#d62728"}
_FLOOR_MS = 0.01


def plot(reap: dict[str, Any] | None, idle: dict[str, Any] | None, title: str, path: Path) -> None:
    """Write the two panels (each drawn only if its workload ran) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    fig.suptitle(title, fontsize=10)
    if reap:
        _reap_panel(left, reap["overshoot_ms"])
    else:
        left.set_axis_off()
    if idle:
        _idle_panel(right, idle["cpu_percent"])
    else:
        right.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reap_panel(ax: Any, overshoot_ms: dict[str, list[float]]) -> None:
    labels = [label for label, values in overshoot_ms.items() if values]
    labels.sort(key=lambda label: (float(label.split("@")[1]), label))
    rng = random.Random(0)
    for i, label in enumerate(labels):
        values = [max(v, _FLOOR_MS) for v in overshoot_ms[label]]
        colour = _COLOURS[label.split()[0]]
        ax.scatter(
            [i + rng.uniform(-0.18, 0.18) for _ in values], values, s=9, alpha=0.5, color=colour
        )
        for q, width in ((50, 0.34), (99, 0.22)):
            y = percentile(values, q)
            ax.hlines(y, i - width, i + width, color="black", linewidth=1.6 if q == 50 else 1.0)
    ax.axhline(5, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(20, color="grey", linestyle=":", linewidth=0.8)
    ax.text(len(labels) - 0.5, 5, "p50 target 5 ms", fontsize=7, va="bottom", ha="right")
    ax.text(len(labels) - 0.5, 20, "p99 target 20 ms", fontsize=7, va="bottom", ha="right")
    ax.set_yscale("log")
    ax.set_xticks(
        range(len(labels)), [label.replace(" @", "\nmax_interval ") for label in labels], fontsize=8
    )
    ax.set_ylabel("deadline to death of the hung worker (ms, log)")
    ax.set_title("Reap overshoot (bars: p50 long, p99 short)", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)


def _idle_panel(ax: Any, cpu: dict[str, dict[Any, list[float]]]) -> None:
    for impl, by_count in cpu.items():
        counts = sorted((int(n), values) for n, values in by_count.items() if values)
        if not counts:
            continue
        xs = list(range(len(counts)))
        medians = [percentile(v, 50) for _, v in counts]
        low = [m - percentile(v, 25) for m, (_, v) in zip(medians, counts, strict=True)]
        high = [percentile(v, 75) - m for m, (_, v) in zip(medians, counts, strict=True)]
        ax.errorbar(
            xs,
            medians,
            yerr=[low, high],
            marker="o",
            capsize=3,
            color=_COLOURS[impl],
            label=impl if impl == "ours" else "torch 2.13",
        )
        ax.set_xticks(xs, [f"{n:,}" for n, _ in counts])
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.text(0, 0.5, "target at 100,000: 0.5%", fontsize=7, va="bottom")
    ax.set_xlabel("armed timers")
    ax.set_ylabel("server process CPU (% of one core)")
    ax.set_title("Idle server CPU, max_interval 0.1 (median, p25-p75)", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.25)
