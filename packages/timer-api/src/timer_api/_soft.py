"""Soft deadlines: raise :class:`TimerExpired` in the thread that armed a block when it overstays.

One daemon thread per process keeps the pending deadlines in a heap. When one passes:

* in the main thread, it sends :data:`SOFT_SIGNAL` with ``signal.pthread_kill``; the
  Python handler raises the exception. A signal also interrupts a blocking system
  call (``time.sleep``, a socket read), which then raises instead of resuming;
* in any other thread, it uses ``PyThreadState_SetAsyncExc``: the exception is raised
  at that thread's next Python instruction, so a blocking call finishes first.

The exception is never raised while the thread is inside ``expires.__enter__`` or
``__exit__`` (it would leave the server's timer armed): the delivery waits and is
tried again shortly, until the block has either taken it or ended.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from ._errors import TimerExpired

__all__ = ["ABANDON", "GUARD_CODES", "SOFT_SIGNAL", "SoftDeadline", "arm", "disarm"]

#: The signal that carries a soft deadline to the main thread: a spare real-time signal.
SOFT_SIGNAL = int(signal.SIGRTMIN) + 5
#: Code of the functions during which the exception must not be raised (filled by _expires).
GUARD_CODES: set[CodeType] = set()
#: Called with the frame of one of those functions when an exception raised in a thread
#: other than the main one lands in it anyway, so that the block releases its timer.
ABANDON: Callable[[FrameType], None] | None = None

_FIRST_RETRY = 0.01
_LAST_RETRY = 0.5

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int
_current_frames = sys._current_frames
_monotonic = time.monotonic


class SoftDeadline:
    """One armed soft deadline: the thread to interrupt, when, and what to tell it.

    ``frame`` runs the ``with`` statement; ``on_escape`` ends the block (releases its
    timer) if the exception has to leave that frame without running ``__exit__``.
    """

    __slots__ = (
        "active",
        "delivered",
        "due",
        "frame",
        "message",
        "on_escape",
        "queued",
        "retry",
        "thread_id",
    )

    def __init__(
        self,
        thread_id: int,
        due: float,
        message: str,
        frame: FrameType | None = None,
        on_escape: Callable[[], None] | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.due = due
        self.message = message
        self.frame = frame
        self.on_escape = on_escape
        #: False once the block has ended; nothing is raised after that.
        self.active = True
        #: True once the exception has been raised (or handed to the thread).
        self.delivered = False
        self.queued = False
        self.retry = _FIRST_RETRY


class _TimerExpiredInThread(TimerExpired):
    """The exception class handed to ``PyThreadState_SetAsyncExc``, which takes no arguments.

    It is instantiated in the target thread, where it is raised: if that point is one
    the frame's exception table does not cover (see :func:`_safe_to_raise`), the
    exception will skip the ``with`` blocks of that frame, so their timers are
    released here instead of by ``__exit__``.
    """

    def __init__(self, *args: object) -> None:
        tid = threading.get_ident()
        message = _thread_messages.pop(tid, "soft deadline passed")
        super().__init__(*(args or (message,)))
        raised_in = sys._getframe(1)
        guard = _guard_frame(raised_in)
        if guard is not None:
            # Checked just before, the thread has since entered __enter__ or __exit__:
            # the exception leaves that block half done, so finish (or undo) it here.
            if ABANDON is not None:
                ABANDON(guard)
        elif not _safe_to_raise(raised_in):
            for entry in list(_scheduler.open.get(tid, ())):
                if entry.frame is raised_in and entry.on_escape is not None:
                    entry.on_escape()


# Tracebacks show it as the TimerExpired the user catches.
_TimerExpiredInThread.__name__ = _TimerExpiredInThread.__qualname__ = "TimerExpired"
_TimerExpiredInThread.__module__ = TimerExpired.__module__
_thread_messages: dict[int, str] = {}


class _Scheduler:
    """Keep the pending deadlines and deliver each one when it passes, from one thread."""

    def __init__(self) -> None:
        #: Taken with ``with lock:`` by the threads that arm and disarm: the lock's own
        #: (C) ``__enter__`` leaves no Python instruction between taking it and the
        #: ``with`` that gives it back, so an exception handed to the thread meanwhile
        #: (``PyThreadState_SetAsyncExc``) cannot leave it taken. ``Condition.__enter__``
        #: is Python code: one raised inside it, just after the acquire, kept the lock
        #: for good and wedged every block of the process.
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.heap: list[tuple[float, int, SoftDeadline]] = []
        self.seq = itertools.count()
        self.dead = 0
        self.thread: threading.Thread | None = None
        #: Entries of the main thread whose signal was sent and not yet taken.
        self.main_fired: list[SoftDeadline] = []
        #: The active entries of each thread, innermost last.
        self.open: dict[int, list[SoftDeadline]] = {}

    def push(self, entry: SoftDeadline, due: float) -> None:
        """Queue ``entry`` for ``due``; the caller holds ``cond``."""
        entry.queued = True
        heapq.heappush(self.heap, (due, next(self.seq), entry))
        if self.heap[0][2] is entry:
            self.cond.notify()
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="timer-api-soft", daemon=True)
            self.thread.start()

    def remove(self, entry: SoftDeadline) -> None:
        """Drop ``entry``; the caller holds ``cond``. Compacts the heap when it is mostly dead."""
        if entry.queued:
            self.dead += 1
            if self.dead > 64 and self.dead * 2 > len(self.heap):
                self.heap = [item for item in self.heap if item[2].active]
                heapq.heapify(self.heap)
                self.dead = 0

    def run(self) -> None:
        with self.cond:
            while True:
                if not self.heap:
                    self.cond.wait()
                    continue
                due, _, entry = self.heap[0]
                now = _monotonic()
                if due > now:
                    self.cond.wait(due - now)
                    continue
                heapq.heappop(self.heap)
                entry.queued = False
                if not entry.active:
                    self.dead = max(0, self.dead - 1)
                    self._forget(entry)
                    continue
                if entry.delivered or not self._deliver(entry):
                    self._forget(entry)
                    continue
                self.push(entry, now + entry.retry)
                entry.retry = min(entry.retry * 2, _LAST_RETRY)

    def _forget(self, entry: SoftDeadline) -> None:
        if entry in self.main_fired:
            self.main_fired.remove(entry)

    def _deliver(self, entry: SoftDeadline) -> bool:
        """Try to raise in the entry's thread; return True to be called again later."""
        tid = entry.thread_id
        if tid == threading.main_thread().ident and signal.getsignal(SOFT_SIGNAL) is _on_signal:
            if entry not in self.main_fired:
                self.main_fired.append(entry)
            try:
                signal.pthread_kill(tid, SOFT_SIGNAL)
            except OSError:
                return False
            return True  # the handler marks it delivered
        frame = _current_frames().get(tid)
        if frame is None:
            return False  # the thread has ended
        if _in_guard(frame) or not _safe_to_raise(frame):
            return True
        _thread_messages[tid] = entry.message
        entry.delivered = True
        _set_async_exc(tid, _TimerExpiredInThread)
        return False


