"""Workload 8: ``timer-watchdog run --progress``: what passing a job's output costs, stall timing.

Pass-through: a job ``cat``s a 100 MB log (one line in 100 a ``step N`` line), bare,
under ``run``, and under ``run --progress 'step \\d+'``, in rotating order. The job
times its own ``cat`` (``date +%s%N`` before and after), so the figures are what the
pump costs the job, free of ``timer-watchdog``'s start-up: best time against best time
(the pump's own cost), and run against the bare run next to it (what a loaded machine
adds). The whole command's wall time is in the raw record too.

The output goes to the same sink both ways, measured for two sinks: a file (``run``
gives the job the file itself and reads it after the job; bare, ``cat`` even hands
the copy to the kernel with ``copy_file_range``), and a pipe (1 MiB) that this
process drains (``run`` must then pass every byte on through a pipe of its own).

Stall: a job prints one progress line, notes the time, and sleeps; with
``--stall S`` the overshoot is the ``stall`` timer's ``expired`` event time minus
that note minus S (the note is taken just before the line is written, so the
figure errs high).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._child import child_main
from bench._collect import figure, interleaved
from bench._report import Figure

__all__ = ["figures", "main", "measure"]

PROGRESS = r"step \d+"
_TIMED_CAT = 's=$(date +%s%N); cat "$1"; e=$(date +%s%N); echo "$s $e" > "$2"'
#: Where the output goes: a pipe this process drains (the fair case), or a file.
SINKS = ("pipe", "file")
#: Size of the drained pipe, and of each read from it.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


def _write_log(path: Path, size: int) -> None:
    """Write ``size`` bytes of log lines, one in 100 a progress line."""
    rng = random.Random(8)
    written = 0
    i = 0
    with open(path, "wb") as out:
        while written < size:
            i += 1
            if i % 100 == 0:
                line = b"step %d loss %.4f\n" % (i // 100, rng.random())
            else:
                line = b"INFO rank %d: batch %d, %.1f tokens/s, lr %.3e\n" % (
                    i % 8,
                    i,
                    rng.random() * 1e5,
                    rng.random(),
                )
            out.write(line)
            written += len(line)


def _watchdog(*args: str) -> list[str]:
    return [sys.executable, "-m", "timer_watchdog", "run", *args, "--"]


def _drained(command: list[str]) -> int:
    """Run ``command`` with its stdout a pipe that this process drains; return the bytes read."""
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, _F_SETPIPE_SZ, _PIPE_SIZE)
        proc = subprocess.Popen(command, stdout=write, stderr=subprocess.DEVNULL)
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
    buffer = bytearray(_PIPE_SIZE)
    total = 0
    try:
        while n := os.readv(read, [buffer]):
            total += n
    finally:
        os.close(read)
        proc.wait(300)
    if proc.returncode != 0:
        raise RuntimeError(f"{command} ended with status {proc.returncode}")
    return total


def _pass(prefix: list[str], log: Path, sink: str, tmp: Path) -> tuple[float, float]:
    """Run the timed ``cat`` under ``prefix`` into ``sink``; return (cat seconds, wall seconds)."""
    stamp = tmp / "stamp"
    command = [*prefix, "sh", "-c", _TIMED_CAT, "sh", str(log), str(stamp)]
    start = time.perf_counter()
    if sink == "pipe":
        size = _drained(command)
    else:
        with open(tmp / "sink", "wb") as out:
            subprocess.run(command, stdout=out, stderr=subprocess.DEVNULL, check=True, timeout=300)
        size = (tmp / "sink").stat().st_size
    wall = time.perf_counter() - start
    if size != log.stat().st_size:
        raise RuntimeError(f"{sink}: {size} bytes passed, the log has {log.stat().st_size}")
    begin, end = (int(word) for word in stamp.read_text().split())
    return (end - begin) / 1e9, wall


def _stall_overshoot(tmp: Path, stall: float) -> float:
    """Return how late a stall of ``stall`` seconds was acted on, in seconds."""
    events, stamp = tmp / "events.jsonl", tmp / "stamp"
    events.unlink(missing_ok=True)
    job = f"date +%s%N > {stamp}; echo step 1; exec sleep 600"
    result = subprocess.run(
        [
            *_watchdog("--progress", PROGRESS, "--stall", f"{stall:g}", "--events", str(events)),
            "sh",
            "-c",
            job,
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 137:
        raise RuntimeError(f"the stalled job ended with {result.returncode}: {result.stderr!r}")
    progress = int(stamp.read_text()) / 1e9
    expired = [
        float(record["time"])
        for record in map(json.loads, events.read_text().splitlines())
        if record["event"] == "expired" and record["scope_id"] == "stall"
    ]
    return min(expired) - progress - stall


def _overheads(job: dict[str, list[float]]) -> dict[str, Any]:
    """Return the ``progress`` way's overheads over ``bare``, in percent."""
    bare, progress = job["bare"], job["progress"]
    return {
        "overhead_percent": [100.0 * (p / b - 1.0) for p, b in zip(progress, bare, strict=True)],
        "overhead_of_medians_percent": 100.0
        * (statistics.median(progress) / statistics.median(bare) - 1.0),
        "overhead_of_best_percent": 100.0 * (min(progress) / min(bare) - 1.0),
    }


