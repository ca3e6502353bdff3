"""Escalate against one hung worker at a time, step by step, never blocking the loop.

A reap goes through these phases; each :meth:`Reaper.step` does what is due now and
says when to be called again:

0. ``snapshot`` (only with ``job_snapshot``, at the server's first expiry): capture
   every live process of the job in the background (see :class:`JobCapture`); every
   reap that starts meanwhile waits for it, never past ``snapshot_budget``, then takes
   its worker's stack from the snapshot and skips ``stack`` (unless ``py_spy`` asks
   for py-spy's dump of the worker, which then follows).
1. ``stack`` (only with ``stacks_dir`` or ``py_spy``): ask for a stack dump, wait up to
   ``stack_wait`` for it.
2. ``first``: send the first signal (chosen by the server, see ``WatchdogServer``). A
   signal not meant to end the process (see :data:`~timer_watchdog.TERMINATING_SIGNALS`)
   is sent once and the reap ends there (``notified``): the worker was told, not killed.
3. ``grace`` (only when ``grace > 0`` and the first signal is not SIGKILL): wait for
   the worker to die; when the grace is over, send SIGKILL.
4. ``confirm``: wait for death (the pidfd readable: every thread has exited). After
   ``kill_timeout`` the worker is reported ``unkillable`` with its /proc state and
   the final signal is sent again; this repeats until it dies or is cleared.

Without escalation (``grace == 0``) the first signal is also the final one.

Every signal goes through the worker's :class:`Target`, opened when the server
admitted the worker and owned (and closed) by the server, never by the reap.
"""

from __future__ import annotations

import logging
import signal as _signal
from collections.abc import Callable

from timer_api import signal_name, stack_dump_path

from ._events import Event, Exited, Frame, JobSnapshot, Reaped, Signalled, Unkillable
from ._forensics import POLL_STEP, PySpy, StackRequest, own_frame
from ._jobreport import process_frame
from ._policy import WatchdogPolicy, is_terminating
from ._process import ProcessGone, Procfs, Target
from ._snapshot import JobCapture, job_members

__all__ = ["Reap", "Reaper"]

logger = logging.getLogger("timer_watchdog")
#: Log lines that repeat a ``signalled`` or ``unkillable`` event, for users without a
#: subscriber; the command, which prints events itself, silences this logger.
reaping_logger = logging.getLogger("timer_watchdog.reaping")

#: First and largest pause between two checks for death.
FIRST_POLL = 0.002
MAX_POLL = 0.05

_NEW, _STACK, _FIRST, _GRACE, _CONFIRM, _SNAPSHOT = range(6)


class Reap:
    """The escalation state of one worker."""

    __slots__ = (
        "deadline",
        "due",
        "frame",
        "held",
        "last_signal",
        "notified",
        "phase",
        "pid",
        "poll",
        "scope_id",
        "signal",
        "stack",
        "stack_path",
        "start_time",
        "target",
        "thread_id",
        "timers",
        "until",
    )

    def __init__(
        self,
        pid: int,
        start_time: int,
        target: Target | None,
        *,
        scope_id: str,
        deadline: float,
        signal: int,
        thread_id: int | None,
        timers: int,
        now: float,
    ) -> None:
        self.pid = pid
        self.start_time = start_time
        #: The earliest expired timer: what events name.
        self.scope_id = scope_id
        self.deadline = deadline
        self.thread_id = thread_id
        #: The first signal to send.
        self.signal = signal
        #: How many timers the worker held when the reap began.
        self.timers = timers
        self.phase = _NEW
        #: When :meth:`Reaper.step` should run next (monotonic).
        self.due = now
        self.until = now
        self.poll = FIRST_POLL
        self.last_signal = 0
        #: The worker's handle, owned by the server; ``None``: nothing may be signalled.
        self.target = target
        #: Whether the reap ended by notifying the worker (a non-terminating signal).
        self.notified = False
        self.stack: StackRequest | None = None
        self.stack_path: str | None = None
        self.frame: Frame | None = None
        #: Seconds the first signal waited for the job snapshot.
        self.held = 0.0


