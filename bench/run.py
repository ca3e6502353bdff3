"""Run every benchmark workload against ours and torch 2.13, side by side, and report.

Usage (the ``bench`` nox session runs the first)::

    python -m bench.run                  # everything; writes docs/benchmarks/*
    python -m bench.run --quick          # fewer, shorter runs (a smoke test)
    python -m bench.run --only 2,3       # some workloads; prints only, unless --out

Prints the table, and for a full run writes ``docs/benchmarks/latest.json``,
``docs/benchmarks/bench.png`` and the results section of ``docs/benchmarks.md``.
torch is measured when it is importable here; otherwise ours runs alone and the
table says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import (
    _impls,
    client_rate,
    expires_cost,
    idle,
    imports,
    ingest,
    memory,
    progress,
    reap,
    snapshot,
    table_ops,
)
from bench._child import ROOT
from bench._report import Figure, markdown_table, text_table

WORKLOADS = {
    0: ("expires() cost", expires_cost.figures),
    1: ("worker-side import", imports.figures),
    2: ("client pairs/s", client_rate.figures),
    3: ("server ingest", ingest.figures),
    4: ("reap overshoot", reap.figures),
    5: ("idle server CPU", idle.figures),
    6: ("memory per timer", memory.figures),
    7: ("timer table calls", table_ops.figures),
    8: ("run --progress", progress.figures),
    9: ("job snapshot", snapshot.figures),
}

SETTINGS: dict[str, dict[int, dict[str, Any]]] = {
    "full": {
        0: {"rounds": 3, "samples": 10, "iterations": {"ours": 20_000, "torch": 100}},
        1: {"runs": 20, "torch_every": 2},
        2: {"rounds": 2, "seconds": 3.0},
        3: {"rounds": 3, "n": 200_000},
        4: {"rounds": 2, "samples_ours": 40, "samples_torch": 20},
        5: {"rounds": 1, "windows": 3, "window": 2.0},
        6: {"rounds": 2, "n": 100_000},
        7: {"rounds": 4, "n": 100_000, "calls": 5},
        8: {"rounds": 1, "size_mb": 100, "repeats": 15, "stalls": 10, "stall": 1.0},
        9: {"rounds": 2, "processes": 16, "snapshots": 7, "budget": 10.0},
    },
    "quick": {
        0: {"rounds": 1, "samples": 3, "iterations": {"ours": 5_000, "torch": 20}},
        1: {"runs": 4, "torch_every": 2},
        2: {"rounds": 1, "seconds": 1.0},
        3: {"rounds": 1, "n": 50_000},
        4: {"rounds": 1, "samples_ours": 10, "samples_torch": 8},
        5: {"rounds": 1, "windows": 1, "window": 1.0},
        6: {"rounds": 1, "n": 20_000},
        7: {"rounds": 1, "n": 100_000, "calls": 2},
        8: {"rounds": 1, "size_mb": 20, "repeats": 3, "stalls": 2, "stall": 1.0},
        9: {"rounds": 1, "processes": 16, "snapshots": 3, "budget": 10.0},
    },
}

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def machine() -> dict[str, Any]:
    """Describe this machine and the software measured."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as meminfo:
            mem_kib = int(meminfo.readline().split()[1])
    except OSError:
        mem_kib = 0
    versions: dict[str, str | None] = {}
    for dist in ("timer-api", "timer-watchdog", "timer-queue-mp", "timer-file", "msgspec"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "interpreter": sys.executable,
        "torch": _impls.torch_version(),
        "packages": versions,
        "load_average_start": os.getloadavg(),
    }


def run(workloads: list[int], mode: str) -> dict[str, Any]:
    """Run ``workloads``; return the whole record (figures, raw samples, machine)."""
    impls = ["ours", "torch"] if _impls.torch_available() else ["ours"]
    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "machine": machine(),
        "torch_measured": "torch" in impls,
        "workloads": workloads,
        "figures": [],
        "raw": {},
        "durations_s": {},
    }
    if "torch" not in impls:
        print("torch is not installed here: measuring ours alone", file=sys.stderr)
    figures: list[Figure] = []
    for number in workloads:
        name, collect = WORKLOADS[number]
        print(f"[{number}] {name}", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            figs, raw = collect(impls, SETTINGS[mode][number])
        except Exception as exc:  # report the workload as failed, run the others
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
            figs, raw = [_failed(number, name, error)], {"error": error}
        record["durations_s"][number] = round(time.monotonic() - start, 1)
        figures += figs
        record["raw"][str(number)] = raw
    record["machine"]["load_average_end"] = os.getloadavg()
    record["figures"] = [f.as_dict() for f in figures]
    record["_figures"] = figures
    return record


def _failed(number: int, name: str, error: str) -> Figure:
    """Return a stand-in figure for a workload whose harness failed."""
    return Figure(
        key=f"workload{number}_failed",
        workload=number,
        title=f"{name}: the harness failed",
        unit="-",
        better="lower",
        errors={"ours": error, "torch": error},
    )


def header(record: dict[str, Any]) -> str:
    """Return one line naming the date, the machine and the versions measured."""
    m = record["machine"]
    torch = f"torch {m['torch']}" if record["torch_measured"] else "torch not installed"
    return (
        f"{record['date']} | {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']} | Python {m['python']} | {torch} | "
        f"load avg {m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f}"
    )


def write_docs(record: dict[str, Any], figures: list[Figure]) -> None:
    """Replace the results section of docs/benchmarks.md with this run's."""
    if not DOCS.exists():
        print(f"{DOCS} not found: results section not written", file=sys.stderr)
        return
    text = DOCS.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOCS} has no {BEGIN} ... {END} section: not written", file=sys.stderr)
        return
    m = record["machine"]
    misses = [f.key for f in figures if f.verdict() in ("MISS", "ERROR")]
    section = "\n".join(
        [
            BEGIN,
            "",
            f"Run of {record['date']} (`{record['mode']}` settings, "
            f"{sum(record['durations_s'].values()):.0f} s), written by `bench/run.py`.",
            "",
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']};"
            f" load average {m['load_average_start'][0]:.2f} at the start, "
            f"{m['load_average_end'][0]:.2f} at the end.",
            f"- Python {m['python']}; ours: "
            + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
            + "; "
            + (f"torch {m['torch']}." if record["torch_measured"] else "torch not installed."),
            "- Targets missed or not measured: "
            + (", ".join(f"`{k}`" for k in misses) if misses else "none")
            + ".",
            "",
            markdown_table(figures),
            "",
            "![Reap overshoot and idle CPU](benchmarks/bench.png)",
            "",
            END,
        ]
    )
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOCS.write_text(before + section + after)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print the table and write the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--only", help="comma-separated workload numbers (0-9)")
    parser.add_argument("--out", type=Path, help="directory for latest.json and bench.png")
    args = parser.parse_args(argv)
    workloads = sorted(WORKLOADS) if not args.only else [int(w) for w in args.only.split(",")]
    out = args.out
    if out is None and not args.only:
        out = ROOT / "docs" / "benchmarks"
    record = run(workloads, "quick" if args.quick else "full")
    figures: list[Figure] = record.pop("_figures")
    print()
    print(header(record))
    print(text_table(figures))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(json.dumps(record, indent=1) + "\n")
        from bench._plot import plot

        plot(record["raw"].get("4"), record["raw"].get("5"), header(record), out / "bench.png")
        print(f"\nwrote {out / 'latest.json'} and {out / 'bench.png'}", file=sys.stderr)
        if out.resolve() == (ROOT / "docs" / "benchmarks").resolve():
            write_docs(record, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
