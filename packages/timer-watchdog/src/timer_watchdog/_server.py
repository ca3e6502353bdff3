"""WatchdogServer: the engine every transport feeds; it arms timers and reaps hung workers."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from timer_api import InvalidRequestError, RejectReason, RequestQueue, TimerRequest, TimerServer

from ._events import (
    Armed,
    Event,
    Exited,
    Expired,
    Rejected,
    Released,
    WatchdogStats,
)
from ._forensics import PySpy
from ._policy import WatchdogPolicy
from ._process import Procfs, is_protected
from ._reaper import Reap, Reaper
from ._table import Entry, TimerTable, Worker

__all__ = ["BULK_MIN", "SWEEP_INTERVAL", "WatchdogServer"]

logger = logging.getLogger("timer_watchdog")

#: Seconds between two checks that the known workers are still alive.
SWEEP_INTERVAL = 1.0

#: Requests in one ``register_timers`` call from which arming them at once is tried.
BULK_MIN = 64

_INF = math.inf
_DEAD_STATES = frozenset("ZXx")
_COUNTERS = (
    "received",
    "armed",
    "released",
    "rejected",
    "expired",
    "signalled",
    "reaped",
    "unkillable",
    "exited",
)


class WatchdogServer(TimerServer):
    """Arm timers from ``request_queue`` and reap every worker whose timer expires.

    Deadlines live on ``time.monotonic()``: a request's ``deadline`` is used as is,
    otherwise its wall-clock ``expiration_time`` is converted once, on receipt, with
    ``wall_clock``. The loop sleeps until the next deadline, escalation step or
    request; ``max_interval`` only caps one wait. A worker is ``(pid, start_time)``;
    requests naming a process that is not the requester, or that the server must not
    touch, are rejected with a reason (see ``timer_api.RejectReason``). ``policy``
    says how a hung worker is signalled (see :class:`WatchdogPolicy`).

    Every public method may be called from any thread while the loop runs.
    Callbacks given to :meth:`subscribe` run in the thread that caused the event
    (the loop, or the caller of :meth:`register_timers`), never under the server's
    lock; one that raises is logged and ignored.
    """

    def __init__(
        self,
        request_queue: RequestQueue,
        max_interval: float = 60.0,
        daemon: bool = True,
        *,
        policy: WatchdogPolicy | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if (
            isinstance(max_interval, bool)
            or not isinstance(max_interval, (int, float))
            or not 0 < max_interval < _INF
        ):
            raise ValueError(f"max_interval must be a finite number > 0, got {max_interval!r}")
        super().__init__(request_queue, max_interval, daemon)
        policy = policy if policy is not None else WatchdogPolicy()
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._reap_lock = threading.RLock()
        self._table = TimerTable()
        self._reaps: dict[int, Reap] = {}
        self._subscribers: tuple[Callable[[Event], None], ...] = ()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        #: Rejection reasons already logged at warning level.
        self._warned: set[RejectReason] = set()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        self._policy = policy
        self._reaper = Reaper(
            policy,
            Procfs(),
            emit=self._emit,
            count=self._count,
            wall_clock=wall_clock,
            py_spy=PySpy(),
        )

    @property
    def policy(self) -> WatchdogPolicy:
        """The policy this server reaps by (fixed for the server's life)."""
        return self._policy

    @property
    def _procfs(self) -> Procfs:
        """The process reader (replaceable, for tests that simulate process states)."""
        return self._reaper.procfs

    @_procfs.setter
    def _procfs(self, procfs: Procfs) -> None:
        self._reaper.procfs = procfs

    # -- events and counters ------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` with every event from now on; return a function that unsubscribes."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                subscribers = list(self._subscribers)
                if callback in subscribers:
                    subscribers.remove(callback)
                    self._subscribers = tuple(subscribers)

        return unsubscribe

    def _emit(self, event: Event) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                logger.exception("event callback %r raised; ignored", callback)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def stats(self) -> WatchdogStats:
        """Return the cumulative counters and what the server holds now."""
        with self._lock:
            return WatchdogStats(
                **self._counts,
                timers=self._table.timers,
                workers=len(self._table),
                reaping=len(self._reaps),
            )

    # -- requests -----------------------------------------------------------------

    def register_timers(self, timer_requests: list[TimerRequest]) -> None:
        """Arm, re-arm or release (negative ``expiration_time``) the requested timers.

        A request that cannot be accepted is rejected (counted, logged, reported as a
        ``rejected`` event) without disturbing the others.
        """
        if len(timer_requests) >= BULK_MIN and TimerTable.may_arm_like(timer_requests):
            timer_requests = self._register_like_first(timer_requests)
        subscribed = bool(self._subscribers)
        events: list[Event] = []
        rejected: list[tuple[InvalidRequestError, Any]] = []
        with self._lock:
            table = self._table
            get_worker = table.get
            arm = table.arm
            mono = time.monotonic()
            offset = mono - self._wall_clock()
            n_armed = n_released = 0
            for request in timer_requests:
                try:
                    pid = request.worker_id
                    scope = request.scope_id
                    expiration = request.expiration_time
                    start_time = request.start_time
                    worker = get_worker(pid)
                    if expiration < 0:
                        if (
                            worker is not None
                            and (start_time is None or start_time == worker.start_time)
                            and table.release(worker, scope)
                        ):
                            n_released += 1
                            if subscribed:
                                events.append(Released(time=mono - offset, pid=pid, scope_id=scope))
                        continue
                    deadline = request.deadline
                    if deadline is None:
                        deadline = expiration + offset
                    if not (-_INF < deadline < _INF and expiration < _INF):
                        raise InvalidRequestError(
                            RejectReason.NON_FINITE,
                            f"deadline {deadline!r}, expiration_time {expiration!r}",
                        )
                    signum = request.signal
                    if type(scope) is not str or (
                        type(signum) is not int
                        and (not isinstance(signum, int) or isinstance(signum, bool))
                    ):
                        raise InvalidRequestError(
                            RejectReason.WRONG_TYPE,
                            f"scope_id {type(scope).__name__}, signal {type(signum).__name__}",
                        )
                    if not 0 <= signum <= 64:
                        raise InvalidRequestError(
                            RejectReason.OUT_OF_RANGE, f"signal {signum} not in 0..64"
                        )
                    if worker is None or (
                        start_time is not None and start_time != worker.start_time
                    ):
                        worker = self._admit(request, worker, events)
                    arm(worker, scope, deadline, request)
                    n_armed += 1
                    if subscribed:
                        events.append(
                            Armed(
                                time=mono - offset,
                                pid=pid,
                                scope_id=scope,
                                expires_in=deadline - mono,
                                signal=signum,
                                thread_id=request.thread_id,
                            )
                        )
                except InvalidRequestError as error:
                    rejected.append((error, request))
                except (TypeError, AttributeError, ValueError) as exc:
                    reason = (
                        RejectReason.WRONG_OBJECT
                        if isinstance(exc, AttributeError)
                        else RejectReason.WRONG_TYPE
                    )
                    rejected.append((InvalidRequestError(reason, str(exc)), request))
            counts = self._counts
            counts["received"] += len(timer_requests)
            counts["armed"] += n_armed
            counts["released"] += n_released
        for refusal, refused in rejected:
            self._refuse(refusal, refused)
        for event in events:
            self._emit(event)

    def _register_like_first(self, timer_requests: list[TimerRequest]) -> list[TimerRequest]:
        """Register the first request, then the rest at once if they are like it; return what is left.

        A large batch of new timers from one worker (what a transport decodes, or a
        direct call) is checked and armed in a few passes in C instead of request by
        request; any batch the table cannot arm that way is left to the caller, whole.
        """
        head = timer_requests[0]
        self.register_timers([head])
        rest = timer_requests[1:]
        with self._lock:
            worker = self._table.get(getattr(head, "worker_id", None))  # type: ignore[arg-type]
            if worker is None:
                return rest
            mono = time.monotonic()
            wall = self._wall_clock()
            armed = self._table.arm_like(worker, head, rest, mono - wall)
            if armed is None:
                return rest
            self._counts["received"] += len(rest)
            self._counts["armed"] += len(rest)
        if self._subscribers:
            pid, signum, thread_id = worker.pid, head.signal, head.thread_id
            for scope, deadline in zip(*armed, strict=True):
                self._emit(
                    Armed(
                        time=wall,
                        pid=pid,
                        scope_id=scope,
                        expires_in=deadline - mono,
                        signal=signum,
                        thread_id=thread_id,
                    )
                )
        return []

    def _admit(self, request: TimerRequest, known: Worker | None, events: list[Event]) -> Worker:
        """Prove who sent ``request`` and start tracking it; raise ``InvalidRequestError`` if not.

        Called with the lock held, for a pid not known yet or a start time that differs
        from the pinned one.
        """
        pid = request.worker_id
        if type(pid) is not int:
            raise InvalidRequestError(RejectReason.WRONG_TYPE, f"pid {pid!r} is not an int")
        if pid <= 0:
            raise InvalidRequestError(RejectReason.BAD_PID, f"pid {pid} is not positive")
        if is_protected(pid):
            raise InvalidRequestError(
                RejectReason.PROTECTED_PID,
                f"pid {pid} is pid 1, the server or the server's process group",
            )
        procfs = self._reaper.procfs
        stat = procfs.stat(pid)
        if stat is None or stat[0] in _DEAD_STATES:
            raise InvalidRequestError(RejectReason.NO_SUCH_PROCESS, f"pid {pid} does not exist")
        actual = stat[1]
        claimed = request.start_time
        if claimed is not None and claimed != actual:
            raise InvalidRequestError(
                RejectReason.PID_REUSED,
                f"pid {pid} started at {actual}, the request says {claimed}",
            )
        status = procfs.status(pid)
        if status is None:
            raise InvalidRequestError(RejectReason.NO_SUCH_PROCESS, f"pid {pid} does not exist")
        if not self.policy.allow_other_users and not procfs.same_user(status):
            raise InvalidRequestError(
                RejectReason.OTHER_USER,
                f"pid {pid} belongs to uid {status.uids[0]}, not to this server's user",
            )
        if known is not None:
            # The pinned process is gone and its pid now names the requester.
            old = self._table.drop_worker(pid)
            assert old is not None
            self._counts["exited"] += 1
            events.append(
                Exited(
                    time=self._wall_clock(),
                    pid=pid,
                    timers=len(old),
                    detail="pid reused by a new worker",
                )
            )
        return self._table.add_worker(pid, actual)

    def _reject(self, error: InvalidRequestError) -> None:
        """Count and report an item of a batch that is not a valid request."""
        self._count("received")
        self._refuse(error, None)

    def _refuse(self, error: InvalidRequestError, request: Any) -> None:
        """Count, log and report ``error``; ``request`` is what it refuses (``None``: unknown)."""
        self._count("rejected")
        pid = getattr(request, "worker_id", None)
        scope = getattr(request, "scope_id", None)
        if error.reason in self._warned:
            logger.debug("rejected timer request: %s", error)
        else:
            self._warned.add(error.reason)
            logger.warning("rejected timer request: %s (more like it are logged at debug)", error)
        self._emit(
            Rejected(
                time=self._wall_clock(),
                reason=error.reason,
                detail=error.detail,
                pid=pid if type(pid) is int else None,
                scope_id=scope if type(scope) is str else None,
            )
        )

    def clear_timers(self, worker_ids: set[int]) -> None:
        """Forget every timer of the given workers, and stop reaping them."""
        self._clear(worker_ids, None)

    def _clear(self, worker_ids: Iterable[int], start_times: dict[int, int] | None) -> None:
        """Drop workers (only those with the given start time, if one is given for a pid)."""
        done: list[Reap] = []
        with self._lock:
            for pid in worker_ids:
                start_time = None if start_times is None else start_times.get(pid)
                worker = self._table.get(pid)
                if worker is not None and start_time in (None, worker.start_time):
                    self._table.drop_worker(pid)
                reap = self._reaps.get(pid)
                if reap is not None and start_time in (None, reap.start_time):
                    done.append(self._reaps.pop(pid))
        if done:
            with self._reap_lock:
                for reap in done:
                    reap.close()

    def get_expired_timers(self, deadline: float) -> dict[int, list[TimerRequest]]:
        """Return the held timers whose deadline is before ``deadline`` (``time.time()`` seconds), by pid."""
        with self._lock:
            mono = time.monotonic() + (deadline - self._wall_clock())
            build = self._table.due(mono)
        return build()

    # -- reaping ------------------------------------------------------------------

    def _reap_worker(self, worker_id: int) -> bool:
        """Advance the reap of ``worker_id`` by what is due now; ``False``: call again later."""
        with self._reap_lock:
            now = time.monotonic()
            with self._lock:
                reap = self._reaps.get(worker_id)
                if reap is None:
                    worker = self._table.get(worker_id)
                    if worker is None:
                        return True
                    table = self._table
                    entries = table.expired_entries(worker) or table.armed_entries(worker)
                    reap = self._reaps[worker_id] = self._new_reap(worker, entries, now)
            done = self._reaper.step(reap, now)
            if done:
                reap.close()
            return done

    def _new_reap(self, worker: Worker, entries: list[Entry], now: float) -> Reap:
        first = min(entries, key=lambda entry: entry[0])
        signum = next(
            (entry[2].signal for entry in sorted(entries) if entry[2].signal > 0),
            self.policy.signal,
        )
        signum = int(signum)
        request = first[2]
        return Reap(
            worker.pid,
            worker.start_time,
            scope_id=request.scope_id,
            deadline=first[0],
            signal=signum,
            thread_id=request.thread_id,
            timers=len(worker),
            now=now,
        )

    def _expire(self, now: float) -> None:
        """Move timers past their deadline into reaps; drop the timers of workers that exited."""
        with self._lock:
            entries = self._table.pop_expired(now)
            if not entries:
                return
            by_pid: dict[int, list[Entry]] = {}
            for entry in entries:
                by_pid.setdefault(entry[2].worker_id, []).append(entry)
            fresh: list[Reap] = []
            for pid, mine in by_pid.items():
                if pid not in self._reaps:
                    worker = self._table.get(pid)
                    assert worker is not None
                    reap = self._reaps[pid] = self._new_reap(worker, mine, now)
                    fresh.append(reap)
        procfs = self._reaper.procfs
        gone = {reap.pid for reap in fresh if procfs.liveness(reap.pid, reap.start_time) is None}
        expired = 0
        wall = self._wall_clock()
        for pid, mine in by_pid.items():
            if pid in gone:
                continue
            expired += len(mine)
            if self._subscribers:
                for deadline, _, request in mine:
                    self._emit(
                        Expired(
                            time=wall,
                            pid=pid,
                            scope_id=request.scope_id,
                            late=now - deadline,
                            expiration_time=request.expiration_time,
                            signal=request.signal,
                            thread_id=request.thread_id,
                        )
                    )
        self._count("expired", expired)
        for reap in fresh:
            if reap.pid in gone:
                self._drop_exited(reap.pid, reap.start_time, "exited before its timer expired")

    def _drop_exited(self, pid: int, start_time: int, detail: str) -> None:
        with self._lock:
            worker = self._table.get(pid)
            if worker is None or worker.start_time != start_time:
                return
            self._table.drop_worker(pid)
            reap = self._reaps.get(pid)
            if reap is not None and reap.start_time == start_time:
                del self._reaps[pid]
            held = len(worker)
            if held:
                self._counts["exited"] += 1
        if reap is not None:
            with self._reap_lock:
                reap.close()
        if held:
            logger.info("worker %d exited holding %d timer(s); dropped them", pid, held)
            self._emit(Exited(time=self._wall_clock(), pid=pid, timers=held, detail=detail))

    def _sweep(self) -> None:
        """Drop the timers of every known worker that has exited (reaps excluded)."""
        with self._lock:
            workers = [(w.pid, w.start_time) for w in self._table if w.pid not in self._reaps]
        procfs = self._reaper.procfs
        for pid, start_time in workers:
            if procfs.liveness(pid, start_time) is None:
                self._drop_exited(pid, start_time, "exited while its timers were armed")

    # -- the loop -----------------------------------------------------------------

    def _wait_timeout(self) -> float:
        """Return how long the next round may wait: until the next deadline, step or sweep."""
        with self._lock:
            now = time.monotonic()
            wake = now + self._max_interval
            deadline = self._table.next_deadline()
            if deadline is not None:
                wake = min(wake, deadline)
            for reap in self._reaps.values():
                wake = min(wake, reap.due)
            if len(self._table):
                wake = min(wake, self._next_sweep)
        return max(0.0, wake - now)

    def _run_watchdog(self) -> None:
        """Run one round: take a batch, register it, reap what is due, clear the reaped."""
        timeout = self._wait_timeout()
        try:
            requests = self._take_batch(timeout)
        except Exception:
            logger.exception("reading the request queue failed; retrying")
            time.sleep(min(timeout, 0.05))
            requests = []
        if requests:
            self.register_timers(requests)
        now = time.monotonic()
        self._expire(now)
        with self._lock:
            due = {pid: r.start_time for pid, r in self._reaps.items() if r.due <= now}
            reaped_before = self._counts["reaped"]
        if due:
            finished = {pid: start for pid, start in due.items() if self._reap_worker_no_throw(pid)}
            if finished:
                self._clear(finished, finished)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._sweep()
        if self.policy.exit_on_reap and self._counts["reaped"] > reaped_before:
            logger.warning("exit_on_reap: killing the server process %d", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