def _exception_ranges(code: CodeType) -> tuple[tuple[int, int], ...]:
    """Return the byte ranges that ``code``'s exception table covers (none before 3.11)."""
    ranges = _ranges.get(code)
    if ranges is not None:
        return ranges
    found = []
    table = iter(getattr(code, "co_exceptiontable", b""))

    def varint() -> int:
        byte = next(table)
        value = byte & 63
        while byte & 64:
            byte = next(table)
            value = (value << 6) | (byte & 63)
        return value

    try:
        while True:
            start, length = varint() * 2, varint() * 2
            varint(), varint()  # target, depth and lasti
            found.append((start, start + length))
    except StopIteration:
        pass
    ranges = _ranges[code] = tuple(found)
    return ranges


_ranges: dict[CodeType, tuple[tuple[int, int], ...]] = {}


def _safe_to_raise(frame: FrameType) -> bool:
    """Tell whether an exception raised at ``frame``'s current instruction reaches its handlers.

    Since 3.12 some instructions inside a ``with`` or ``try`` (the back edge of a
    ``while cond:`` loop) are missing from the exception table (CPython issues 108214
    and 148278): an exception raised there, as a signal handler's is, skips every
    handler of the frame, ``__exit__`` included. Frames without handlers are safe.
    """
    ranges = _exception_ranges(frame.f_code)
    if not ranges:
        return True
    lasti = frame.f_lasti
    return any(start <= lasti < end for start, end in ranges)


def _guard_frame(frame: FrameType | None) -> FrameType | None:
    """Return the innermost frame entering or leaving an ``expires`` block, from ``frame`` up."""
    while frame is not None:
        if frame.f_code in GUARD_CODES:
            return frame
        frame = frame.f_back
    return None


def _in_guard(frame: FrameType | None) -> bool:
    """Tell whether ``frame`` or a caller of it is entering or leaving an ``expires`` block."""
    return _guard_frame(frame) is not None


_scheduler = _Scheduler()
_previous_handler: Any = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Raise :class:`TimerExpired` in the main thread for a soft deadline that has passed."""
    due = [e for e in tuple(_scheduler.main_fired) if e.active and not e.delivered]
    if not due:
        if callable(_previous_handler):
            _previous_handler(signum, frame)
        return
    if _in_guard(frame) or (frame is not None and not _safe_to_raise(frame)):
        return  # the scheduler sends the signal again shortly
    for entry in due:
        entry.delivered = True
    raise TimerExpired(due[0].message)


def _install_handler() -> None:
    """Install the main thread's handler for :data:`SOFT_SIGNAL`, keeping a foreign one to chain."""
    global _previous_handler
    previous = signal.getsignal(SOFT_SIGNAL)
    if previous is _on_signal:
        return
    try:
        signal.signal(SOFT_SIGNAL, _on_signal)
    except ValueError:  # not the main interpreter: fall back to the asynchronous exception
        return
    _previous_handler = previous


def arm(
    after: float,
    message: str,
    frame: FrameType | None = None,
    on_escape: Callable[[], None] | None = None,
) -> SoftDeadline:
    """Raise :class:`TimerExpired` with ``message`` in this thread once ``after`` seconds pass.

    ``frame`` is the frame of the ``with`` statement, ``on_escape`` what to do if the
    exception must leave it without ``__exit__`` (see :class:`SoftDeadline`).
    """
    tid = threading.get_ident()
    if tid == threading.main_thread().ident:
        _install_handler()
    entry = SoftDeadline(tid, _monotonic() + after, message, frame, on_escape)
    with _scheduler.lock:
        _scheduler.open.setdefault(tid, []).append(entry)
        _scheduler.push(entry, entry.due)
    return entry


def disarm(entry: SoftDeadline) -> None:
    """End ``entry``: from now on nothing is raised for it."""
    with _scheduler.lock:
        entry.active = False
        entry.frame = entry.on_escape = None
        opened = _scheduler.open.get(entry.thread_id)
        if opened is not None and entry in opened:
            opened.remove(entry)
            if not opened:
                del _scheduler.open[entry.thread_id]
        _scheduler.remove(entry)


def _after_fork_in_child() -> None:
    """Start over in a forked child: its parent's deadlines and thread are not its own."""
    global _scheduler
    _scheduler = _Scheduler()


os.register_at_fork(after_in_child=_after_fork_in_child)
