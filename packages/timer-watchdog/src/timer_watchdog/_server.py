"""WatchdogServer: the engine every transport feeds; it arms timers and reaps hung workers."""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from timer_api import (
    InvalidRequestError,
    RejectReason,
    RequestQueue,
    TimerRequest,
    TimerServer,
    check_request,
    process_stat,
)

from ._events import (
    Armed,
    ClockSkew,
    Event,
    Exited,
    Expired,
    LoopHealth,
    Rejected,
    Released,
    WatchdogStats,
)
from ._forensics import PySpy
from ._policy import WatchdogPolicy
from ._process import PidReused, ProcessGone, Procfs, Target, is_protected
from ._reaper import Reap, Reaper
from ._table import Entry, TimerTable, Worker

__all__ = [
    "BULK_MIN",
    "CLOCK_TOLERANCE",
    "GONE_KEPT",
    "REAP_RETRY",
    "SWEEP_INTERVAL",
    "WatchdogServer",
]

logger = logging.getLogger("timer_watchdog")

#: Seconds between two checks that the known workers are still alive.
SWEEP_INTERVAL = 1.0
#: Largest disagreement, in seconds, between a request's monotonic ``deadline`` and
#: the one its wall-clock ``expiration_time`` gives, before the latter is used.
CLOCK_TOLERANCE = 1.0
#: Seconds before a reap step that failed (an error, not the worker) is tried again.
REAP_RETRY = 0.1
#: Requests in one ``register_timers`` call from which arming them at once is tried.
BULK_MIN = 64

_INF = math.inf
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
    "clock_skew",
    "late",
    "loops",
)
#: Identities of forgotten workers remembered, to know their late requests.
GONE_KEPT = 4096


class _Late(Exception):  # noqa: N818 - a state, not an error
    """A request its process sent before it exited: nothing left to watch, nothing wrong."""


class _Batch:
    """What one ``register_timers`` call has done so far: its clock, events and counts."""

    __slots__ = (
        "armed",
        "events",
        "forgotten",
        "last_seen",
        "late",
        "mono",
        "offset",
        "released",
        "seen",
        "skewed",
        "subscribed",
    )

    def __init__(self, subscribed: bool) -> None:
        #: Whether anyone receives ``armed`` and ``released`` events.
        self.subscribed = subscribed
        self.events: list[Event] = []
        #: ``time.monotonic()`` when the batch started, and monotonic minus wall clock.
        self.mono = 0.0
        self.offset = 0.0
        self.armed = self.released = self.skewed = self.late = 0
        #: Known workers whose pidfd was checked in this batch (and the last one).
        self.seen: set[int] = set()
        self.last_seen = 0
        #: Whether a worker was forgotten (its handle is to be closed).
        self.forgotten = False


def _check_each(
    requests: list[Any],
) -> tuple[list[TimerRequest], list[tuple[InvalidRequestError, Any]]]:
    """Split ``requests`` into those the schema accepts and the others with their errors."""
    valid: list[TimerRequest] = []
    rejected: list[tuple[InvalidRequestError, Any]] = []
    for request in requests:
        try:
            valid.append(check_request(request))
        except InvalidRequestError as error:
            rejected.append((error, request))
    return valid, rejected


def _unreadable(pid: int, exc: PermissionError) -> InvalidRequestError:
    """Return the refusal of a process whose /proc files this server may not read.

    /proc hides them (``hidepid``) from all but their owner: another user's process,
    whose identity the server cannot prove.
    """
    return InvalidRequestError(
        RejectReason.OTHER_USER,
        f"pid {pid}: its /proc files cannot be read ({exc.strerror}): another user's process",
    )


def _deadline(batch: _Batch, request: TimerRequest) -> float:
    """Return the monotonic deadline to arm ``request`` by.

    Its own ``deadline``, unless that disagrees by more than :data:`CLOCK_TOLERANCE`
    with its ``expiration_time`` converted on receipt (a worker in another time
    namespace: its monotonic clock is not ours); then the conversion, and a
    ``clock_skew`` event says so.
    """
    converted = request.expiration_time + batch.offset
    deadline = request.deadline
    if deadline is None:
        return converted
    if -CLOCK_TOLERANCE <= deadline - converted <= CLOCK_TOLERANCE:
        return deadline
    batch.skewed += 1
    batch.events.append(
        ClockSkew(
            time=batch.mono - batch.offset,
            pid=request.worker_id,
            scope_id=request.scope_id,
            skew=deadline - converted,
        )
    )
    return converted


