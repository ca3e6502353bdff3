"""A small "training job" that the demo runs under ``timer-watchdog run``.

It starts four worker processes. Each one does a few steps, and each step runs
under a two-second timer (``with expires(after=2)``). Worker 2 gets stuck in
``wait_for_gradients_from_peer()`` on its third step, as a real worker does when
a peer never joins a collective: the watchdog dumps its stack and kills it, and
the three other workers finish their work.

Nothing in this file knows about stack dumps: ``timer-watchdog run --stacks DIR``
sets the environment so that the client installs the handler by itself.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from timer_api import expires
from timer_file import configure_from_env

WORKERS = 4
STEPS = 4
STEP_TIMEOUT = 2.0  # seconds each step may take before the watchdog steps in
STUCK_WORKER, STUCK_STEP = 2, 3


def wait_for_gradients_from_peer() -> None:
    """Wait for a peer that never answers (the hang the demo is about)."""
    while True:
        time.sleep(0.1)


def train_step(rank: int, step: int) -> None:
    """Do one step of pretend work; one worker hangs on one step."""
    if rank == STUCK_WORKER and step == STUCK_STEP:
        wait_for_gradients_from_peer()
    time.sleep(0.3)


def worker(rank: int) -> None:
    """Run every step under its own timer."""
    configure_from_env()  # connect to the watchdog named by TORCHELASTIC_TIMER_FILE
    print(f"[worker {rank}] started as pid {os.getpid()}", flush=True)
    for step in range(1, STEPS + 1):
        with expires(after=STEP_TIMEOUT):
            train_step(rank, step)
        print(f"[worker {rank}] step {step}/{STEPS} done", flush=True)
    print(f"[worker {rank}] finished", flush=True)


def main() -> int:
    """Start the workers, wait for them, and say how each one ended."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker, args=(rank,)) for rank in range(WORKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [rank for rank, p in enumerate(processes) if p.exitcode != 0]
    for rank in failed:
        print(f"[job] worker {rank} ended with exit code {processes[rank].exitcode}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