def measure(impl: str, size_mb: int, repeats: int, stalls: int, stall: float) -> dict[str, Any]:
    """Pass ``size_mb`` MB ``repeats`` times per way and sink; time ``stalls`` stalls of ``stall`` s."""
    if impl != "ours":
        raise ValueError("torch has no run --progress")
    ways = {
        "bare": [],
        "run": _watchdog(),
        "progress": _watchdog("--progress", PROGRESS, "--stall", "1h"),
    }
    job: dict[str, dict[str, list[float]]] = {sink: {way: [] for way in ways} for sink in SINKS}
    wall: dict[str, dict[str, list[float]]] = {sink: {way: [] for way in ways} for sink in SINKS}
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as name:
        tmp = Path(name)
        log = tmp / "log"
        _write_log(log, size_mb * 2**20)
        _pass([], log, "file", tmp)  # warm the page cache
        order = [(way, sink) for sink in SINKS for way in ways]
        for r in range(repeats):
            shift = r % len(order)
            for way, sink in order[shift:] + order[:shift]:
                seconds, whole = _pass(ways[way], log, sink, tmp)
                job[sink][way].append(seconds)
                wall[sink][way].append(whole)
        overshoot = [_stall_overshoot(tmp, stall) for _ in range(stalls)]
    return {
        "job_seconds": job["file"],
        "wall_seconds": wall["file"],
        **_overheads(job["file"]),
        "pipe": {
            "job_seconds": job["pipe"],
            "wall_seconds": wall["pipe"],
            **_overheads(job["pipe"]),
        },
        "stall_overshoot": overshoot,
    }


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process."""
    child_main(measure)


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Measure the pass-through cost and the stall overshoot (ours only: torch has neither)."""
    params = {k: cfg[k] for k in ("size_mb", "repeats", "stalls", "stall")}
    runs = interleaved("progress", ["ours"], cfg["rounds"], params, timeout=1800.0)
    raw = {"results": runs.of("ours"), "errors": runs.errors}
    size = cfg["size_mb"]
    return [
        figure(
            runs,
            lambda r: [r["overhead_of_best_percent"]],
            key="progress_passthrough_best",
            workload=8,
            title=f"run --progress: {size} MB of a job's output into a file, "
            "job's best time vs bare's best",
            unit="% more",
            better="lower",
            target=5.0,
            note="best of the repeats of each way: what run --progress costs the job when "
            "the other load of the machine leaves it a core; the job times its own cat of a "
            "log file, timer-watchdog's start-up is not in it; the job writes into the "
            "file itself, which run reads after it",
        ),
        figure(
            runs,
            lambda r: r["overhead_percent"],
            key="progress_passthrough",
            workload=8,
            title=f"run --progress: {size} MB into a file, job's time vs bare, paired runs",
            unit="% more",
            better="lower",
            note="each run of the job under run --progress against the bare run next to "
            "it: on a loaded machine the reader competes for a core, and this shows it",
        ),
        figure(
            runs,
            lambda r: [r["pipe"]["overhead_of_best_percent"]],
            key="progress_passthrough_pipe_best",
            workload=8,
            title=f"run --progress: {size} MB passed through into a pipe, "
            "job's best time vs bare's best",
            unit="% more",
            better="lower",
            target=5.0,
            note="both ways write into a 1 MiB pipe that the benchmark drains; under run "
            "the job writes into run's pipe, and run reads every byte and writes it on: "
            "one more process in the pipeline, on a 2-core machine",
        ),
        figure(
            runs,
            lambda r: r["pipe"]["overhead_percent"],
            key="progress_passthrough_pipe",
            workload=8,
            title=f"run --progress: {size} MB through into a pipe, job's time vs bare, paired runs",
            unit="% more",
            better="lower",
        ),
        figure(
            runs,
            lambda r: [
                p - q
                for p, q in zip(
                    r["wall_seconds"]["progress"], r["wall_seconds"]["run"], strict=True
                )
            ],
            key="progress_passthrough_wall",
            workload=8,
            title=f"run --progress minus run, whole command, {size} MB passed",
            unit="s",
            better="lower",
        ),
        figure(
            runs,
            lambda r: [1000.0 * s for s in r["stall_overshoot"]],
            key="progress_stall_overshoot",
            workload=8,
            title=f"stall acted on after --stall {cfg['stall']:g}: overshoot",
            unit="ms",
            better="lower",
            target=1000.0,
            stat="p99",
        ),
    ], raw
