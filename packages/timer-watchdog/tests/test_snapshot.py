"""Whole-job snapshot: real processes captured concurrently, grouped by where they are stuck."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from timer_watchdog import JobSnapshot, Reaped, Signalled, WatchdogPolicy
from timer_watchdog._forensics import PySpy
from timer_watchdog._jobreport import build_report, format_report
from timer_watchdog._snapshot import JobCapture, job_members, read_labels, take_snapshot

from .conftest import PATIENCE, Child

needs_py_spy = pytest.mark.skipif(shutil.which("py-spy") is None, reason="py-spy is not installed")

#: A rank: argv[1] its stacks directory ("-": no dump handler), argv[2] what it does:
#: ``load`` hangs in load_batch(), ``wait`` in wait_in_collective(), ``block`` waits
#: with the dump signal blocked (it never answers).
RANK = """
import os, signal, sys, time
from timer_api import DEFAULT_STACK_SIGNAL, install_stack_dump

if sys.argv[1] != "-":
    install_stack_dump(sys.argv[1])
if sys.argv[2] == "block":
    signal.pthread_sigmask(signal.SIG_BLOCK, {DEFAULT_STACK_SIGNAL})

def load_batch():
    print("ready", flush=True)
    while True:
        time.sleep(0.05)

def wait_in_collective():
    print("ready", flush=True)
    while sys.argv[2] == "wait-elsewhere":  # the same function, another line
        time.sleep(0.05)
    while True:
        time.sleep(0.05)

