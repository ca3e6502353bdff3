"""Capture every live process of the job at the first expiry: concurrently, within a budget.

Each process is captured by a thread of its own: its parent, state and ``wchan`` and
its rank labels from /proc, its kernel stack when it is in D state, and the Python
stack of every thread. The stacks come from the worker's own dump handler when it
has one in the job's stacks directory (see ``timer_api.install_stack_dump``), else
from ``py-spy dump`` when py-spy is installed and may attach, else the reason there
is none. The capture never outlasts its budget: what has not answered by then is
marked ``no answer within budget`` and the snapshot is complete without it.

Rank labels are read from ``/proc/<pid>/environ``, which holds the environment the
process was *started* with (``execve``): a variable set later by the process itself
does not show there, and reading it needs the process's own user (or root).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from timer_api import process_stat, signal_name, stack_dump_path

from ._events import JobSnapshot, ProcessSnapshot
from ._forensics import (
    POLL_STEP,
    PySpy,
    faulthandler_threads,
    file_size,
    py_spy_threads,
    read_from,
)
from ._process import ProcessGone, Procfs, ProtectedProcess, Target

__all__ = [
    "DEFAULT_BUDGET",
    "RANK_LABELS",
    "JobCapture",
    "job_members",
    "read_labels",
    "take_snapshot",
]

#: Seconds a snapshot may hold the first signal, unless the policy says otherwise.
DEFAULT_BUDGET = 3.0

#: Environment variables read as rank labels, in the order they are shown.
RANK_LABELS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "ROLE_RANK",
)
_LABEL_KEYS = frozenset(name.encode() for name in RANK_LABELS)

#: One process to capture: its pid, its start time (``None``: whatever /proc shows)
#: and whether the server knows it as a worker.
Member = tuple[int, int | None, bool]


def read_labels(pid: int) -> dict[str, str]:
    """Return the rank labels of ``pid`` from its start-time environment (empty if unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            data = file.read()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in _LABEL_KEYS:
            found[key.decode()] = value.decode("utf-8", "replace")
    return {name: found[name] for name in RANK_LABELS if name in found}


#: Looks at an unchanged dump file after which a running process's dump counts as complete.
STEADY_POLLS = 10


def _state(pid: int) -> str | None:
    stat = process_stat(pid)
    return None if stat is None else stat.state


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            return file.read(65536).decode("utf-8", "replace")
    except OSError:
        return None


def _wchan(pid: int) -> str | None:
    text = _read_text(f"/proc/{pid}/wchan")
    return None if not text or text.strip() == "0" else text.strip()


def _kernel_stack(pid: int) -> tuple[list[str] | None, str | None]:
    """Return the kernel stack of ``pid`` (one line a frame), or why it cannot be read."""
    try:
        with open(f"/proc/{pid}/stack", "rb") as file:
            text = file.read().decode("utf-8", "replace")
    except OSError as exc:
        return None, f"kernel stack unreadable: {exc.strerror or exc}"
    return [line.strip() for line in text.splitlines() if line.strip()], None


def job_members(root: int | None, workers: Iterable[tuple[int, int]]) -> list[Member]:
    """Return the processes of the job: the ``workers`` known to the server and ``root``'s descendants.

    Never this process, a process of its own process group (helpers it started,
    such as py-spy) or pid <= 1.
    """
    me, group = os.getpid(), os.getpgrp()
    members: dict[int, Member] = {
        pid: (pid, start, True) for pid, start in workers if pid > 1 and pid != me
    }
    if root is None:
        return sorted(members.values())
    children: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = process_stat(int(name))
                if stat is not None and stat.state not in "ZXx":
                    children.setdefault(stat.ppid, []).append(int(name))
                    groups[int(name)] = stat.pgid
    todo = list(children.get(root, ()))
    if root != me:
        todo.append(root)
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
        if pid <= 1 or pid == me or groups.get(pid) == group or pid in members:
            continue
        members[pid] = (pid, None, False)
    return sorted(members.values())


class _Capture(threading.Thread):
    """Capture one process; what it found so far is kept under a lock, sealed at the budget."""

    def __init__(
        self,
        member: Member,
        *,
        deadline: float,
        stacks_dir: str | None,
        stack_signal: int,
        py_spy: PySpy | None,
        procfs: Procfs,
    ) -> None:
        super().__init__(name=f"snapshot-{member[0]}", daemon=True)
        self.pid, self.start_time, self.worker = member
        self.deadline = deadline
        self.stacks_dir = stacks_dir
        self.stack_signal = stack_signal
        self.py_spy = py_spy
        self.procfs = procfs
        self.began = time.monotonic()
        self.took: float | None = None
        self._lock = threading.Lock()
        self._sealed = False
        self._found: dict[str, Any] = {}

    def _keep(self, **found: Any) -> None:
        with self._lock:
            if not self._sealed:
                self._found.update(found)

    def run(self) -> None:
        try:
            self._capture()
        except Exception as exc:  # a capture must never take the reap down
            self._keep(reason=f"capture failed: {exc!r}")
        finally:
            with self._lock:
                if not self._sealed:
                    self.took = time.monotonic() - self.began

    def _capture(self) -> None:
        pid = self.pid
        stat = process_stat(pid)
        if stat is None or (self.start_time is not None and stat.start_time != self.start_time):
            self._keep(gone=True, reason="exited before the snapshot")
            return
        comm = (_read_text(f"/proc/{pid}/comm") or "").strip()
        self._keep(
            ppid=stat.ppid,
            state=stat.state,
            command=comm,
            labels=read_labels(pid),
            wchan=_wchan(pid),
        )
        reasons: list[str] = []
        if stat.state == "D":
            kernel, why = _kernel_stack(pid)
            self._keep(kernel_stack=kernel)
            if why is not None:
                reasons.append(why)
        if stat.state in "Tt":
            reasons.append(f"stopped (state {stat.state}): it cannot run a dump handler")
        elif self._from_handler(stat.start_time, reasons):
            return
        if self._from_py_spy(reasons):
            return
        self._keep(reason="; ".join(reasons))

    def _from_handler(self, start_time: int, reasons: list[str]) -> bool:
        """Ask the process's own handler for its stacks; ``True`` when that settled the capture."""
        name = signal_name(self.stack_signal)
        if self.stacks_dir is None:
            reasons.append("no stacks directory, so no dump handler to ask (run with --stacks)")
            return False
        path = stack_dump_path(self.stacks_dir, self.pid, start_time)
        if not os.path.isfile(path) or os.path.islink(path):
            reasons.append(f"no dump handler in this job's stacks directory (no {path})")
            return False
        try:
            target = Target(self.procfs, self.pid, start_time)
        except (ProcessGone, ProtectedProcess) as exc:
            reasons.append(f"not asked for a dump: {exc}")
            return False
        try:
            if not target.catches(self.stack_signal):
                reasons.append(f"no dump handler (it does not catch {name})")
                return False
            offset = file_size(path)
            target.send(self.stack_signal)
        except (ProcessGone, PermissionError) as exc:
            reasons.append(f"not asked for a dump: {exc}")
            return False
        finally:
            target.close()
        last, steady = -1, 0
        while time.monotonic() < self.deadline:
            size = file_size(path)
            steady = steady + 1 if size > offset and size == last else 0
            # Done when the dump stopped growing and the process went back to waiting
            # (one descheduled in the middle of its dump is runnable, R); a process
            # that keeps running is given STEADY_POLLS looks instead.
            if steady >= STEADY_POLLS or (steady and _state(self.pid) not in ("R", None)):
                threads = faulthandler_threads(read_from(path, offset))
                self._keep(threads=threads, source="handler")
                return True
            last = size
            time.sleep(POLL_STEP)
        self._keep(reason=f"no answer within budget: its handler did not dump after {name}")
        return True

    def _from_py_spy(self, reasons: list[str]) -> bool:
        """Take the stacks with py-spy; ``True`` when that settled the capture."""
        if self.py_spy is None:
            reasons.append("py-spy not used")
            return False
        program = self.py_spy.executable()
        if program is None:
            reasons.append("py-spy not found")
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            done = subprocess.run(
                [program, "dump", "--json", "--pid", str(self.pid)],
                capture_output=True,
                timeout=remaining,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            self._keep(reason="no answer within budget: py-spy did not finish")
            return True
        except OSError as exc:
            reasons.append(f"py-spy cannot run: {exc}")
            return False
        if done.returncode != 0:
            line = next(
                (ln for ln in done.stderr.decode("utf-8", "replace").splitlines() if ln.strip()),
                f"exit status {done.returncode}",
            )
            reasons.append(f"py-spy failed: {line.strip()}")
            return False
        try:
            threads = py_spy_threads(done.stdout)
        except msgspec.DecodeError as exc:
            reasons.append(f"py-spy output unreadable: {exc}")
            return False
        self._keep(threads=threads, source="py-spy")
        return True

    def seal(self, budget: float, expired: bool) -> ProcessSnapshot | None:
        """Return what was captured (``None``: the process was gone); nothing changes after."""
        with self._lock:
            self._sealed = True
            found = dict(self._found)
            took = self.took
        if found.pop("gone", False):
            return None
        answered = took is not None
        if not answered:
            found["reason"] = f"no answer within budget ({budget:g}s)"
            found.pop("threads", None)
            found.pop("source", None)
        elif str(found.get("reason", "")).startswith("no answer within budget"):
            answered = False
        return ProcessSnapshot(
            pid=self.pid,
            worker=self.worker,
            took=round(took if took is not None else budget, 4),
            answered=answered,
            expired=expired,
            **found,
        )


class JobCapture:
    """Capture ``members`` concurrently; poll it until done; the result is ready by ``deadline``.

    ``expire(pid, scope_id, expiration_time)`` records a worker whose timer expired;
    the earliest such timer names the culprit.
    """

    def __init__(
        self,
        members: list[Member],
        *,
        budget: float,
        stacks_dir: str | None,
        stack_signal: int,
        py_spy: PySpy | None,
        procfs: Procfs | None = None,
        wall_clock: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self.began = time.monotonic()
        self.deadline = self.began + budget
        self.budget = budget
        self.time = wall_clock()
        self.host = host or socket.gethostname()
        self._expired: dict[int, tuple[float, str]] = {}
        procfs = procfs if procfs is not None else Procfs()
        self._captures = [
            _Capture(
                member,
                deadline=self.deadline,
                stacks_dir=stacks_dir,
                stack_signal=stack_signal,
                py_spy=py_spy,
                procfs=procfs,
            )
            for member in members
        ]
        for capture in self._captures:
            capture.start()

    def expire(self, pid: int, scope_id: str, expiration_time: float) -> None:
        """Record that worker ``pid``'s timer ``scope_id`` expired at ``expiration_time`` (wall clock)."""
        known = self._expired.get(pid)
        if known is None or expiration_time < known[0]:
            self._expired[pid] = (expiration_time, scope_id)

    def done(self, now: float) -> bool:
        """Tell whether every capture has finished or the budget is over."""
        return now >= self.deadline or not any(c.is_alive() for c in self._captures)

    def result(self, now: float) -> JobSnapshot:
        """Return the snapshot: what answered, and the others marked ``no answer within budget``."""
        processes = [
            p
            for p in (c.seal(self.budget, c.pid in self._expired) for c in self._captures)
            if p is not None
        ]
        culprit: int | None = None
        scope_id: str | None = None
        expiration: float | None = None
        if self._expired:
            culprit, (expiration, scope_id) = min(
                self._expired.items(), key=lambda item: item[1][0]
            )
        return JobSnapshot(
            time=self.time,
            host=self.host,
            culprit=culprit,
            scope_id=scope_id,
            expiration_time=expiration,
            budget=self.budget,
            seconds=round(now - self.began, 4),
            processes=processes,
        )


def take_snapshot(
    members: list[Member],
    *,
    budget: float = DEFAULT_BUDGET,
    stacks_dir: str | None = None,
    stack_signal: int,
    py_spy: PySpy | None = None,
    host: str | None = None,
) -> JobSnapshot:
    """Capture ``members`` now and return the snapshot, within ``budget`` seconds (blocking)."""
    capture = JobCapture(
        members,
        budget=budget,
        stacks_dir=stacks_dir,
        stack_signal=stack_signal,
        py_spy=py_spy,
        host=host,
    )
    while not capture.done(time.monotonic()):
        time.sleep(POLL_STEP)
    return capture.result(time.monotonic())
