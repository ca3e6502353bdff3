"""Read many items per system call from the pipe under a ``multiprocessing.Queue``.

``Queue.get`` costs a lock round trip, a ``poll`` and two ``read`` calls per item,
which caps a reader near 100,000 items/s. :class:`PipeReader` takes the queue's
read lock once, reads up to 64 KiB at a time and splits it into the frames that
``multiprocessing.connection`` writes (a 4-byte big-endian length, or -1 and an
8-byte length, then the pickled item), releasing the queue's semaphore once per
item exactly as ``Queue.get`` does.

It relies on attributes of ``multiprocessing.queues.Queue`` that are not public
(``_reader``, ``_rlock``, ``_sem``, ``_closed``, and ``_wlock`` when present) and on
the connection's framing. :meth:`PipeReader.supports` checks both on the running
Python, and the queue falls back to ``Queue.get`` when either differs.

A writer killed in the middle of an item leaves a partial frame in the pipe (and,
under a plain queue, the writers' lock held). The reader does not stay stuck on it:
when the rest of a frame does not come within :data:`FRAME_WAIT` seconds, or a frame
does not hold a pickle, it reports the bytes as :class:`Lost`, searches the stream
for the next frame and goes on; a writers' lock left held by a dead writer is
released, so that the other workers can write again. A writer can also die holding
the lock with nothing cut short (killed between writing an item and releasing the
lock, as a worker is when the reaper kills it while another of its threads sends a
request): a lock that stays held for :data:`STALE_LOCK_WAIT` seconds while nothing at
all is written is taken for one such, and released too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing.connection
import multiprocessing.queues
import os
import select
import struct
import sys
import time
import weakref
from typing import Any, NamedTuple

__all__ = ["FRAME_WAIT", "STALE_LOCK_WAIT", "Lost", "PipeReader"]

logger = logging.getLogger("timer_queue_mp")

_CHUNK = 65536
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
#: Seconds without a byte after which a frame already started is given up as truncated.
FRAME_WAIT = 5.0
#: After a truncated frame, how long the pipe must stay silent before a writers'
#: lock that is still held is taken for one left by a dead writer.
_LOCK_GRACE = 0.5
#: Seconds the writers' lock may stay held while nothing is written to the pipe before
#: it is taken for one left by a writer that died holding it. A live writer writes
#: right after taking the lock (it pickles the item before), so only a dead one, or
#: one not scheduled for this long, holds it that long without writing a byte.
STALE_LOCK_WAIT = 1.0
#: The largest frame accepted while searching for the next frame after a loss.
_RESYNC_MAX = 16 * 1024 * 1024
#: What every pickle written by ``multiprocessing`` starts with (PROTO 2 to 5) and ends with (STOP).
_PROTO = 0x80
_STOP = 0x2E
_NOT_PICKLE = "a frame in the queue's pipe does not hold a pickled item"


class PipeClosedError(OSError):
    """Raise when the queue's pipe has no writer left: nothing can ever arrive."""


class Lost(NamedTuple):
    """A stretch of the pipe that held no whole item, in place of the items it cost."""

    #: How many bytes were skipped.
    size: int
    #: What happened, for the rejection the server reports.
    detail: str