(load_batch if sys.argv[2] == "load" else wait_in_collective)()
"""


def start_rank(script: Path, stacks: str, mode: str, rank: int | None) -> Child:
    """Start a real rank process (see :data:`RANK`) with rank labels in its environment."""
    env = dict(os.environ)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK"):
        env.pop(name, None)
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="4", GROUP_RANK="0")
    child = Child(
        [sys.executable, str(script), stacks, mode],
        env=env,
        start_new_session=True,  # as under ``run``: outside the watchdog's group
    )
    assert child.ready == "ready", child.ready
    return child


@pytest.fixture
def rank(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start rank processes (see :data:`RANK`); all are killed at the end."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(RANK))
    started: list[Child] = []

    def start(stacks: str, mode: str, number: int | None = None) -> Child:
        started.append(start_rank(script, stacks, mode, number))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def capture(
    ranks: list[Child], stacks: str | None, budget: float = 20.0, **kw: object
) -> JobSnapshot:
    return take_snapshot(
        [(r.pid, r.start_time, True) for r in ranks],
        budget=budget,
        stacks_dir=stacks,
        stack_signal=WatchdogPolicy().stack_signal,
        **kw,  # type: ignore[arg-type]
    )


def by_pid(snapshot: JobSnapshot) -> dict[int, object]:
    return {p.pid: p for p in snapshot.processes}


class TestLabels:
    def test_rank_labels_come_from_the_start_time_environment(self, rank, tmp_path):
        one = rank(str(tmp_path), "wait", 2)
        assert read_labels(one.pid) == {
            "RANK": "2",
            "LOCAL_RANK": "2",
            "WORLD_SIZE": "4",
            "GROUP_RANK": "0",
        }

    def test_a_process_without_labels_has_none(self, rank, tmp_path):
        assert read_labels(rank(str(tmp_path), "wait").pid) == {}


class TestGrouping:
    def test_ranks_are_grouped_by_their_innermost_user_frame_and_the_culprit_named(
        self, rank, tmp_path
    ):
        stacks = str(tmp_path)
        ranks = [rank(stacks, "load" if n == 1 else "wait", n) for n in range(4)]
        job = JobCapture(
            [(r.pid, r.start_time, True) for r in ranks],
            budget=20.0,
            stacks_dir=stacks,
            stack_signal=WatchdogPolicy().stack_signal,
            py_spy=None,
        )
        job.expire(ranks[1].pid, "load", 1000.0)
        job.expire(ranks[0].pid, "step", 1005.0)
        while not job.done(time.monotonic()):
            time.sleep(0.01)
        snapshot = job.result(time.monotonic())
        assert all(p.source == "handler" and p.answered for p in snapshot.processes)
        assert snapshot.culprit == ranks[1].pid
        report = build_report(snapshot, armed={r.pid: 998.0 for r in ranks})
        assert report.culprit_rank == "1"
        assert report.waiting_for == 2.0
        groups = [
            (g.frame.function if g.frame else None, g.members, g.culprit) for g in report.groups
        ]
        assert groups == [
            ("load_batch", ["rank 1"], True),
            ("wait_in_collective", ["rank 0", "rank 2", "rank 3"], False),
        ]
        assert report.groups[0].frame is not None
        assert report.groups[0].frame.file.endswith("train.py")
        text = format_report(report)
        assert "1 process (rank 1): load_batch() at " in text
        assert "its timer expired first, 2.0s after the others were already waiting" in text
        assert "3 processes (ranks 0, 2, 3): wait_in_collective() at " in text

    def test_one_function_at_two_lines_is_one_group(self, rank, tmp_path):
        ranks = [rank(str(tmp_path), mode, n) for n, mode in enumerate(["wait", "wait-elsewhere"])]
        report = build_report(capture(ranks, str(tmp_path), py_spy=None))
        assert [(g.frame.function if g.frame else None, g.members) for g in report.groups] == [
            ("wait_in_collective", ["rank 0", "rank 1"])
        ]


class TestWithoutStack:
    def test_a_process_without_a_handler_is_shown_with_the_reason(self, rank, tmp_path):
        bare = rank("-", "wait", 0)
        snapshot = capture([bare], str(tmp_path), py_spy=None)
        (process,) = snapshot.processes
        assert (process.source, process.threads, process.answered) == (None, [], True)
        assert process.reason is not None
        assert "no dump handler" in process.reason
        assert "py-spy not used" in process.reason
        assert process.labels["RANK"] == "0"
        assert "no Python stack: no dump handler" in format_report(build_report(snapshot))

    @needs_py_spy
    def test_py_spy_takes_the_stack_of_a_process_without_a_handler(self, rank, tmp_path):
        bare = rank("-", "load", 1)
        snapshot = capture([bare], str(tmp_path), py_spy=PySpy())
        (process,) = snapshot.processes
        assert process.source == "py-spy", process.reason
        report = build_report(snapshot)
        assert report.groups[0].frame is not None
        assert report.groups[0].frame.function == "load_batch"

    def test_a_stopped_process_is_shown_in_state_t_with_the_reason(self, rank, tmp_path):
        stopped = rank(str(tmp_path), "wait", 3)
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + PATIENCE
            while _state(stopped.pid) != "T":
                assert time.monotonic() < deadline, "the process never stopped"
                time.sleep(0.01)
            snapshot = capture([stopped], str(tmp_path), py_spy=None)
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        (process,) = snapshot.processes
        assert process.state == "T"
        assert process.reason is not None
        assert "stopped (state T)" in process.reason
        assert process.threads == []


def _state(pid: int) -> str | None:
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rpartition(")")[2].split()[0]


FREEZER = Path("/sys/fs/cgroup/freezer")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """Freeze ``pid`` in a cgroup-v1 freezer group of its own (D state); thaw it after."""
    if not (FREEZER / "cgroup.procs").exists() or not os.access(FREEZER, os.W_OK):
        pytest.skip("no writable cgroup v1 freezer at /sys/fs/cgroup/freezer")
    group = FREEZER / f"snapshot-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a freezer cgroup: {exc}")
    try:
        (group / "cgroup.procs").write_text(str(pid))
        (group / "freezer.state").write_text("FROZEN")
        deadline = time.monotonic() + PATIENCE
        while (group / "freezer.state").read_text().strip() != "FROZEN":
            assert time.monotonic() < deadline, "the freezer never froze the process"
            time.sleep(0.01)
        yield
    finally:
        (group / "freezer.state").write_text("THAWED")
        with contextlib.suppress(OSError):
            (FREEZER / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            group.rmdir()


class TestBudget:
    @pytest.mark.slow
    def test_a_process_blocking_the_dump_signal_is_marked_without_holding_the_others(
        self, rank, tmp_path
    ):
        stacks = str(tmp_path)
        deaf = rank(stacks, "block", 0)
        fine = rank(stacks, "load", 1)
        snapshot = capture([deaf, fine], stacks, budget=5.0, py_spy=None)
        processes = by_pid(snapshot)
        silent, answered = processes[deaf.pid], processes[fine.pid]
        assert silent.answered is False  # type: ignore[attr-defined]
        assert "no answer within budget" in silent.reason  # type: ignore[attr-defined]
        assert answered.answered is True  # type: ignore[attr-defined]
        assert answered.source == "handler"  # type: ignore[attr-defined]

    def test_a_frozen_process_in_d_state_is_marked_with_its_kernel_stack(self, rank, tmp_path):
        stacks = str(tmp_path)
        cold = rank(stacks, "wait", 2)
        with frozen(cold.pid):
            snapshot = capture([cold], stacks, budget=1.0, py_spy=None)
        (process,) = snapshot.processes
        assert process.state == "D"
        assert process.answered is False
        assert process.reason is not None
        assert "no answer within budget" in process.reason
        assert process.kernel_stack, "root reads /proc/<pid>/stack"
        assert process.labels["RANK"] == "2"


class TestMembers:
    def test_descendants_of_the_root_are_members_and_known_workers_are_marked(self, rank, tmp_path):
        ones = [rank("-", "wait", n) for n in range(2)]
        members = job_members(os.getpid(), [(ones[0].pid, ones[0].start_time)])
        assert (ones[0].pid, ones[0].start_time, True) in members
        assert (ones[1].pid, None, False) in members
        assert all(pid != os.getpid() for pid, _, _ in members)


class TestReaper:
    def test_the_first_expiry_takes_a_snapshot_before_any_signal(self, make_server, rank, tmp_path):
        stacks = str(tmp_path)
        ranks = [rank(stacks, "load" if n == 1 else "wait", n) for n in range(3)]
        h = make_server(
            policy=WatchdogPolicy(
                stacks_dir=stacks, job_snapshot=True, snapshot_budget=20.0, stack_wait=20.0
            )
        )
        now_wall, now = time.time(), time.monotonic()
        from timer_api import TimerRequest

        for n, one in enumerate(ranks):
            after = 0.2 if n == 1 else 60.0
            h.put(
                TimerRequest(
                    one.pid,
                    "load" if n == 1 else "step",
                    now_wall + after,
                    start_time=one.start_time,
                    deadline=now + after,
                )
            )
        (snapshot,) = h.events.wait_for(JobSnapshot)
        (first,) = h.events.wait_for(Signalled, ranks[1].pid)
        assert snapshot.culprit == ranks[1].pid
        assert {p.pid for p in snapshot.processes} >= {r.pid for r in ranks}
        assert first.held >= 0.0
        report = build_report(snapshot)
        assert report.groups[0].culprit
        assert report.groups[0].frame is not None
        assert report.groups[0].frame.function == "load_batch"
        assert ranks[1].proc.wait(PATIENCE) == -signal.SIGKILL
        assert ranks[0].proc.poll() is None

    @pytest.mark.slow
    def test_the_reaped_worker_is_not_asked_again_after_the_snapshot(
        self, make_server, rank, tmp_path
    ):
        # A worker that never answers held the first signal for the budget only; asking
        # it again (stack_wait, 60 s here) would hold the kill far past it.
        from timer_api import TimerRequest, stack_dump_path

        stacks = str(tmp_path)
        deaf, fine = rank(stacks, "block", 0), rank(stacks, "load", 1)
        h = make_server(
            policy=WatchdogPolicy(
                stacks_dir=stacks, job_snapshot=True, snapshot_budget=5.0, stack_wait=60.0
            )
        )
        now_wall, now = time.time(), time.monotonic()
        for one in (deaf, fine):
            h.put(
                TimerRequest(
                    one.pid, "t", now_wall + 0.2, start_time=one.start_time, deadline=now + 0.2
                )
            )
        reaped = {e.pid: e for e in h.events.wait_for(Reaped, count=2)}
        assert deaf.proc.wait(PATIENCE) == -signal.SIGKILL
        assert reaped[deaf.pid].frame is None
        assert reaped[fine.pid].frame is not None
        assert reaped[fine.pid].frame.function == "load_batch"
        assert reaped[fine.pid].stack_path == stack_dump_path(stacks, fine.pid, fine.start_time)
