"""The timer table: timers by (worker, scope), in deadline order, on the monotonic clock.

Each worker holds a dict of its armed timers by scope; every armed timer is also an
entry ``(deadline, seq, request)`` in one binary heap. Re-arming or releasing leaves
the old heap entry in place (lazy deletion: an entry is live only while its worker's
dict still holds that very tuple); the heap is rebuilt when stale entries outnumber
live ones by more than :data:`COMPACT_SLACK`. A change costs O(log n), taking the k
expired timers O(k log n). Expired timers move to the worker's ``expired`` dict
until the worker is reaped and cleared.

Not thread-safe: the server serializes every call with its lock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from timer_api import TimerRequest

__all__ = ["COMPACT_SLACK", "Entry", "TimerTable", "Worker"]

#: Stale heap entries tolerated beyond the number of live ones before a rebuild.
COMPACT_SLACK = 1024

#: A heap entry: monotonic deadline, arming sequence number (breaks ties), request.
Entry = tuple[float, int, TimerRequest]


class Worker:
    """One worker process: its pinned identity, armed timers and expired timers."""

    __slots__ = ("_threads", "expired", "pid", "start_time", "timers")

    def __init__(self, pid: int, start_time: int) -> None:
        self.pid = pid
        self.start_time = start_time
        self._threads: dict[int, int] = {}
        #: Armed timers by scope; each value is also in the heap.
        self.timers: dict[str, Entry] = {}
        #: Timers past their deadline by scope, held until the worker is cleared.
        self.expired: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self.timers) + len(self.expired)

    def thread_id(self, ident: int) -> int:
        """Return one shared int object equal to ``ident``, so timers need not each hold one."""
        threads = self._threads
        shared = threads.get(ident)
        if shared is None:
            if len(threads) >= 256:
                threads.clear()
            shared = threads[ident] = ident
        return shared


class TimerTable:
    """Hold the workers and their timers; see the module docstring."""

    __slots__ = ("_heap", "_holding", "_live", "_seq", "_workers")

    def __init__(self) -> None:
        self._workers: dict[int, Worker] = {}
        self._heap: list[Entry] = []
        self._seq = 0
        #: Armed timers (each has exactly one live heap entry).
        self._live = 0
        #: Pids of workers with expired timers.
        self._holding: set[int] = set()

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
        """Return the heap's length, stale entries included."""
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
        worker = self._workers[pid] = Worker(pid, start_time)
        return worker

    def drop_worker(self, pid: int) -> Worker | None:
        """Forget worker ``pid`` and all its timers; return it (``None`` if unknown)."""
        worker = self._workers.pop(pid, None)
        if worker is None:
            return None
        self._live -= len(worker.timers)
        self._holding.discard(pid)
        self._maybe_compact()
        return worker

    def arm(self, worker: Worker, scope: str, deadline: float, request: TimerRequest) -> None:
        """Arm or re-arm ``worker``'s timer ``scope`` to expire at ``deadline`` (monotonic)."""
        self._seq += 1
        entry = (deadline, self._seq, request)
        timers = worker.timers
        if scope in timers:
            timers[scope] = entry
            heapq.heappush(self._heap, entry)
            self._maybe_compact()
        else:
            self._live += 1
            timers[scope] = entry
            heapq.heappush(self._heap, entry)

    def release(self, worker: Worker, scope: str) -> bool:
        """Release ``worker``'s timer ``scope``; return whether there was such a timer.

        The worker stays known (its identity was proved once, which costs /proc reads)
        until :meth:`drop_worker`, which the server calls once the process has exited.
        """
        found = False
        if worker.timers.pop(scope, None) is not None:
            self._live -= 1
            found = True
        elif worker.expired.pop(scope, None) is not None:
            found = True
            if not worker.expired:
                self._holding.discard(worker.pid)
        if found:
            self._maybe_compact()
        return found

    def drop_expired(self, worker: Worker) -> int:
        """Drop ``worker``'s expired timers (its armed ones stay); return how many there were."""
        dropped = len(worker.expired)
        worker.expired.clear()
        self._holding.discard(worker.pid)
        return dropped

    def _is_live(self, entry: Entry) -> bool:
        request = entry[2]
        worker = self._workers.get(request.worker_id)
        return worker is not None and worker.timers.get(request.scope_id) is entry

    def next_deadline(self) -> float | None:
        """Return the earliest armed deadline, dropping stale entries from the top."""
        heap = self._heap
        while heap:
            if self._is_live(heap[0]):
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def pop_expired(self, now: float) -> list[Entry]:
        """Move every armed timer with deadline <= ``now`` to its worker's expired timers; return them."""
        heap = self._heap
        out: list[Entry] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            request = entry[2]
            worker = self._workers.get(request.worker_id)
            if worker is None or worker.timers.get(request.scope_id) is not entry:
                continue
            del worker.timers[request.scope_id]
            self._live -= 1
            worker.expired[request.scope_id] = entry
            self._holding.add(worker.pid)
            out.append(entry)
        return out

    def expired_by(self, deadline: float) -> dict[int, list[TimerRequest]]:
        """Return every held timer with deadline <= ``deadline``, by pid; changes nothing.

        Walks only the part of the heap at or below ``deadline``: O(k) plus the stale
        entries met there.
        """
        out: dict[int, list[TimerRequest]] = {}
        for pid in self._holding:
            for entry in self._workers[pid].expired.values():
                if entry[0] <= deadline:
                    out.setdefault(pid, []).append(entry[2])
        heap = self._heap
        size = len(heap)
        stack = [0] if size else []
        while stack:
            index = stack.pop()
            entry = heap[index]
            if entry[0] > deadline:
                continue
            if self._is_live(entry):
                out.setdefault(entry[2].worker_id, []).append(entry[2])
            for child in (2 * index + 1, 2 * index + 2):
                if child < size:
                    stack.append(child)
        return out

    def _maybe_compact(self) -> None:
        heap = self._heap
        if len(heap) > 2 * self._live + COMPACT_SLACK:
            self._heap = [entry for entry in heap if self._is_live(entry)]
            heapq.heapify(self._heap)
