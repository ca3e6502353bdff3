"""Workload 9: job snapshot wall time: capture N live processes with the in-process handler.

Starts N Python processes that install the dump handler (``install_stack_dump``)
and sleep in a function of their own, then takes the job snapshot of all of them
(``take_snapshot``, as the engine does at the first expiry) ``rounds`` times: the
figure is the wall time of each, from the first capture started to the last stack
read. Ours only: torch has no snapshot. Alone::

    python -m bench.snapshot --processes 64 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench._child import child_main
from bench._collect import figure, interleaved
from bench._report import Figure
from timer_api import DEFAULT_STACK_SIGNAL, process_start_time
from timer_watchdog._snapshot import take_snapshot

__all__ = ["figures", "measure"]

_WORKER = """
import sys, time
from timer_api import install_stack_dump
install_stack_dump(sys.argv[1])

def waiting_in_the_benchmark():
    print("ready", flush=True)
    while True:
        time.sleep(0.1)

waiting_in_the_benchmark()
"""


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Measure the snapshot of ``cfg["processes"]`` processes (ours only)."""
    params = {k: cfg[k] for k in ("processes", "snapshots", "budget")}
    runs = interleaved("snapshot", ["ours"], cfg["rounds"], params, timeout=600.0)
    raw = {"results": runs.of("ours"), "errors": runs.errors}
    count = cfg["processes"]
    return [
        figure(
            runs,
            lambda r: r["seconds"],
            key="job_snapshot",
            workload=9,
            title=f"job snapshot of {count} processes with the in-process handler, wall",
            unit="s",
            better="lower",
            target=1.0,
            note="every thread's Python stack, state, wchan and rank labels of each "
            "process, captured side by side before the first signal",
        )
    ], raw


def measure(impl: str, processes: int, snapshots: int, budget: float) -> dict[str, Any]:
    """Time ``snapshots`` snapshots of ``processes`` live processes (seconds, in ``seconds``)."""
    if impl != "ours":
        raise ValueError("torch has no job snapshot")
    return {"seconds": _times(processes, snapshots, budget)}


def _times(processes: int, rounds: int, budget: float) -> list[float]:
    """Return the wall time (seconds) of ``rounds`` snapshots of ``processes`` live processes."""
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as stacks:
        os.chmod(stacks, 0o700)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, stacks], stdout=subprocess.PIPE, text=True
            )
            for _ in range(processes)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                if worker.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"worker {worker.pid} did not start")
            members = [(w.pid, process_start_time(w.pid), True) for w in workers]
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                snapshot = take_snapshot(
                    members, budget=budget, stacks_dir=stacks, stack_signal=DEFAULT_STACK_SIGNAL
                )
                times.append(time.perf_counter() - start)
                answered = [p for p in snapshot.processes if p.source == "handler"]
                if len(answered) != processes:
                    raise RuntimeError(f"only {len(answered)} of {processes} answered")
            return times
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
                if worker.stdout is not None:
                    worker.stdout.close()


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process (``bench.run``'s child)."""
    child_main(measure)


def _cli() -> None:
    """Measure and print the snapshot wall time (``python -m bench.snapshot``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot", description=__doc__)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=10.0)
    args = parser.parse_args()
    times = _times(args.processes, args.rounds, args.budget)
    print(
        f"job snapshot of {args.processes} processes (in-process handler), {args.rounds} rounds: "
        f"median {statistics.median(times):.3f}s, max {max(times):.3f}s, "
        f"min {min(times):.3f}s; load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    _cli()