class Reaper:
    """Advance reaps according to a policy, reporting through ``report``.

    ``report(counter, event)`` adds one to the named counter (``None``: none) and
    delivers ``event``, as one step that a reader of the counters cannot split.
    ``workers()`` returns the ``(pid, start_time)`` of every worker the server knows
    (for the job snapshot).
    """

    def __init__(
        self,
        policy: WatchdogPolicy,
        *,
        report: Callable[[str | None, Event], None],
        wall_clock: Callable[[], float],
        py_spy: PySpy,
        workers: Callable[[], list[tuple[int, int]]] = list,
        procfs: Procfs | None = None,
    ) -> None:
        self.policy = policy
        self._report = report
        self._wall = wall_clock
        self._py_spy = py_spy
        self._workers = workers
        self._procfs = procfs
        #: The job snapshot under way, and whether one was taken (once per server).
        self._capture: JobCapture | None = None
        self._snapshot_taken = False
        self._snapshot_result: JobSnapshot | None = None
        #: When the reaps waiting for the snapshot look at it next: one time for all, so
        #: that they all go on to their first signal in the same round of the engine
        #: (a job's shell must not outlive its killed children long enough to go on).
        self._capture_due = 0.0
        self._capture_ready = False

    def _start(self, reap: Reap, now: float) -> bool:
        """Leave the snapshot phase: ask for the stack or go on to the first signal."""
        reap.phase = _STACK if self.policy.stacks_dir or self.policy.py_spy else _FIRST
        if reap.phase == _STACK:
            assert reap.target is not None
            try:
                reap.stack = StackRequest(
                    reap.target,
                    stacks_dir=self.policy.stacks_dir,
                    stack_signal=self.policy.stack_signal,
                    wait=self.policy.stack_wait,
                    thread_id=reap.thread_id,
                    py_spy=self._py_spy if self.policy.py_spy else None,
                    now=now,
                )
            except ProcessGone as gone:
                return self._exited(reap, str(gone))
        return False

    def _snapshot(self, reap: Reap, now: float) -> bool:
        """Wait for the job snapshot (starting it at the first expiry); ``True``: still waiting."""
        policy = self.policy
        if reap.phase == _NEW:
            if not policy.job_snapshot or (self._snapshot_taken and self._capture is None):
                return False
            if self._capture is None:
                self._snapshot_taken = True
                self._capture = JobCapture(
                    job_members(policy.descendants_of, self._workers()),
                    budget=policy.snapshot_budget,
                    stacks_dir=policy.stacks_dir,
                    stack_signal=policy.stack_signal,
                    # Asked for or not, py-spy stands in for a missing handler, quietly.
                    py_spy=self._py_spy if policy.py_spy else PySpy(quiet=True),
                    procfs=self._procfs,
                    wall_clock=self._wall,
                )
            self._capture.expire(reap.pid, reap.scope_id, self._wall() - (now - reap.deadline))
            reap.phase = _SNAPSHOT
            reap.held = now
        capture = self._capture
        if capture is not None:
            if now >= self._capture_due:  # one look, shared by every reap that waits
                self._capture_ready = capture.done(now)
                if not self._capture_ready:
                    self._capture_due = min(now + POLL_STEP, capture.deadline)
            if not self._capture_ready:
                reap.due = self._capture_due
                return True
            self._capture = None
            self._snapshot_result = capture.result(now)
            self._report(None, self._snapshot_result)
        reap.held = now - reap.held
        return False

    def _from_snapshot(self, reap: Reap) -> None:
        """Take the reaped worker's stack from the snapshot it waited for; go on to the first signal.

        The snapshot already asked it (within the budget), so it is not asked again:
        the first signal never waits longer than the budget.
        """
        reap.phase = _FIRST
        snapshot = self._snapshot_result
        found = None
        if snapshot is not None:
            found = next((p for p in snapshot.processes if p.pid == reap.pid), None)
        if found is None or not found.threads:
            return
        thread = next((t for t in found.threads if t.ident == reap.thread_id), None)
        if thread is not None:
            reap.frame = own_frame(thread.frames)
        else:
            reap.frame = process_frame(found)
        if found.source == "handler" and self.policy.stacks_dir is not None:
            reap.stack_path = stack_dump_path(self.policy.stacks_dir, reap.pid, reap.start_time)

    def step(self, reap: Reap, now: float) -> bool:
        """Do what is due for ``reap``; return ``True`` when it is over (its timers can go)."""
        if reap.phase == _NEW and reap.target is None:
            logger.error("not reaping worker %d: it may not be signalled", reap.pid)
            return True
        if reap.phase in (_NEW, _SNAPSHOT):
            waited = reap.phase == _SNAPSHOT
            if self._snapshot(reap, now):
                return False
            if waited and not self.policy.py_spy:
                self._from_snapshot(reap)
                target = reap.target
                if reap.stack_path is not None and target is not None and target.state() is None:
                    # A dump handler chained to the signal's default action ends the worker.
                    reap.last_signal = self.policy.stack_signal
                    return self._reaped(reap, now, "died on the stack-dump signal")
            elif self._start(reap, now):
                return True
        target = reap.target
        assert target is not None
        if reap.phase == _STACK:
            assert reap.stack is not None
            again = reap.stack.poll(now)
            if again is not None:
                reap.due = again
                return False
            reap.stack_path, reap.frame = reap.stack.result()
            asked = reap.stack.path is not None
            reap.stack = None
            reap.phase = _FIRST
            if target.state() is None:
                if not asked:
                    return self._exited(reap, "exited before it was signalled")
                # A dump handler chained to the signal's default action ends the worker.
                reap.last_signal = self.policy.stack_signal
                return self._reaped(reap, now, "died on the stack-dump signal")
        if reap.phase == _FIRST:
            return self._first(reap, target, now)
        state = target.state()
        if state is None:
            return self._reaped(reap, now)
        if now >= reap.until:
            if reap.phase == _GRACE:
                reap.phase = _CONFIRM
                if not self._send(reap, target, _signal.SIGKILL, "escalation", now):
                    return self._reaped(reap, now)
            else:
                late = now - reap.deadline
                detail = (
                    f"alive {self.policy.kill_timeout:g}s after {signal_name(reap.last_signal)}"
                )
                reaping_logger.error(
                    "worker %d is unkillable: %s, state %s", reap.pid, detail, state
                )
                self._report(
                    "unkillable",
                    Unkillable(
                        time=self._wall(),
                        pid=reap.pid,
                        scope_id=reap.scope_id,
                        signal=reap.last_signal,
                        late=late,
                        state=state,
                        detail=detail,
                    ),
                )
                if not self._send(reap, target, reap.last_signal, "retry", now):
                    return self._reaped(reap, now)
            reap.until = now + self.policy.kill_timeout
            reap.poll = FIRST_POLL
        self._schedule(reap, now)
        return False

    def _first(self, reap: Reap, target: Target, now: float) -> bool:
        if target.state() is None:
            return self._exited(reap, "exited before it was signalled")
        signum = reap.signal
        notify = not is_terminating(signum)
        if not self._send(reap, target, signum, "notify" if notify else "first", now):
            return self._exited(reap, "exited before it was signalled")
        if notify:
            reap.notified = True
            return True
        grace = self.policy.grace
        if signum == _signal.SIGKILL or grace <= 0:
            reap.phase = _CONFIRM
            reap.until = now + self.policy.kill_timeout
        else:
            reap.phase = _GRACE
            reap.until = now + grace
        self._schedule(reap, now)
        return False

    def _schedule(self, reap: Reap, now: float) -> None:
        reap.due = min(now + reap.poll, reap.until)
        reap.poll = min(reap.poll * 2, MAX_POLL)

    def _send(self, reap: Reap, target: Target, signum: int, why: str, now: float) -> bool:
        """Send ``signum``; return ``False`` if the worker turned out to be gone."""
        try:
            target.send(signum)
        except ProcessGone:
            return False
        except PermissionError as exc:
            # Nothing is sent; the confirm phase reports the worker and tries again.
            logger.error("cannot signal worker %d: %s", reap.pid, exc)
            reap.last_signal = signum
            return True
        reap.last_signal = signum
        late = now - reap.deadline
        held, reap.held = reap.held, 0.0
        reaping_logger.warning(
            "sent %s to worker %d (%s, timer %r, %.3fs late)",
            signal_name(signum),
            reap.pid,
            why,
            reap.scope_id,
            late,
        )
        self._report(
            "signalled",
            Signalled(
                time=self._wall(),
                pid=reap.pid,
                scope_id=reap.scope_id,
                signal=signum,
                late=late,
                detail=why,
                held=round(held, 4),
            ),
        )
        return True

    def _reaped(self, reap: Reap, now: float, detail: str = "") -> bool:
        self._report(
            "reaped",
            Reaped(
                time=self._wall(),
                pid=reap.pid,
                scope_id=reap.scope_id,
                signal=reap.last_signal,
                late=now - reap.deadline,
                detail=detail or f"died after {signal_name(reap.last_signal)}",
                stack_path=reap.stack_path,
                frame=reap.frame,
            ),
        )
        return True

    def _exited(self, reap: Reap, detail: str) -> bool:
        self._report(
            "exited", Exited(time=self._wall(), pid=reap.pid, timers=reap.timers, detail=detail)
        )
        return True