class PipeReader:
    """Read whole frames from a ``multiprocessing.Queue`` that this process consumes."""

    __slots__ = (
        "__weakref__",
        "_carry",
        "_data",
        "_fd",
        "_held_since",
        "_poller",
        "_queue",
        "_rlock",
        "_sem",
        "_wake_r",
        "_wake_w",
        "_wlock",
    )

    @staticmethod
    def supports(mp_queue: object) -> bool:
        """Tell whether ``mp_queue`` is a plain ``multiprocessing.Queue`` this reader can drive.

        ``False`` on Windows, for any other queue type, and when the running Python's
        queue lacks one of the private attributes the reader uses or frames its items
        differently; the caller then uses the queue's own ``get``.
        """
        if sys.platform == "win32" or type(mp_queue) is not multiprocessing.queues.Queue:
            return False
        queue: Any = mp_queue
        try:
            usable = (
                callable(queue._reader.fileno)
                and callable(queue._rlock.acquire)
                and callable(queue._rlock.release)
                and callable(queue._sem.release)
                and isinstance(queue._closed, bool)
            )
        except AttributeError:
            return False
        return usable and _framing_is_known()

    def __init__(self, mp_queue: Any) -> None:
        self._queue = mp_queue
        self._fd: int = mp_queue._reader.fileno()
        self._rlock = mp_queue._rlock
        self._sem = mp_queue._sem
        wlock = getattr(mp_queue, "_wlock", None)
        self._wlock = wlock if callable(getattr(wlock, "acquire", None)) else None
        # A private pipe that interrupt() writes to, so a waiting reader wakes at once.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        self._data = select.poll()
        self._data.register(self._fd, select.POLLIN)
        #: The start of a frame read after a loss whose rest has not arrived yet.
        self._carry = b""
        #: Since when the writers' lock has been seen held with nothing written (or None).
        self._held_since: float | None = None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for data; return ``False`` on timeout or interrupt.

        While it waits it looks at the writers' lock every half :data:`STALE_LOCK_WAIT`
        (see :meth:`_check_writers_lock`).
        """
        if self._queue._closed:
            raise ValueError(f"queue {self._queue!r} is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            if self._wlock is None:
                events = self._poller.poll(max(0.0, remaining) * 1000.0)
                break
            events = self._poller.poll(max(0.0, min(remaining, STALE_LOCK_WAIT / 2)) * 1000.0)
            if events:
                break
            self._check_writers_lock()
            if remaining <= STALE_LOCK_WAIT / 2:
                break
        woken = False
        for fd, _ in events:
            if fd == self._wake_r:
                woken = True
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, _CHUNK)
        if woken:
            return False
        return bool(events)

    def interrupt(self) -> None:
        """Wake a :meth:`wait` in progress (or the next one)."""
        with contextlib.suppress(OSError):  # full (already woken) or closed
            os.write(self._wake_w, b"\0")

    def read(self) -> list[bytes | Lost]:
        """Return the pickled items waiting in the pipe (at least one chunk's worth), in order.

        A stretch of bytes that held no whole item comes back as a :class:`Lost`
        in its place. Returns an empty list if nothing is there or another reader
        holds the lock.
        """
        if self._queue._closed:
            raise ValueError(f"queue {self._queue!r} is closed")
        if not self._rlock.acquire(True, FRAME_WAIT):
            return []
        try:
            items = self._read_frames()
        finally:
            self._rlock.release()
        release = self._sem.release
        for _ in items:
            try:
                release()
            except ValueError:  # a writer that bypassed the semaphore
                break
        return items

    def _read_frames(self) -> list[bytes | Lost]:
        """Read one chunk and the rest of its last frame, skipping what is not a frame."""
        fd = self._fd
        if not self._data.poll(0):
            return []
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            raise PipeClosedError("the queue's pipe has no writer left")
        self._held_since = None
        buffer = self._carry + chunk if self._carry else chunk
        self._carry = b""
        out: list[bytes | Lost] = []
        append = out.append
        unpack_short = _SHORT.unpack_from
        pos = 0
        end = len(buffer)
        lost_at = -1  # start of the bytes being skipped; -1: in step with the frames
        why = ""
        stalled = False  # the rest of a frame did not come: wait no more in this call
        while pos < end:
            if lost_at < 0:
                # The common case, in step: whole frames that each hold a pickle.
                while pos + 6 < end:
                    (size,) = unpack_short(buffer, pos)
                    stop = pos + 4 + size
                    if (
                        stop > end
                        or size < 2
                        or buffer[pos + 4] != 0x80
                        or buffer[stop - 1] != 0x2E
                    ):
                        break
                    append(buffer[pos + 4 : stop])
                    pos = stop
                if pos >= end:
                    break
            searching = lost_at >= 0
            found = _frame_at(buffer, pos, _RESYNC_MAX if searching else None)
            if found is None:  # no frame starts here
                if not searching:
                    lost_at, why = pos, _NOT_PICKLE
                pos = _next_candidate(buffer, pos + 1)
                continue
            start, stop = found
            if stop > end:
                # First enough to check the pickle's first bytes, then the whole frame.
                need = stop if end >= start + 2 else min(stop, start + 2)
                if not stalled:
                    buffer, complete = self._fill(buffer, need)
                    end = len(buffer)
                    if complete:
                        continue
                if searching and stalled:
                    # A header is written whole, so a shorter tail is not the start
                    # of an item; a longer one may be, from a writer still writing.
                    if end - pos >= _SHORT.size:
                        self._carry = buffer[pos:]
                    else:
                        pos = end
                    break
                stalled = True
                if not searching:
                    lost_at = pos
                    why = (
                        f"a queue item stopped {stop - end} bytes short "
                        "(its writer died while writing it?)"
                    )
                pos = _next_candidate(buffer, pos + 1)
                continue
            if buffer[stop - 1] != _STOP:
                if not searching:
                    lost_at, why = pos, _NOT_PICKLE
                pos = _next_candidate(buffer, pos + 1)
                continue
            if searching:
                append(Lost(pos - lost_at, why))
                lost_at = -1
            append(buffer[start:stop])
            pos = stop
        if lost_at >= 0:
            append(Lost(pos - lost_at, why))
        if stalled and self._break_stale_lock():
            last = max(i for i, item in enumerate(out) if isinstance(item, Lost))
            lost = out[last]
            assert isinstance(lost, Lost)
            out[last] = lost._replace(
                detail=f"{lost.detail}; released the queue's write lock it left held"
            )
        return out

    def _fill(self, buffer: bytes, size: int) -> tuple[bytes, bool]:
        """Read on until ``buffer`` holds ``size`` bytes; tell whether it got there.

        It gives up when the pipe stays silent for :data:`FRAME_WAIT` seconds, and
        returns what it read until then.
        """
        parts = [buffer]
        have = len(buffer)
        deadline = time.monotonic() + FRAME_WAIT
        while have < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._data.poll(remaining * 1000.0):
                break
            part = os.read(self._fd, min(size - have, _CHUNK * 16))
            if not part:
                break
            parts.append(part)
            have += len(part)
            deadline = time.monotonic() + FRAME_WAIT
        return b"".join(parts), have >= size

    def _check_writers_lock(self) -> None:
        """Release the writers' lock if it has been held, with nothing written, for long.

        Called while the pipe is silent. The first time the lock is seen held starts
        the clock; any data read stops it (:meth:`_read_frames`). Held through
        :data:`STALE_LOCK_WAIT` seconds of silence, it is released and a warning says so.
        """
        if not self._writers_lock_held():
            self._held_since = None
            return
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
            return
        held_for = now - self._held_since
        if held_for < STALE_LOCK_WAIT:
            return
        self._held_since = None
        if not self._release_writers_lock():
            return
        logger.warning(
            "the writers' lock of %r stayed held for %.1f s with nothing written: a "
            "writer died holding it (killed between writing an item and releasing "
            "the lock?); released it so that the other workers can write again",
            self._queue,
            held_for,
        )

    def _break_stale_lock(self) -> bool:
        """Release the writers' lock if a writer died holding it; tell whether it did.

        Called after a frame stopped short. If the lock is held and the pipe still
        receives nothing for a little longer, no live writer is using it.
        """
        if not self._writers_lock_held():
            return False
        if self._data.poll(_LOCK_GRACE * 1000.0):
            return False  # somebody is writing after all
        return self._release_writers_lock()

    def _writers_lock_held(self) -> bool:
        """Tell whether the queue has a writers' lock and some writer holds it now."""
        wlock = self._wlock
        if wlock is None:
            return False
        if wlock.acquire(False):
            wlock.release()
            return False
        return True

    def _release_writers_lock(self) -> bool:
        """Release the writers' lock that another process holds; ``False``: released meanwhile."""
        assert self._wlock is not None
        try:
            self._wlock.release()
        except ValueError:
            return False
        return True


def _frame_at(buffer: bytes, pos: int, limit: int | None) -> tuple[int, int] | None:
    """Return where the payload of a frame starting at ``pos`` lies, or ``None`` if none starts there.

    The payload may extend past the buffer. A frame must carry a pickle (``0x80``
    and a protocol from 2 to 5 first) and be at most ``limit`` bytes long if given.
    Bytes not read yet count as possible: a header cut short is not refused.
    """
    end = len(buffer)
    if end - pos < 4:
        return (pos + 4, pos + 4) if end - pos > 0 else None
    (size,) = _SHORT.unpack_from(buffer, pos)
    header = 4
    if size == -1:
        header = 12
        if end - pos < header:
            return (pos + header, pos + header)
        (size,) = _LONG.unpack_from(buffer, pos + 4)
    if size < 2:
        return None
    if limit is not None and size > limit:
        return None
    start = pos + header
    if start < end and buffer[start] != _PROTO:
        return None
    if start + 1 < end and not 2 <= buffer[start + 1] <= 5:
        return None
    return start, start + size


def _next_candidate(buffer: bytes, pos: int) -> int:
    """Return the first position from ``pos`` where a frame could start (``len`` if none)."""
    end = len(buffer)
    found = buffer.find(_PROTO, pos + 4)
    while found >= 0:
        for header in (4, 12):
            start = found - header
            if start >= pos and _frame_at(buffer, start, _RESYNC_MAX) is not None:
                return start
        found = buffer.find(_PROTO, found + 1)
    # A frame cut short at the end has no pickle byte yet: keep the last few bytes.
    return max(pos, end - 3)


@functools.cache
def _framing_is_known() -> bool:
    """Tell whether ``multiprocessing.connection`` on this Python frames items as the reader expects."""
    read_fd, write_fd = os.pipe()
    try:
        writer = multiprocessing.connection.Connection(write_fd, readable=False)
        payload = b"\x80\x04."
        writer.send_bytes(payload)
        writer.close()
        write_fd = -1
        data = os.read(read_fd, 64)
    except Exception:
        return False
    finally:
        _close_fds(read_fd, *([write_fd] if write_fd >= 0 else []))
    return data == _SHORT.pack(len(payload)) + payload


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
