"""Workload 4: reap overshoot, from a hung worker's deadline to its death.

A ``LocalTimerServer`` runs in this process. Hung workers are forked from a
forkserver that has the client preloaded (so a torch worker does not pay a torch
import each). Once all are started and watched (a pidfd each), they are told to
go: each arms one timer ``after`` seconds ahead (staggered so deadlines do not
coincide), reports its wall-clock deadline, and sleeps. This process polls the
pidfds and takes the wall-clock time at which each becomes readable (the
process has exited). Overshoot = death - deadline. A worker
still alive ``cap`` seconds after its deadline counts as missed and is killed.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import time
from typing import Any

from bench import _impls
from bench._child import child_main
from bench._collect import Runs, interleaved
from bench._report import Figure
from bench._stats import summarise

__all__ = ["figures", "main", "measure"]

_PRELOAD = {"ours": ["timer_queue_mp"], "torch": ["torch.distributed.elastic.timer"]}


def _hang(impl: str, queue: Any, after: float, report: Any, go: Any) -> None:
    client = _impls.mp_client(impl, queue)
    go.wait(120)
    deadline = time.time() + after
    client.acquire("bench#hang", deadline)
    report.put((os.getpid(), deadline))
    time.sleep(600)


def measure(
    impl: str,
    max_interval: float,
    samples: int,
    after: float = 0.5,
    spacing: float = 0.037,
    cap: float = 5.0,
) -> dict[str, Any]:
    """Reap ``samples`` hung workers; return each overshoot in seconds and the misses."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["bench._impls", *_PRELOAD[impl]])
    queue, report, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    server = _impls.mp_server(impl, queue, max_interval)
    server.start()
    workers = []
    poller = select.poll()
    pidfds: dict[int, int] = {}  # pidfd -> pid, while the worker is alive
    deadlines: dict[int, float] = {}  # pid -> wall-clock deadline it reported
    deaths: dict[int, float] = {}  # pid -> wall-clock time its pidfd became readable
    missed = 0
    try:
        for i in range(samples):
            worker = ctx.Process(
                target=_hang, args=(impl, queue, after + i * spacing, report, go), daemon=True
            )
            worker.start()
            workers.append(worker)
            assert worker.pid is not None
            pidfd = os.pidfd_open(worker.pid)  # before it can arm, so before it can die
            pidfds[pidfd] = worker.pid
            poller.register(pidfd, select.POLLIN)
        go.set()  # every worker is watched before any arms
        give_up = time.monotonic() + 120 + samples * spacing
        while pidfds and time.monotonic() < give_up:
            for fd, _ in poller.poll(5):
                deaths[pidfds[fd]] = time.time()
                poller.unregister(fd)
                os.close(fd)
                del pidfds[fd]
            while not report.empty():
                pid, deadline = report.get()
                deadlines[pid] = deadline
            now = time.time()
            for fd, pid in list(pidfds.items()):
                if pid in deadlines and now > deadlines[pid] + cap:
                    missed += 1
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    poller.unregister(fd)
                    os.close(fd)
                    del pidfds[fd]
    finally:
        server.stop()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join(5)
        for fd in pidfds:
            os.close(fd)
    overshoots = [deaths[pid] - deadlines[pid] for pid in deaths if pid in deadlines]
    if len(overshoots) + missed < samples:
        raise RuntimeError(
            f"{samples - len(overshoots) - missed} of {samples} workers died before "
            "reporting a deadline, or never armed"
        )
    return {"overshoots": overshoots, "missed": missed, "max_interval": max_interval}


def main() -> None:
    """Run :func:`measure` with the JSON parameters of this process."""
    child_main(measure)


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Reap at max_interval 0.1 and 1.0 (both), and 60 (ours); return figures and overshoots (ms)."""
    samples = {
        "ours": {"samples": cfg["samples_ours"]},
        "torch": {"samples": cfg["samples_torch"]},
    }
    runs: dict[tuple[str, float], Runs] = {}
    for interval in (0.1, 1.0):
        pair = interleaved(
            "reap",
            impls,
            cfg["rounds"],
            {"max_interval": interval},
            samples,
        )
        for impl in impls:
            runs[impl, interval] = pair
    if "ours" in impls:
        runs["ours", 60.0] = interleaved(
            "reap",
            ["ours"],
            cfg["rounds"],
            {"max_interval": 60.0},
            samples,
        )
    raw: dict[str, list[float]] = {}
    missed: dict[str, int] = {}
    for (impl, interval), run in runs.items():
        label = f"{impl} @{interval:g}"
        raw[label] = [o * 1e3 for r in run.of(impl) for o in r["overshoots"]]
        missed[label] = sum(r["missed"] for r in run.of(impl))
    out = []
    for ours_mi, torch_mi in ((0.1, 0.1), (1.0, 1.0), (60.0, 1.0)):
        for stat, target in (("median", 5.0), ("p99", 20.0)):
            ours_label, torch_label = f"ours @{ours_mi:g}", f"torch @{torch_mi:g}"
            errors = {
                impl: runs[impl, mi].errors[impl]
                for impl, mi in (("ours", ours_mi), ("torch", torch_mi))
                if (impl, mi) in runs and impl in runs[impl, mi].errors
            }
            note = ", ".join(
                f"{label}: {n} missed (alive {cfg.get('cap', 5)} s after deadline)"
                for label, n in missed.items()
                if n and label in (ours_label, torch_label)
            )
            if ours_mi != torch_mi and stat == "median":
                note = (note + "; " if note else "") + (
                    f"torch measured at max_interval {torch_mi:g}, not {ours_mi:g}: its "
                    "overshoot grows with max_interval (a minute per sample at 60)"
                )
            title = (
                f"reap overshoot {'p50' if stat == 'median' else 'p99'}, max_interval {ours_mi:g}"
            )
            if ours_mi != torch_mi:
                title += f" (torch: {torch_mi:g})"
            out.append(
                Figure(
                    key=f"reap_{'p50' if stat == 'median' else 'p99'}_{ours_mi:g}",
                    workload=4,
                    title=title,
                    unit="ms",
                    better="lower",
                    ours=summarise(raw[ours_label]) if raw.get(ours_label) else None,
                    torch=summarise(raw[torch_label]) if raw.get(torch_label) else None,
                    target=target,
                    stat=stat,
                    note=note,
                    errors=errors,
                )
            )
    return out, {"overshoot_ms": raw, "missed": missed}
