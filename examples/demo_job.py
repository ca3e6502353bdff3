"""A small "distributed training job" that the demo runs under ``timer-watchdog run``.

Four ranks (plain ``multiprocessing`` processes, no torch) train in lock step: each
step, every rank loads a batch, then the ranks exchange their gradients through
queues (``all_reduce()``: each rank sends its value to every other rank, then waits
for theirs). Loading a batch runs under a short timer, the exchange under a longer
one, as a real job would arm them. On step 2, rank 1 hangs in ``load_batch()``: it
never sends its gradient, so ranks 0, 2 and 3 block in ``all_reduce()`` waiting for
it. Rank 1's timer expires first: the watchdog captures every process of the job,
and its report points at rank 1 and ``load_batch()``. Once rank 1 is killed, the job
stops the other ranks, as torchrun does.

Each rank is started with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its
environment (as torchrun does), which is where the watchdog reads rank labels from.
Nothing in this file knows about stack dumps: ``timer-watchdog run --stacks DIR``
sets the environment so that the client installs the handler by itself.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.queues import Queue

from timer_api import expires
from timer_file import configure_from_env

WORLD_SIZE = 4
STEPS = 3
LOAD_TIMEOUT = 1.5  # seconds loading one batch may take
STEP_TIMEOUT = 4.0  # seconds the gradient exchange may take
HUNG_RANK, HUNG_STEP = 1, 2


def load_batch(rank: int, step: int) -> float:
    """Read one batch of pretend data; rank 1 hangs here on step 2 (a stuck data loader)."""
    if rank == HUNG_RANK and step == HUNG_STEP:
        while True:  # the file system never answers
            time.sleep(0.1)
    time.sleep(0.05)
    return float(rank + step)


def all_reduce(rank: int, value: float, inboxes: list[Queue[float]]) -> float:
    """Send ``value`` to every other rank, then add up theirs: a collective through queues."""
    for peer, inbox in enumerate(inboxes):
        if peer != rank:
            inbox.put(value)
    total = value
    for _ in range(WORLD_SIZE - 1):
        total += inboxes[rank].get()  # blocks until every peer has sent its value
    return total


def train(rank: int, inboxes: list[Queue[float]]) -> None:
    """Run the steps: load a batch, then exchange gradients, each under its own timer."""
    configure_from_env()  # connect to the watchdog named by TORCHELASTIC_TIMER_FILE
    print(f"[rank {rank}] started as pid {os.getpid()}", flush=True)
    all_reduce(rank, 0.0, inboxes)  # rendezvous: every rank has started (no timer yet)
    for step in range(1, STEPS + 1):
        with expires(after=LOAD_TIMEOUT):
            batch = load_batch(rank, step)
        with expires(after=STEP_TIMEOUT):
            total = all_reduce(rank, batch, inboxes)
        print(f"[rank {rank}] step {step}/{STEPS} done (sum {total:g})", flush=True)
    print(f"[rank {rank}] finished", flush=True)


def main() -> int:
    """Start the ranks (each with its rank in its environment), wait, say how each ended."""
    context = multiprocessing.get_context("spawn")
    inboxes: list[Queue[float]] = [context.Queue() for _ in range(WORLD_SIZE)]
    ranks = []
    for rank in range(WORLD_SIZE):
        # A spawned process starts from a fresh exec with this environment.
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))
        process = context.Process(target=train, args=(rank, inboxes), name=f"rank-{rank}")
        process.start()
        ranks.append(process)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        del os.environ[name]
    running = list(ranks)
    while running:
        wait([p.sentinel for p in running])
        running = [p for p in running if p.exitcode is None]
        if any(p.exitcode not in (None, 0) for p in ranks):
            # As torchrun does: once one rank has failed, the others are stopped.
            for process in running:
                process.terminate()
            break
    for process in ranks:
        process.join()
    failed = [rank for rank, p in enumerate(ranks) if p.exitcode != 0]
    for rank in failed:
        print(f"[job] rank {rank} ended with exit code {ranks[rank].exitcode}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
