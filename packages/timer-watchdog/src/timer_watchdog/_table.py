"""The timer table: timers by (worker, scope), in deadline order, on the monotonic clock.

The table keeps no request object. A timer is a *slot* in its worker's columns:
``scopes`` (the scope string), ``deadlines`` and ``expirations`` (the float objects
the requests carried, or the deadline computed for them: kept, so that rebuilding a
request allocates no float) and
``shapes`` (a tuple ``(signal, start_time, thread_id, has_deadline)`` shared by every
timer of the worker that looks the same). Its *key* is one int,
``quantum << 56 | worker number << 32 | slot`` where ``quantum`` is the deadline in
whole microseconds: the worker's dict ``timers`` maps the scope to the key, and the
same int object sits in one binary heap of keys, so ordering by key orders by
deadline. Requests are rebuilt, equal to the ones armed, only when asked for (a
request armed by another deadline than its own, which the server does for a worker in
another time namespace, has its own kept in ``skewed``).

Re-arming or releasing leaves the old key in the heap (lazy deletion: a key is live
only while its worker's ``timers`` holds that very object); the heap is rebuilt when
stale keys outnumber live ones by more than :data:`COMPACT_SLACK`. A change costs
O(log n), taking the k expired timers O(k log n), a query for the timers due by a
deadline O(k) plus the stale keys met. Expired timers move to the worker's
``expired`` dict (their slots kept) until released or the worker is dropped.

A batch of new timers armed at once (:meth:`TimerTable.arm_many`) gets no keys yet:
its scopes map to their slot numbers and the batch is one *run* (its worker, slots
and earliest deadline) beside the heap. A run is turned into keys only when its
earliest deadline is reached or asked about (:meth:`TimerTable.pop_expired`,
:meth:`TimerTable.due`), and then only for its timers still armed as they were: a
timer released or re-armed before its deadline is never ordered at all. (A slot
number is below ``2**32``, a key never is, so the two cannot be mistaken.)

Not thread-safe: the server serializes every call with its lock.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Callable, Iterator
from heapq import heappush as _heappush
from itertools import compress, repeat, starmap
from operator import add, eq, sub
from typing import Any

from timer_api import TimerRequest, check_column

__all__ = ["COMPACT_SLACK", "Entry", "TimerTable", "Worker"]

#: Stale heap keys tolerated beyond the number of live ones before a rebuild.
COMPACT_SLACK = 1024

#: A timer handed to the engine: monotonic deadline, its key (unique), the request.
Entry = tuple[float, int, TimerRequest]

#: What timers of one worker share: signal, start_time (or None), thread_id, has_deadline.
Shape = tuple[Any, Any, Any, bool]

#: A batch armed at once and not yet given heap keys: its earliest deadline, its
#: worker, and its slots ``range(start, stop)``.
Run = tuple[float, "Worker", int, int]

_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_WORKER_BITS = 24
_WORKER_MASK = (1 << _WORKER_BITS) - 1
_QUANTUM_SHIFT = _SLOT_BITS + _WORKER_BITS
#: Free slots from which a worker whose slots are all free gives its columns back.
_SHRINK_FROM = 256
#: Interned thread ids and shapes kept per worker before the cache starts over.
_INTERN_LIMIT = 256


def _quantum(deadline: float) -> int:
    """Return ``deadline`` in whole microseconds (non-decreasing in ``deadline``)."""
    try:
        return int(deadline * 1e6)
    except OverflowError:  # beyond ~1e302 s: the largest quantum a double holds
        return int(math.copysign(sys.float_info.max, deadline))


def _rebuild(
    pid: int,
    scopes: list[str | None],
    shapes: list[Shape | None] | Shape | None,
    expirations: list[float],
    deadlines: list[float],
    holes: bool,
) -> list[TimerRequest]:
    """Return the requests of the used slots of these columns, in slot order.

    ``shapes`` is the shape column, or the one shape of every used slot.
    """
    if holes:
        used = [scope is not None for scope in scopes]
        scopes = list(compress(scopes, used))
        if type(shapes) is list:
            shapes = list(compress(shapes, used))
        expirations = list(compress(expirations, used))
        deadlines = list(compress(deadlines, used))
    if not scopes:
        return []
    if type(shapes) is list:
        first = shapes[0]
        if shapes.count(first) != len(shapes):
            return _rebuild_mixed(pid, scopes, shapes, expirations, deadlines)
        shapes = first
    assert shapes is not None
    signal, start_time, thread_id, has_deadline = shapes
    if not has_deadline and thread_id is None:  # five arguments: no heap-allocated call frame
        return list(
            map(
                TimerRequest,  # type: ignore[arg-type]  # no holes left: every scope is a str
                repeat(pid),
                scopes,
                expirations,
                repeat(signal),
                repeat(start_time),
            )
        )
    # Seven arguments: map() would allocate a call frame per request; starmap passes the
    # tuple zip reuses as it is (about 5% faster here).
    return list(
        starmap(  # noqa: RUF058
            TimerRequest,
            zip(
                repeat(pid),
                scopes,
                expirations,
                repeat(signal),
                repeat(start_time),
                deadlines if has_deadline else repeat(None),
                repeat(thread_id),
            ),
        )
    )


def _rebuild_mixed(
    pid: int,
    scopes: list[str | None],
    shapes: list[Shape | None],
    expirations: list[float],
    deadlines: list[float],
) -> list[TimerRequest]:
    """Return the requests of these columns (no holes), slot by slot."""
    out = []
    for scope, shape, expiration, deadline in zip(
        scopes, shapes, expirations, deadlines, strict=True
    ):
        assert shape is not None
        signal, start_time, thread_id, has_deadline = shape
        out.append(
            TimerRequest(
                pid,
                scope,  # type: ignore[arg-type]
                expiration,
                signal,
                start_time,
                deadline if has_deadline else None,
                thread_id,
            )
        )
    return out


def _skews_within(
    deadlines: list[float],
    expirations: list[float],
    bounds: tuple[float, float],
    first: float,
    low: float,
    high: float,
) -> bool:
    """Tell whether each ``deadline - expiration`` pair lies within ``[low, high]``.

    ``bounds`` are ``min(deadlines)`` and ``max(deadlines)``, ``first`` is
    ``min(expirations)``. The differences lie between ``min(deadlines) -
    max(expirations)`` and ``max(deadlines) - first`` (rounding is monotonic), so
    when those two are within the limits no difference is computed one by one.
    """
    if low <= bounds[0] - max(expirations) and bounds[1] - first <= high:
        return True
    skews: list[float] = list(map(sub, deadlines, expirations))
    return low <= min(skews) and max(skews) <= high


def _columns(
    head: TimerRequest, rest: list[TimerRequest]
) -> tuple[list[Any], list[Any], list[Any]] | None:
    """Return the scopes, expiration times and deadlines of ``rest``; ``None`` if one is unlike ``head``.

    Unlike: not a :class:`TimerRequest`, or another pid, signal, start time, thread,
    version or fallback flag than ``head``: each must be ``head``'s very object, or
    equal to it and of exactly its type, so that it is exactly as valid as ``head``'s
    (``True == 1`` and ``9.0 == 9`` do not pass).
    """
    pid, signal, start_time, thread_id = (
        head.worker_id,
        head.signal,
        head.start_time,
        head.thread_id,
    )
    version, fallback = head.version, head.signal_is_fallback
    pid_type, signal_type, start_type, thread_type = map(type, (pid, signal, start_time, thread_id))
    scopes: list[Any] = []
    expirations: list[Any] = []
    deadlines: list[Any] = []
    add_scope, add_expiration, add_deadline = scopes.append, expirations.append, deadlines.append
    request_type = TimerRequest
    value: Any
    try:
        for request in rest:
            if (
                type(request) is not request_type
                or request.version is not version
                or request.signal_is_fallback is not fallback
                or (
                    (value := request.worker_id) is not pid
                    and (value != pid or type(value) is not pid_type)
                )
                or (
                    (value := request.thread_id) is not thread_id
                    and (value != thread_id or type(value) is not thread_type)
                )
                or (
                    (value := request.start_time) is not start_time
                    and (value != start_time or type(value) is not start_type)
                )
                or (
                    (value := request.signal) is not signal
                    and (value != signal or type(value) is not signal_type)
                )
            ):
                return None
            add_scope(request.scope_id)
            add_expiration(request.expiration_time)
            add_deadline(request.deadline)
    except AttributeError:  # not requests at all: the caller rejects them one by one
        return None
    return scopes, expirations, deadlines


class Worker:
    """One worker process: its pinned identity and the columns of its timers."""

    __slots__ = (
        "_shapes",
        "_threads",
        "base",
        "deadlines",
        "expirations",
        "expired",
        "free",
        "last_shape",
        "mixed",
        "number",
        "pid",
        "scopes",
        "shapes",
        "skewed",
        "start_time",
        "timers",
    )

    def __init__(self, pid: int, start_time: int, number: int) -> None:
        self.pid = pid
        self.start_time = start_time
        #: This worker's number in the table, and its place in each of its keys.
        self.number = number
        self.base = number << _SLOT_BITS
        self._threads: dict[int, int] = {}
        self._shapes: dict[Shape, Shape] = {}
        #: The shape of the timer armed last (most timers of a worker share it).
        self.last_shape: Shape | None = None
        #: Whether some slot may hold another shape than ``last_shape``.
        self.mixed = False
        #: Armed timers: scope -> key (the same int object is in the table's heap).
        self.timers: dict[str, int] = {}
        #: Timers past their deadline: scope -> key, held until released or dropped.
        self.expired: dict[str, int] = {}
        #: The columns, by slot; a free slot holds ``None`` in ``scopes``.
        self.scopes: list[str | None] = []
        self.deadlines: list[float] = []
        self.expirations: list[float] = []
        self.shapes: list[Shape | None] = []
        #: Free slots, reused before the columns grow.
        self.free: list[int] = []
        #: The request's own deadline by slot, where the table keeps another one (the
        #: server arms by the expiration time when the two disagree).
        self.skewed: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.timers) + len(self.expired)

    def thread_id(self, ident: int) -> int:
        """Return one shared int object equal to ``ident``, so timers need not each hold one."""
        threads = self._threads
        shared = threads.get(ident)
        if shared is None:
            if len(threads) >= _INTERN_LIMIT:
                threads.clear()
            shared = threads[ident] = ident
        return shared

    def shape(self, signal: Any, start_time: Any, thread_id: Any, has_deadline: bool) -> Shape:
        """Return the one shared tuple for these per-timer fields."""
        shape = (signal, start_time, thread_id, has_deadline)
        shared = self._shapes.get(shape)
        if shared is None:
            if len(self._shapes) >= _INTERN_LIMIT:
                self._shapes.clear()  # ``last_shape`` stays: the slots that hold it do
            shared = self._shapes[shape] = shape
        return shared

    def request(self, slot: int) -> TimerRequest:
        """Rebuild the request of the timer in ``slot``, equal to the one armed."""
        scope = self.scopes[slot]
        shape = self.shapes[slot]
        assert scope is not None
        assert shape is not None
        signal, start_time, thread_id, has_deadline = shape
        return TimerRequest(
            self.pid,
            scope,
            self.expirations[slot],
            signal,
            start_time,
            self.skewed.get(slot, self.deadlines[slot]) if has_deadline else None,
            thread_id,
        )

    def requests(self) -> list[TimerRequest]:
        """Rebuild the request of every timer held, armed or expired, in slot order."""
        return self.columns()()

    def columns(self) -> Callable[[], list[TimerRequest]]:
        """Copy the columns (a few C copies); return what rebuilds their requests from the copy.

        The rebuilding touches no state of the table, so it may run without the lock.
        """
        pid, holes = self.pid, bool(self.free)
        scopes = list(self.scopes)
        shapes: list[Shape | None] | Shape | None = (
            list(self.shapes) if self.mixed else self.last_shape
        )
        expirations, deadlines = list(self.expirations), list(self.deadlines)
        for slot, deadline in self.skewed.items():
            deadlines[slot] = deadline
        return lambda: _rebuild(pid, scopes, shapes, expirations, deadlines, holes)

    def _free_slot(self, slot: int) -> None:
        self.scopes[slot] = None
        if self.skewed:
            self.skewed.pop(slot, None)
        free = self.free
        free.append(slot)
        if len(free) >= _SHRINK_FROM and len(free) == len(self.scopes):
            self._shrink()

    def _shrink(self) -> None:
        """Give the columns back: every slot is free."""
        self.mixed = False
        self.scopes.clear()
        self.shapes.clear()
        self.deadlines.clear()
        self.expirations.clear()
        self.free.clear()


class TimerTable:
    """Hold the workers and their timers; see the module docstring."""

    __slots__ = (
        "_by_number",
        "_free_numbers",
        "_heap",
        "_holding",
        "_latest",
        "_live",
        "_runs",
        "_workers",
    )

    def __init__(self) -> None:
        self._workers: dict[int, Worker] = {}
        #: Workers by number (``None``: a free number). Number 0 is never used, so no
        #: key is a small int that CPython shares between equal values.
        self._by_number: list[Worker | None] = [None]
        self._free_numbers: list[int] = []
        self._heap: list[int] = []
        #: Batches armed at once whose timers have no heap key yet.
        self._runs: list[Run] = []
        #: Armed timers (each has exactly one live heap key, or is in a run).
        self._live = 0
        #: Pids of workers with expired timers.
        self._holding: set[int] = set()
        #: No timer held has a deadline after this.
        self._latest = -float("inf")

    @property
    def timers(self) -> int:
        """Return how many timers are held, armed or expired."""
        return self._live + sum(len(self._workers[pid].expired) for pid in self._holding)

    @property
    def armed(self) -> int:
        """Return how many timers are armed (not yet expired)."""
        return self._live

    @property
    def heap_size(self) -> int:
        """Return the heap's length, stale keys included."""
        return len(self._heap)

    def __len__(self) -> int:
        """Return how many workers are known."""
        return len(self._workers)

    def __iter__(self) -> Iterator[Worker]:
        """Iterate over a snapshot of the known workers."""
        return iter(list(self._workers.values()))

    def get(self, pid: int) -> Worker | None:
        """Return worker ``pid``, or ``None`` if it is not known."""
        return self._workers.get(pid)

    def add_worker(self, pid: int, start_time: int) -> Worker:
        """Start tracking worker ``(pid, start_time)``; it must not be known yet."""
        if self._free_numbers:
            number = self._free_numbers.pop()
        else:
            number = len(self._by_number)
            if number > _WORKER_MASK:
                raise OverflowError(f"more than {_WORKER_MASK} workers at once")
            self._by_number.append(None)
        worker = self._workers[pid] = self._by_number[number] = Worker(pid, start_time, number)
        return worker

    def drop_worker(self, pid: int) -> Worker | None:
        """Forget worker ``pid`` and all its timers; return it (``None`` if unknown)."""
        worker = self._workers.pop(pid, None)
        if worker is None:
            return None
        self._by_number[worker.number] = None
        self._free_numbers.append(worker.number)
        self._live -= len(worker.timers)
        self._holding.discard(pid)
        if self._runs:
            self._runs = [run for run in self._runs if run[1] is not worker]
        self._maybe_compact()
        return worker

    def arm(self, worker: Worker, scope: str, deadline: float, request: TimerRequest) -> None:
        """Arm or re-arm ``worker``'s timer ``scope`` to expire at ``deadline`` (monotonic).

        Keeps the values ``request`` holds (its expiration time, signal, start time,
        thread, whether it carried a deadline), not the request itself.
        """
        shape = worker.last_shape
        signal = request.signal
        thread_id = request.thread_id
        own_deadline = request.deadline
        has_deadline = own_deadline is not None
        if (
            shape is None
            or shape[3] is not has_deadline
            or shape[0] != signal
            or shape[2] != thread_id
            or (shape[1] is None) is not (request.start_time is None)
        ):
            if worker.scopes:
                worker.mixed = True
            shape = worker.last_shape = worker.shape(
                signal,
                None if request.start_time is None else worker.start_time,
                None if thread_id is None else worker.thread_id(thread_id),
                has_deadline,
            )
        try:  # before any change: a NaN deadline raises here
            quantum = int(deadline * 1e6)
        except OverflowError:
            quantum = _quantum(deadline)
        timers = worker.timers
        old = timers.get(scope)
        if old is None:
            self._live += 1
            free = worker.free
            if free:
                slot = free.pop()
                worker.scopes[slot] = scope
                worker.shapes[slot] = shape
                worker.deadlines[slot] = deadline
                worker.expirations[slot] = request.expiration_time
            else:
                slot = len(worker.scopes)
                worker.scopes.append(scope)
                worker.shapes.append(shape)
                worker.deadlines.append(deadline)
                worker.expirations.append(request.expiration_time)
        else:
            slot = old & _SLOT_MASK
            worker.shapes[slot] = shape
            worker.deadlines[slot] = deadline
            worker.expirations[slot] = request.expiration_time
        if own_deadline is not None and own_deadline != deadline:
            worker.skewed[slot] = own_deadline
        elif worker.skewed:
            worker.skewed.pop(slot, None)
        key = quantum << _QUANTUM_SHIFT | (worker.base | slot)
        if deadline > self._latest:
            self._latest = deadline
        if key == old:
            return
        timers[scope] = key
        _heappush(self._heap, key)
        if old is not None and len(self._heap) > 2 * self._live + COMPACT_SLACK:
            self._compact()

    def arm_many(
        self,
        worker: Worker,
        scopes: list[str],
        deadlines: list[float],
        expirations: list[float],
        shape: Shape,
        *,
        bounds: tuple[float, float] | None = None,
    ) -> bool:
        """Arm new timers ``scopes`` of ``worker`` at once, all of one ``shape``, as one run.

        Changes nothing and returns ``False`` unless every scope is distinct and
        ``worker`` holds none of them yet (armed or expired): the caller then arms
        them one by one. ``deadlines`` (monotonic, finite) and ``expirations``
        match ``scopes`` item by item; ``shape`` comes from :meth:`Worker.shape`;
        ``bounds``, if given, are ``min(deadlines)`` and ``max(deadlines)``. The
        timers get their heap keys later (see the module docstring).
        """
        n = len(scopes)
        if not n:
            return True
        start = len(worker.scopes)
        fresh = dict(zip(scopes, range(start, start + n), strict=True))
        timers = worker.timers
        if (
            len(fresh) != n
            or not timers.keys().isdisjoint(fresh)
            or not worker.expired.keys().isdisjoint(fresh)
        ):
            return False
        if len(timers) < n:  # the keys are disjoint: merge the smaller dict into the larger
            fresh.update(timers)
            worker.timers = fresh
        else:
            timers.update(fresh)
        if shape is not worker.last_shape:
            if worker.scopes:
                worker.mixed = True
            worker.last_shape = shape
        worker.scopes.extend(scopes)
        worker.shapes.extend(repeat(shape, n))
        worker.deadlines.extend(deadlines)
        worker.expirations.extend(expirations)
        self._live += n
        earliest, latest = bounds if bounds is not None else (min(deadlines), max(deadlines))
        if latest > self._latest:
            self._latest = latest
        self._runs.append((earliest, worker, start, start + n))
        return True

    @staticmethod
    def may_arm_like(batch: list[TimerRequest]) -> bool:
        """Tell, from a sample in O(1), whether :meth:`arm_like` could take ``batch[1:]``.

        The middle and last requests must arm a timer of the first one's worker under
        another scope; a batch that fails this (releases, re-arms, several workers)
        costs nothing more.
        """
        head = batch[0]
        try:
            if head.expiration_time < 0:
                return False
            for other in (batch[len(batch) // 2], batch[-1]):
                if (
                    other.expiration_time < 0
                    or other.worker_id != head.worker_id
                    or other.scope_id == head.scope_id
                ):
                    return False
        except Exception:  # not requests at all: the caller rejects them one by one
            return False
        return True

    def arm_like(
        self,
        worker: Worker,
        head: TimerRequest,
        rest: list[TimerRequest],
        offset: float,
        tolerance: float = math.inf,
        *,
        checked: bool = False,
    ) -> tuple[list[str], list[float]] | None:
        """Arm ``rest`` at once if each request is like ``head``, armed as it is; else ``None``.

        Like means: a :class:`TimerRequest` with ``head``'s pid, signal, start time
        and thread (``head`` was accepted: the table holds a timer equal to it) and
        a scope that ``worker`` does not hold yet and that no other request of
        ``rest`` names, a non-negative expiration time, and a deadline if and only
        if ``head`` has one (``offset`` converts expiration times to monotonic
        deadlines otherwise), within ``tolerance`` seconds of the converted
        expiration time. The fields shared with ``head`` must be exactly ``head``'s
        (see :func:`_columns`); unless ``checked`` (the requests were checked against
        the schema already), the others are checked a column at a time
        (:func:`timer_api.check_column`): the same constraints, one call into C
        each. Returns the scopes armed and their deadlines; ``None`` changes nothing.
        """
        key = worker.timers.get(head.scope_id)
        if key is None or worker.request(key & _SLOT_MASK) != head:
            return None  # head was not armed as it is
        columns = _columns(head, rest)
        if columns is None:
            return None
        scopes, expirations, deadlines = columns
        if not checked and not (
            check_column("scope_id", scopes)
            and check_column("expiration_time", expirations)
            and check_column("deadline", deadlines)
        ):
            return None
        first = min(expirations)
        if first < 0:  # a release among them
            return None
        if head.deadline is None:
            if deadlines.count(None) != len(deadlines):
                return None
            deadlines = list(map(add, expirations, repeat(offset)))
        try:  # a None among floats cannot be compared: no scan for it of its own
            bounds = min(deadlines), max(deadlines)
        except TypeError:
            return None
        if bounds[0] is None:  # one request, without a deadline
            return None
        if (
            head.deadline is not None
            and tolerance < math.inf
            and not _skews_within(
                deadlines, expirations, bounds, first, offset - tolerance, offset + tolerance
            )
        ):
            return None
        shape = worker.shape(
            head.signal,
            None if head.start_time is None else worker.start_time,
            None if head.thread_id is None else worker.thread_id(head.thread_id),
            head.deadline is not None,
        )
        if not self.arm_many(worker, scopes, deadlines, expirations, shape, bounds=bounds):
            return None
        return scopes, deadlines

    def release(self, worker: Worker, scope: str) -> bool:
        """Release ``worker``'s timer ``scope``; return whether there was such a timer.

        The worker stays known (its identity was proved once, which costs /proc reads)
        until :meth:`drop_worker`, which the server calls once the process has exited.
        """
        key = worker.timers.pop(scope, None)
        if key is None:
            key = worker.expired.pop(scope, None)
            if key is None:
                return False
            if not worker.expired:
                self._holding.discard(worker.pid)
        else:
            self._live -= 1
        slot = key & _SLOT_MASK  # what Worker._free_slot does, inline on this hot path
        worker.scopes[slot] = None
        if worker.skewed:
            worker.skewed.pop(slot, None)
        free = worker.free
        free.append(slot)
        if len(free) >= _SHRINK_FROM and len(free) == len(worker.scopes):
            worker._shrink()
        if len(self._heap) > 2 * self._live + COMPACT_SLACK:
            self._compact()
        return True

    def drop_expired(self, worker: Worker) -> int:
        """Drop ``worker``'s expired timers (its armed ones stay); return how many there were."""
        dropped = len(worker.expired)
        for key in worker.expired.values():
            worker._free_slot(key & _SLOT_MASK)
        worker.expired.clear()
        self._holding.discard(worker.pid)
        return dropped

    def _owner(self, key: int) -> Worker | None:
        """Return the worker whose armed timer ``key`` is, or ``None`` if the key is stale."""
        worker = self._by_number[(key >> _SLOT_BITS) & _WORKER_MASK]
        if worker is None:
            return None
        slot = key & _SLOT_MASK
        if slot >= len(worker.scopes):
            return None
        scope = worker.scopes[slot]
        if scope is None or worker.timers.get(scope) is not key:
            return None
        return worker

    def next_deadline(self) -> float | None:
        """Return the earliest armed deadline, dropping stale keys from the top.

        A run counts by the earliest deadline it was armed with, which may be earlier
        than that of its timers still armed: the caller then looks one time too many.
        """
        heap = self._heap
        earliest = min(run[0] for run in self._runs) if self._runs else None
        while heap:
            worker = self._owner(heap[0])
            if worker is not None:
                top = worker.deadlines[heap[0] & _SLOT_MASK]
                return top if earliest is None else min(top, earliest)
            heapq.heappop(heap)
        return earliest

    def _order_runs(self, bound: float) -> None:
        """Give heap keys to the timers of every run armed with a deadline <= ``bound``."""
        runs = self._runs
        if not runs or min(run[0] for run in runs) > bound:
            return
        self._runs = [run for run in runs if run[0] > bound]
        for earliest, worker, start, stop in runs:
            if earliest <= bound:
                self._order_run(worker, start, stop)

    def _order_run(self, worker: Worker, start: int, stop: int) -> None:
        """Give a heap key to each timer of ``worker``'s slots ``start:stop`` still armed by its run."""
        timers: dict[Any, int] = worker.timers
        held = worker.scopes[start:stop]
        slots = range(start, start + len(held))
        # Still the run's: the scope maps to the slot number itself (not a key).
        mine = list(map(eq, map(timers.get, held), slots))
        scopes = list(compress(held, mine))
        if not scopes:
            return
        base, deadlines = worker.base, worker.deadlines
        keys = [
            _quantum(deadlines[slot]) << _QUANTUM_SHIFT | (base | slot)
            for slot in compress(slots, mine)
        ]
        timers.update(zip(scopes, keys, strict=True))
        heap = self._heap
        if len(keys) >= len(heap) // 8:
            heap.extend(keys)
            heapq.heapify(heap)
        else:
            for key in keys:
                _heappush(heap, key)

    def expired_entries(self, worker: Worker) -> list[Entry]:
        """Return ``worker``'s expired timers."""
        return [self._entry(worker, key) for key in worker.expired.values()]

    def armed_entries(self, worker: Worker) -> list[Entry]:
        """Return ``worker``'s armed timers."""
        return [self._entry(worker, key) for key in worker.timers.values()]

    @staticmethod
    def _entry(worker: Worker, key: int) -> Entry:
        slot = key & _SLOT_MASK
        return (worker.deadlines[slot], key, worker.request(slot))

    def pop_expired(self, now: float) -> list[Entry]:
        """Move every armed timer with deadline <= ``now`` to its worker's expired timers; return them."""
        self._order_runs(now)
        heap = self._heap
        bound = (_quantum(now) + 1) << _QUANTUM_SHIFT
        out: list[Entry] = []
        later: list[int] = []
        while heap and heap[0] < bound:
            key = heapq.heappop(heap)
            worker = self._owner(key)
            if worker is None:
                continue
            slot = key & _SLOT_MASK
            if worker.deadlines[slot] > now:  # same microsecond, not due yet
                later.append(key)
                continue
            scope = worker.scopes[slot]
            assert scope is not None
            del worker.timers[scope]
            self._live -= 1
            previous = worker.expired.get(scope)
            if previous is not None:  # re-armed after it expired, and expired again
                worker._free_slot(previous & _SLOT_MASK)
            worker.expired[scope] = key
            self._holding.add(worker.pid)
            out.append(self._entry(worker, key))
        for key in later:
            heapq.heappush(heap, key)
        return out

    def expired_by(self, deadline: float) -> dict[int, list[TimerRequest]]:
        """Return every held timer with deadline <= ``deadline``, by pid; changes nothing."""
        return self.due(deadline)()

    def due(self, deadline: float) -> Callable[[], dict[int, list[TimerRequest]]]:
        """Return what gives :meth:`expired_by`'s answer, to call after releasing the lock.

        When every timer is due, each worker's columns are copied now (a few C copies)
        and its requests rebuilt from the copy by the returned function; otherwise
        only the part of the heap at or below ``deadline`` is walked, now: O(k) plus
        the stale keys met there.
        """
        out: dict[int, list[TimerRequest]] = {}
        if deadline != deadline:  # NaN: nothing is due by it
            return lambda: out
        if not self._live and not self._holding:
            self._latest = -float("inf")
            return lambda: out
        if deadline >= self._latest:
            copies = [
                (worker.pid, worker.columns())
                for worker in self._workers.values()
                if worker.timers or worker.expired
            ]
            return lambda: {pid: build() for pid, build in copies}
        self._order_runs(deadline)
        for pid in self._holding:
            worker = self._workers[pid]
            for key in worker.expired.values():
                slot = key & _SLOT_MASK
                if worker.deadlines[slot] <= deadline:
                    out.setdefault(pid, []).append(worker.request(slot))
        heap = self._heap
        size = len(heap)
        bound = (_quantum(deadline) + 1) << _QUANTUM_SHIFT
        stack = [0] if size else []
        while stack:
            index = stack.pop()
            key = heap[index]
            if key >= bound:
                continue
            owner = self._owner(key)
            if owner is not None and owner.deadlines[key & _SLOT_MASK] <= deadline:
                out.setdefault(owner.pid, []).append(owner.request(key & _SLOT_MASK))
            for child in (2 * index + 1, 2 * index + 2):
                if child < size:
                    stack.append(child)
        return lambda: out

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * self._live + COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        self._heap = [key for key in self._heap if self._owner(key) is not None]
        heapq.heapify(self._heap)
