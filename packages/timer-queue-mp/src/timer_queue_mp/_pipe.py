"""Read many items per system call from the pipe under a ``multiprocessing.Queue``.

``Queue.get`` costs a lock round trip, a ``poll`` and two ``read`` calls per item,
which caps a reader near 100,000 items/s. :class:`PipeReader` takes the queue's
read lock once, reads up to 64 KiB at a time and splits it into the frames that
``multiprocessing.connection`` writes (a 4-byte big-endian length, or -1 and an
8-byte length, then the pickled item), releasing the queue's semaphore once per
item exactly as ``Queue.get`` does. It is used only for a plain
``multiprocessing.queues.Queue`` on POSIX, whose layout has been stable since
Python 3.8; every other queue goes through its own ``get``.
"""

from __future__ import annotations

import contextlib
import multiprocessing.queues
import os
import select
import struct
import sys
import time
import weakref
from typing import Any

__all__ = ["PipeReader"]

_CHUNK = 65536
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
#: How long to wait for the rest of a frame whose start has been read.
_FRAME_WAIT = 5.0
_ATTRIBUTES = ("_reader", "_rlock", "_sem", "_closed")


class TruncatedFrameError(OSError):
    """Raise when the pipe no longer carries whole frames (a writer died mid-write)."""


class PipeReader:
    """Read whole frames from a ``multiprocessing.Queue`` that this process consumes."""

    __slots__ = (
        "__weakref__",
        "_broken",
        "_data",
        "_fd",
        "_poller",
        "_queue",
        "_rlock",
        "_sem",
        "_wake_r",
        "_wake_w",
    )

    @staticmethod
    def supports(mp_queue: object) -> bool:
        """Tell whether ``mp_queue`` is a plain ``multiprocessing.Queue`` this reader can drive."""
        return (
            sys.platform != "win32"
            and type(mp_queue) is multiprocessing.queues.Queue
            and all(hasattr(mp_queue, name) for name in _ATTRIBUTES)
        )

    def __init__(self, mp_queue: Any) -> None:
        self._queue = mp_queue
        self._fd: int = mp_queue._reader.fileno()
        self._rlock = mp_queue._rlock
        self._sem = mp_queue._sem
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
        #: Set when the byte stream lost its framing; the queue is unusable from then on.
        self._broken: OSError | None = None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for data; return ``False`` on timeout or interrupt."""
        if self._queue._closed:
            raise ValueError(f"queue {self._queue!r} is closed")
        events = self._poller.poll(max(0.0, timeout) * 1000.0)
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

    def read(self) -> list[bytes]:
        """Return the pickled items waiting in the pipe (at least one chunk's worth), in order.

        Returns an empty list if nothing is there or another reader holds the lock.
        """
        if self._queue._closed:
            raise ValueError(f"queue {self._queue!r} is closed")
        if self._broken is not None:
            raise self._broken
        if not self._rlock.acquire(True, _FRAME_WAIT):
            return []
        try:
            frames = self._read_frames()
        finally:
            self._rlock.release()
        release = self._sem.release
        for _ in frames:
            try:
                release()
            except ValueError:  # a writer that bypassed the semaphore
                break
        return frames

    def _read_frames(self) -> list[bytes]:
        """Read one chunk and the rest of its last frame; keep what was whole if that fails."""
        frames: list[bytes] = []
        try:
            self._split(frames)
        except OSError as exc:
            self._broken = exc
        return frames

    def _split(self, frames: list[bytes]) -> None:
        fd = self._fd
        if not self._data.poll(0):
            return
        buffer = os.read(fd, _CHUNK)
        if not buffer:
            raise TruncatedFrameError("the queue's pipe has no writer left")
        pos = 0
        end = len(buffer)
        unpack_short = _SHORT.unpack_from
        while pos < end:
            header = 4
            if end - pos < header:
                buffer += self._read_exactly(pos + header - end)
                end = len(buffer)
            (size,) = unpack_short(buffer, pos)
            if size == -1:
                header = 12
                if end - pos < header:
                    buffer += self._read_exactly(pos + header - end)
                    end = len(buffer)
                (size,) = _LONG.unpack_from(buffer, pos + 4)
            elif size < 0:
                raise TruncatedFrameError(f"bad frame length {size}: the stream lost its framing")
            stop = pos + header + size
            if stop > end:
                buffer += self._read_exactly(stop - end)
                end = len(buffer)
            frames.append(buffer[pos + header : stop])
            pos = stop

    def _read_exactly(self, count: int) -> bytes:
        """Read the ``count`` bytes that complete a frame already started."""
        parts = []
        deadline = time.monotonic() + _FRAME_WAIT
        while count > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._data.poll(remaining * 1000.0):
                raise TruncatedFrameError(f"a queue item stopped {count} bytes short")
            part = os.read(self._fd, min(count, _CHUNK * 16))
            if not part:
                raise TruncatedFrameError("the queue's pipe was closed in the middle of an item")
            parts.append(part)
            count -= len(part)
        return b"".join(parts)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