class WatchdogServer(TimerServer):
    """Arm timers from ``request_queue`` and reap every worker whose timer expires.

    Deadlines live on ``time.monotonic()``: a request's ``deadline`` is used as is
    unless it disagrees by more than :data:`CLOCK_TOLERANCE` with its wall-clock
    ``expiration_time`` converted on receipt with ``wall_clock`` (a worker in another
    time namespace); then the conversion is used and a ``clock_skew`` event says so.
    The loop sleeps until the next deadline, escalation step or request;
    ``max_interval`` only caps one wait.

    A worker is admitted once: the server opens a pidfd on it, proves it is the
    process the request names (and that the server may touch it) or rejects the
    request with a reason (see ``timer_api.RejectReason``), and from then on signals
    it only through that pidfd. The server's own process is admitted but never
    signalled. ``policy`` says how a hung worker is signalled (see
    :class:`WatchdogPolicy`); ``procfs`` is the process reader (tests pass one that
    simulates states that cannot be produced on demand).

    Every public method may be called from any thread while the loop runs. The
    counters of :meth:`stats` and the events agree at every instant: a counter is
    updated and its event delivered as one step. Callbacks given to
    :meth:`subscribe` run in the thread that caused the event (the loop, or the
    caller of :meth:`register_timers`) one at a time, never under the lock that
    guards the timers; one that raises is logged and ignored.
    """

    def __init__(
        self,
        request_queue: RequestQueue,
        max_interval: float = 60.0,
        daemon: bool = True,
        *,
        policy: WatchdogPolicy | None = None,
        wall_clock: Callable[[], float] = time.time,
        procfs: Procfs | None = None,
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
        self._procfs = procfs if procfs is not None else Procfs()
        # Lock order: _reap_lock, then _report_lock, then _lock.
        #: Guards the table, the reaps, the handles and the counters.
        self._lock = threading.Lock()
        #: Held while a reap step or a liveness check uses a handle; handles close under it.
        self._reap_lock = threading.RLock()
        #: Makes a counter update and the delivery of its events one step.
        self._report_lock = threading.RLock()
        self._table = TimerTable()
        self._reaps: dict[int, Reap] = {}
        #: The pidfd handle of every admitted worker but the server's own process.
        self._handles: dict[int, Target] = {}
        #: Handles of forgotten workers, closed as soon as no reap step can use them.
        self._closing: list[Target] = []
        #: Start time of the last worker of each pid forgotten once it had exited (the
        #: latest GONE_KEPT): a request that names it, when no live process does, came
        #: late from that worker.
        self._gone: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._subscribers: tuple[Callable[[Event], None], ...] = ()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        #: Rejection reasons already logged at warning level.
        self._warned: set[RejectReason] = set()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        #: The thread running the loop (``None``: not running) and when its round began.
        self._loop_thread: threading.Thread | None = None
        self._busy_since = 0.0
        #: The batch the loop is registering, if its queue checked its requests already.
        self._checked_batch: list[TimerRequest] | None = None
        self._policy = policy
        self._reaper = Reaper(
            policy,
            report=self._report,
            wall_clock=wall_clock,
            py_spy=PySpy(),
            workers=self._known_workers,
            procfs=self._procfs,
        )

    def _known_workers(self) -> list[tuple[int, int]]:
        """Return the ``(pid, start_time)`` of every worker known now (for the job snapshot)."""
        with self._lock:
            return [(w.pid, w.start_time) for w in self._table]

    @property
    def policy(self) -> WatchdogPolicy:
        """The policy this server reaps by (fixed for the server's life)."""
        return self._policy

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

    def _deliver(self, events: Iterable[Event]) -> None:
        for event in events:
            for callback in self._subscribers:
                try:
                    callback(event)
                except Exception:
                    logger.exception("event callback %r raised; ignored", callback)

    def _report(self, counter: str | None, event: Event) -> None:
        """Add one to ``counter`` (``None``: none) and deliver ``event``, as one step."""
        with self._report_lock:
            if counter is not None:
                with self._lock:
                    self._counts[counter] += 1
            self._deliver((event,))

    def _report_all(self, counts: dict[str, int], events: list[Event]) -> None:
        """Add ``counts`` to the counters and deliver ``events``, as one step."""
        with self._report_lock:
            with self._lock:
                for name, n in counts.items():
                    self._counts[name] += n
            self._deliver(events)

    def stats(self) -> WatchdogStats:
        """Return the cumulative counters and what the server holds now."""
        with self._report_lock, self._lock:
            return WatchdogStats(
                **self._counts,
                timers=self._table.timers,
                workers=len(self._table),
                reaping=len(self._reaps),
            )

    def loop_health(self) -> LoopHealth:
        """Return whether the loop runs, how long its current round has been busy, how many ran."""
        thread = self._loop_thread
        since = self._busy_since
        return LoopHealth(
            running=thread is not None and thread.is_alive(),
            busy_for=max(0.0, time.monotonic() - since) if since else 0.0,
            loops=self._counts["loops"],
        )

    # -- requests -----------------------------------------------------------------

    def register_timers(self, timer_requests: list[TimerRequest]) -> None:
        """Arm, re-arm or release (negative ``expiration_time``) the requested timers.

        Each request is checked against the schema (:func:`timer_api.check_request`),
        unless this very list is a batch the loop took from a queue whose requests
        are checked already (``RequestQueue.checked``). A request that cannot be
        accepted is rejected (counted, logged, reported as a ``rejected`` event)
        without disturbing the others.
        """
        checked = timer_requests is self._checked_batch
        requests = timer_requests
        if len(requests) >= BULK_MIN and TimerTable.may_arm_like(requests):
            requests = self._register_like_first(requests, checked)
        received = len(requests)
        if checked:
            rejected: list[tuple[InvalidRequestError, Any]] = []
        else:
            requests, rejected = _check_each(requests)
        batch = _Batch(bool(self._subscribers))
        with self._report_lock:
            with self._lock:
                batch.mono = mono = time.monotonic()
                batch.offset = mono - self._wall_clock()
                for request in requests:
                    try:
                        if request.expiration_time < 0:
                            self._release_one(batch, request)
                        else:
                            self._arm_one(batch, request)
                    except InvalidRequestError as error:
                        rejected.append((error, request))
                    except _Late:
                        batch.late += 1
                self._count(batch, received, len(rejected))
            if rejected:
                self._deliver([self._refusal(error, request) for error, request in rejected])
            if batch.events:
                self._deliver(batch.events)
        if batch.forgotten:
            self._close_handles(block=False)

    def _release_one(self, batch: _Batch, request: TimerRequest) -> None:
        """Release the timer ``request`` names, if its worker (that very process) holds it."""
        pid, scope, start_time = request.worker_id, request.scope_id, request.start_time
        worker = self._table.get(pid)
        if (
            worker is not None
            and (start_time is None or start_time == worker.start_time)
            and self._table.release(worker, scope)
        ):
            batch.released += 1
            if batch.subscribed:
                batch.events.append(
                    Released(time=batch.mono - batch.offset, pid=pid, scope_id=scope)
                )

    def _arm_one(self, batch: _Batch, request: TimerRequest) -> None:
        """Arm the timer ``request`` names: find or admit its worker, apply the cap, pick the deadline."""
        pid, scope, start_time = request.worker_id, request.scope_id, request.start_time
        worker = self._table.get(pid)
        if worker is not None and pid != batch.last_seen and pid not in batch.seen:
            worker = self._still_alive(batch, worker)
        if worker is None or (start_time is not None and start_time != worker.start_time):
            batch.forgotten = batch.forgotten or worker is not None
            worker = self._admit(request, worker, batch.events)
            batch.seen.add(pid)
            batch.last_seen = pid
        timers = worker.timers
        if len(timers) >= self._policy.max_timers_per_worker and scope not in timers:
            raise InvalidRequestError(
                RejectReason.TOO_MANY_TIMERS,
                f"pid {pid} already holds {len(timers)} timers "
                f"(limit {self._policy.max_timers_per_worker})",
            )
        deadline = _deadline(batch, request)
        self._table.arm(worker, scope, deadline, request)
        batch.armed += 1
        if batch.subscribed:
            batch.events.append(
                Armed(
                    time=batch.mono - batch.offset,
                    pid=pid,
                    scope_id=scope,
                    expires_in=deadline - batch.mono,
                    signal=request.signal,
                    thread_id=request.thread_id,
                )
            )

    def _still_alive(self, batch: _Batch, worker: Worker) -> Worker | None:
        """Return ``worker`` if its pinned process lives, else forget it and return ``None``.

        Asked once per worker and batch, not per request: a pidfd poll, no /proc read.
        (A release needs none: a dead worker's timers go anyway.)
        """
        pid = worker.pid
        batch.seen.add(pid)
        batch.last_seen = pid
        handle = self._handles.get(pid)
        if handle is not None and not handle.alive():
            # The pinned process is gone: whoever uses its pid now (even with the
            # same start time) is a new process.
            self._forget(pid, batch.events, "exited; a new request names its pid")
            batch.forgotten = True
            return None
        return worker

    def _count(self, batch: _Batch, received: int, rejected: int) -> None:
        """Add what one ``register_timers`` call did to the counters (the lock is held)."""
        counts = self._counts
        counts["received"] += received
        counts["armed"] += batch.armed
        counts["released"] += batch.released
        counts["clock_skew"] += batch.skewed
        counts["late"] += batch.late
        counts["rejected"] += rejected
        if batch.forgotten:
            counts["exited"] += sum(1 for event in batch.events if isinstance(event, Exited))

    def _register_like_first(
        self, timer_requests: list[TimerRequest], checked: bool
    ) -> list[TimerRequest]:
        """Register the first request, then the rest at once if they are like it; return what is left.

        A large batch of new timers from one worker (what a transport decodes, or a
        direct call) is checked and armed in a few passes instead of request by
        request (see :meth:`TimerTable.arm_like`; ``checked``: the batch was checked
        against the schema already); any batch the table cannot arm that way (or
        that would pass the worker's cap) is left to the caller, whole.
        """
        head = timer_requests[0]
        try:
            check_request(head)
        except InvalidRequestError:
            return timer_requests  # rejected with the others, one by one
        self.register_timers([head])
        rest = timer_requests[1:]
        with self._report_lock:
            with self._lock:
                worker = self._table.get(head.worker_id)
                cap = self._policy.max_timers_per_worker
                if worker is None or len(worker.timers) + len(rest) > cap:
                    return rest
                mono = time.monotonic()
                wall = self._wall_clock()
                armed = self._table.arm_like(
                    worker, head, rest, mono - wall, CLOCK_TOLERANCE, checked=checked
                )
                if armed is None:
                    return rest
                self._counts["received"] += len(rest)
                self._counts["armed"] += len(rest)
            if self._subscribers:
                pid, signum, thread_id = worker.pid, head.signal, head.thread_id
                self._deliver(
                    [
                        Armed(
                            time=wall,
                            pid=pid,
                            scope_id=scope,
                            expires_in=deadline - mono,
                            signal=signum,
                            thread_id=thread_id,
                        )
                        for scope, deadline in zip(*armed, strict=True)
                    ]
                )
        return []

    def _admit(self, request: TimerRequest, known: Worker | None, events: list[Event]) -> Worker:
        """Prove who sent ``request`` and start tracking it; raise ``InvalidRequestError`` if not.

        Called with the lock held, for a pid not known yet, a start time that differs
        from the pinned one, or a pinned process found gone.
        """
        pid = request.worker_id
        claimed = request.start_time
        handle: Target | None = None
        if pid == os.getpid():
            # Registered and reported like any worker, never signalled.
            stat = process_stat(pid)
            assert stat is not None
            actual = stat[1]
            if claimed is not None and claimed != actual:
                raise InvalidRequestError(
                    RejectReason.PID_REUSED,
                    f"pid {pid} started at {actual}, the request says {claimed}",
                )
        else:
            if is_protected(pid):
                raise InvalidRequestError(
                    RejectReason.PROTECTED_PID, f"pid {pid} is pid 1 or the server's process group"
                )
            try:
                handle = Target(self._procfs, pid, claimed)
            except PidReused:
                if claimed == self._gone.get(pid):
                    raise _Late from None  # sent by the worker that had the pid before
                raise InvalidRequestError(
                    RejectReason.PID_REUSED,
                    f"pid {pid} names a process that did not start at {claimed}",
                ) from None
            except ProcessGone:
                gone = self._gone.get(pid)
                if gone is not None and claimed in (None, gone):
                    raise _Late from None  # sent by the worker that had the pid, now gone
                raise InvalidRequestError(
                    RejectReason.NO_SUCH_PROCESS, f"pid {pid} does not exist"
                ) from None
            except PermissionError as exc:
                raise _unreadable(pid, exc) from None
            try:
                self._check_allowed(pid)
            except PermissionError as exc:
                handle.close()
                raise _unreadable(pid, exc) from None
            except BaseException:
                handle.close()
                raise
            actual = handle.start_time
        if known is not None and self._table.get(pid) is known:
            self._forget(pid, events, "pid reused by a new worker")
        if handle is not None:
            self._handles[pid] = handle
        return self._table.add_worker(pid, actual)

    def _check_allowed(self, pid: int) -> None:
        """Raise ``InvalidRequestError`` if the policy forbids touching live process ``pid``."""
        procfs = self._procfs
        status = procfs.status(pid)
        if status is None:
            raise InvalidRequestError(RejectReason.NO_SUCH_PROCESS, f"pid {pid} does not exist")
        if not self._policy.allow_other_users and not procfs.same_user(status):
            raise InvalidRequestError(
                RejectReason.OTHER_USER,
                f"pid {pid} belongs to uid {status.uids[0]}, not to this server's user",
            )
        root = self._policy.descendants_of
        if root is not None and not procfs.descends_from(pid, root):
            raise InvalidRequestError(
                RejectReason.NOT_IN_JOB, f"pid {pid} does not descend from pid {root}"
            )

    def _reject(self, error: InvalidRequestError) -> None:
        """Count and report an item of a batch that is not a valid request."""
        with self._report_lock:
            with self._lock:
                self._counts["received"] += 1
                self._counts["rejected"] += 1
            self._deliver((self._refusal(error, None),))

    def _refusal(self, error: InvalidRequestError, request: Any) -> Rejected:
        """Log ``error`` and return its event; ``request`` is what it refuses (``None``: unknown)."""
        pid = getattr(request, "worker_id", None)
        scope = getattr(request, "scope_id", None)
        if error.reason in self._warned:
            logger.debug("rejected timer request: %s", error)
        else:
            self._warned.add(error.reason)
            logger.warning("rejected timer request: %s (more like it are logged at debug)", error)
        return Rejected(
            time=self._wall_clock(),
            reason=error.reason,
            detail=error.detail,
            pid=pid if type(pid) is int else None,
            scope_id=scope if type(scope) is str else None,
        )

    # -- forgetting a worker --------------------------------------------------------

    def _forget(self, pid: int, events: list[Event] | None, detail: str) -> Worker | None:
        """Drop worker ``pid`` with its timers, its reap and its handle; the one way to do so.

        Called with the lock held. With ``events``, an ``exited`` event is added when
        the worker held timers (the caller counts it). The handle is closed later, by
        :meth:`_close_handles`, once no reap step can be using it.
        """
        worker = self._table.drop_worker(pid)
        self._reaps.pop(pid, None)
        handle = self._handles.pop(pid, None)
        if handle is not None:
            if worker is not None and not handle.alive():  # not a worker cleared alive
                gone = self._gone
                gone[pid] = worker.start_time
                gone.move_to_end(pid)
                if len(gone) > GONE_KEPT:
                    gone.popitem(last=False)
            self._closing.append(handle)
        if worker is not None and len(worker) and events is not None:
            logger.info("worker %d held %d timer(s) (%s); dropped them", pid, len(worker), detail)
            events.append(
                Exited(time=self._wall_clock(), pid=pid, timers=len(worker), detail=detail)
            )
        return worker

    def _close_handles(self, *, block: bool) -> None:
        """Close the handles of forgotten workers, unless (``block=False``) a reap step runs."""
        if not self._closing or not self._reap_lock.acquire(blocking=block):
            return
        try:
            with self._lock:
                closing, self._closing = self._closing, []
            for handle in closing:
                handle.close()
        finally:
            self._reap_lock.release()

    def _drop_gone(self, gone: list[tuple[int, int]], detail: str) -> None:
        """Forget the workers ``(pid, start_time)`` found gone, reporting those that held timers."""
        events: list[Event] = []
        with self._report_lock:
            with self._lock:
                for pid, start_time in gone:
                    worker = self._table.get(pid)
                    if worker is not None and worker.start_time == start_time:
                        self._forget(pid, events, detail)
                self._counts["exited"] += len(events)
            self._deliver(events)

    def clear_timers(self, worker_ids: set[int]) -> None:
        """Forget every timer of the given workers, and stop reaping them."""
        with self._lock:
            for pid in worker_ids:
                self._forget(pid, None, "cleared")
        self._close_handles(block=False)

    def get_expired_timers(self, deadline: float) -> dict[int, list[TimerRequest]]:
        """Return the held timers whose deadline is before ``deadline`` (``time.time()`` seconds), by pid."""
        with self._lock:
            mono = time.monotonic() + (deadline - self._wall_clock())
            build = self._table.due(mono)
        return build()

    # -- expiry and reaping ---------------------------------------------------------

    def _action(self, request: TimerRequest, pid: int) -> int:
        """Return the signal to send when ``request`` expires; 0: report it, send nothing.

        See the precedence table in docs/operations.md.
        """
        policy = self._policy
        if policy.observe_only or pid == os.getpid():
            return 0
        signum = request.signal
        if policy.force_signal or signum is None:
            return policy.signal
        return int(signum) if signum > 0 else 0

    def _reap_worker(self, worker_id: int) -> bool:
        """Advance the reap of ``worker_id`` by what is due now; ``False``: call again later.

        Only expired timers start a reap. Once the reap is over, a worker that was
        only notified keeps its armed timers (its expired ones are dropped); any
        other is forgotten.
        """
        with self._reap_lock:
            now = time.monotonic()
            with self._lock:
                reap = self._reaps.get(worker_id)
                if reap is None:
                    worker = self._table.get(worker_id)
                    if worker is None:
                        return True
                    reap = self._new_reap(worker, self._table.expired_entries(worker), now)
                    if reap is None:
                        return True
                    self._reaps[worker_id] = reap
            # A signal and its count are one step too: whoever sees the worker die
            # sees the ``signalled`` counter (and event) that sent it.
            with self._report_lock:
                try:
                    done = self._reaper.step(reap, now)
                except Exception:
                    reap.due = now + REAP_RETRY  # not again in every round meanwhile
                    raise
            if done:
                with self._lock:
                    if self._reaps.get(worker_id) is reap:
                        del self._reaps[worker_id]
                        worker = self._table.get(worker_id)
                        if reap.notified and worker is not None:
                            self._table.drop_expired(worker)
                        else:
                            self._forget(worker_id, None, "reaped")
            self._close_handles(block=True)
            return done

    def _new_reap(self, worker: Worker, entries: list[Entry], now: float) -> Reap | None:
        """Return the reap for ``worker``'s expired ``entries``; ``None`` if none asks for a signal.

        Called with the lock held. The earliest entry that asks for a signal names the
        reap and gives its first signal.
        """
        pid = worker.pid
        for deadline, _, request in sorted(entries):
            signum = self._action(request, pid)
            if signum > 0:
                return Reap(
                    pid,
                    worker.start_time,
                    self._handles.get(pid),
                    scope_id=request.scope_id,
                    deadline=deadline,
                    signal=signum,
                    thread_id=request.thread_id,
                    timers=len(worker),
                    now=now,
                )
        return None

    def _expire(self, now: float) -> None:
        """Report timers past their deadline; start reaps; drop workers that exited.

        When some timer is due, the requests waiting in the queue are registered
        first (:meth:`_take_in_waiting`). A timer whose action is to signal stays
        held until its worker's reap is over; one that is only observed is reported
        and dropped, so the worker's other timers stay armed.
        """
        with self._lock:
            deadline = self._table.next_deadline()
        if deadline is None or deadline > now:
            return
        try:
            self._take_in_waiting()
        except Exception:  # the queue's fault: the due timers are judged all the same
            logger.exception("reading the request queue before expiring failed")
        events: list[Event] = []
        with self._reap_lock, self._report_lock:
            with self._lock:
                entries = self._table.pop_expired(now)
                if not entries:
                    return
                by_pid: dict[int, list[Entry]] = {}
                for entry in entries:
                    by_pid.setdefault(entry[2].worker_id, []).append(entry)
                wall = self._wall_clock()
                expired = 0
                for pid, mine in by_pid.items():
                    worker = self._table.get(pid)
                    assert worker is not None
                    handle = self._handles.get(pid)
                    if pid not in self._reaps and handle is not None and not handle.alive():
                        self._forget(pid, events, "exited before its timer expired")
                        self._counts["exited"] += 1
                        continue
                    reap = self._reaps.get(pid)
                    for entry in sorted(mine):
                        deadline, _, request = entry
                        action = self._action(request, pid)
                        if action <= 0:
                            self._table.release(worker, request.scope_id)
                        elif reap is None:
                            reap = self._new_reap(worker, [entry], now)
                            assert reap is not None
                            self._reaps[pid] = reap
                        events.append(
                            Expired(
                                time=wall,
                                pid=pid,
                                scope_id=request.scope_id,
                                late=now - deadline,
                                expiration_time=request.expiration_time,
                                signal=request.signal,
                                thread_id=request.thread_id,
                                action=action if action <= 0 or reap is None else reap.signal,
                            )
                        )
                        expired += 1
                self._counts["expired"] += expired
            self._deliver(events)
        self._close_handles(block=True)

    def _sweep(self) -> None:
        """Drop every known worker that has exited (reaps excluded)."""
        with self._reap_lock:
            with self._lock:
                own = os.getpid()
                workers = [
                    (w.pid, w.start_time, self._handles.get(w.pid))
                    for w in self._table
                    if w.pid not in self._reaps and w.pid != own
                ]
            gone = [
                (pid, start)
                for pid, start, handle in workers
                if handle is None or not handle.alive()
            ]
            if gone:
                self._drop_gone(gone, "exited while its timers were armed")
        self._close_handles(block=True)

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

    def _watchdog_loop(self) -> None:
        self._loop_thread = threading.current_thread()
        try:
            super()._watchdog_loop()
        finally:
            self._busy_since = 0.0
            if self._loop_thread is threading.current_thread():
                self._loop_thread = None

    def _run_watchdog(self) -> None:
        """Run one round: take a batch, register it, reap what is due, drop the exited."""
        try:
            self._round()
        finally:
            self._busy_since = 0.0
            with self._lock:
                self._counts["loops"] += 1

    def _take_in_waiting(self) -> None:
        """Register the requests waiting in the queue now, before any timer is judged expired.

        A batch is what the queue hands over, not all that waits: after a pause of
        the server (stopped, starved of CPU, a flood of requests) a worker's release,
        written before its deadline, may still wait behind others, and judging its
        timer first would kill a worker that finished in time. Bounded by what the
        queue counts at the start (:meth:`RequestQueue.size`), so that a writer who
        never stops cannot hold the expiries off.
        """
        left = self._request_queue.size()
        while left > 0:
            requests = self._take_batch(0.0)
            left -= max(1, len(requests))
            if requests:
                self._register_batch(requests)

    def _register_batch(self, requests: list[TimerRequest]) -> None:
        """Register a batch taken from the queue; if that fails, each request on its own.

        An error no request should cause (a fault of this process, not a request
        refused) then loses only the request that meets it, never the batch around
        it; the others are registered again (an arm or release applied twice
        changes nothing more).
        """
        if getattr(self._request_queue, "checked", False):
            self._checked_batch = requests
        try:
            self.register_timers(requests)
            return
        except Exception:
            if len(requests) == 1:
                logger.exception("could not register %r; dropped", requests[0])
                return
            logger.exception(
                "could not register a batch of %d requests; registering them one by one",
                len(requests),
            )
        finally:
            self._checked_batch = None
        failed = 0
        for request in requests:
            try:
                self.register_timers([request])
            except Exception:
                if not failed:
                    logger.exception("could not register %r; dropped", request)
                failed += 1
        if failed > 1:
            logger.error(
                "%d more requests of the batch could not be registered; dropped", failed - 1
            )

    def _round(self) -> None:
        timeout = self._wait_timeout()
        try:
            requests = self._take_batch(timeout)
        except Exception:
            logger.exception("reading the request queue failed; retrying")
            time.sleep(min(timeout, 0.05))
            requests = []
        self._busy_since = time.monotonic()
        if requests:
            self._register_batch(requests)
        now = time.monotonic()
        self._expire(now)
        with self._lock:
            due = [pid for pid, reap in self._reaps.items() if reap.due <= now]
            reaped_before = self._counts["reaped"]
        for pid in due:
            self._reap_worker_no_throw(pid)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._sweep()
        self._close_handles(block=True)
        if self._policy.exit_on_reap and self._counts["reaped"] > reaped_before:
            logger.warning("exit_on_reap: killing the server process %d", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
