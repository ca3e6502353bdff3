"""A flag that a signal handler may set: a self-pipe, never a lock.

``threading.Event.set()`` takes a lock that the interrupted main thread may be holding
inside ``Event.wait()`` or ``Event.clear()``; called from a signal handler it can then
wait for itself forever. Writing a byte to a non-blocking pipe takes no lock.
"""

from __future__ import annotations

import contextlib
import os
import select

__all__ = ["Wakeup"]


class Wakeup:
    """Set from anywhere (a signal handler included); wait for it in one thread."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._poll = select.poll()  # not select(): no limit on the fd's number
        self._poll.register(self._read, select.POLLIN)

    def __enter__(self) -> Wakeup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set(self) -> None:
        """Wake the waiter; safe in a signal handler."""
        if self._write >= 0:
            with contextlib.suppress(OSError):  # BlockingIOError: a full pipe is set
                os.write(self._write, b"\0")

    def is_set(self) -> bool:
        """Tell whether the flag is set, without waiting."""
        return self.wait(0)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the flag; return whether it is set."""
        return bool(self._poll.poll(max(timeout, 0.0) * 1000.0))

    def clear(self) -> None:
        """Take the flag down (drain the pipe)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        """Close the pipe; setting the flag after this does nothing."""
        fds, self._write = (self._read, self._write), -1  # never write to a reused fd
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
