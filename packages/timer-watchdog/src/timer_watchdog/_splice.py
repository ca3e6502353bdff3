"""Pass a pipe's bytes on inside the kernel, keeping a copy to read: splice(2) and tee(2).

``os.splice`` moves the pages a job wrote into its pipe on to another file without
copying them; ``tee(2)`` first gives a second pipe references to the same pages, and
that copy is what is read (to be scanned). Python has ``os.splice`` (3.10+, Linux)
but no ``tee``: libc's is called through ctypes. Where either is missing,
:func:`tee_function` returns ``None`` and the caller copies the bytes itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Callable

from ._libc import c_function

__all__ = ["Splicer", "TeeFunction", "splicer_for", "tee_function"]

#: ``tee(fd_in, fd_out, len, flags)``: the number of bytes duplicated; raises ``OSError``.
TeeFunction = Callable[[int, int, int, int], int]

_F_SETPIPE_SZ, _F_GETPIPE_SZ = 1031, 1032


def tee_function() -> TeeFunction | None:
    """Return a call of libc's ``tee(2)``, or ``None`` where it (or ``os.splice``) is missing."""
    if not hasattr(os, "splice"):
        return None
    try:
        tee = c_function(
            "tee", [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint], ctypes.c_ssize_t
        )
    except OSError:
        return None

    def call(fd_in: int, fd_out: int, length: int, flags: int) -> int:
        count: int = tee(fd_in, fd_out, length, flags)
        if count < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))
        return count

    return call


def _read_exactly(fd: int, view: memoryview) -> None:
    """Fill ``view`` from ``fd``, which holds at least that many bytes."""
    while view:
        count = os.readv(fd, [view])
        if count == 0:
            raise OSError(errno.EIO, "a pipe ended before the bytes it held were read")
        view = view[count:]


def _capacity(pipe: int) -> int:
    """Return the size of ``pipe``'s buffer."""
    size: int = fcntl.fcntl(pipe, _F_GETPIPE_SZ)
    return size


def _splice_exactly(source: int, target: int, count: int) -> None:
    """Splice ``count`` bytes from pipe ``source`` (which holds them) to ``target``, which has room."""
    while count:
        moved = os.splice(source, target, count, flags=os.SPLICE_F_NONBLOCK)
        if moved == 0:
            raise OSError(errno.EIO, "a pipe ended before the bytes it held were moved")
        count -= moved


class Splicer:
    """Take what a pipe holds, move it on to another fd with ``splice(2)``, read a copy.

    :meth:`take` duplicates what ``source`` holds into a pipe of the splicer's own
    (``tee(2)``: no byte is copied), :meth:`move` splices those bytes from ``source``
    on to the target, and :meth:`read_copy` reads the duplicate. Parts of the copy
    that may not be needed are moved aside unread (:meth:`set_aside`), then read or
    dropped. The splicer's pipes are as large as ``size`` where the system allows, so
    one :meth:`take` may hold that much.
    """

    def __init__(self, source: int, tee: TeeFunction, size: int) -> None:
        self._source = source
        self._tee = tee
        self._size = size
        self._fds: list[int] = []
        try:
            self._copy_r, self._copy_w = self._pipe()
            self._aside: tuple[int, int, int] | None = None
            with contextlib.suppress(OSError):
                aside_r, aside_w = self._pipe()
                # Whatever the copy holds must fit aside (else setting it aside would block).
                if _capacity(aside_w) >= _capacity(self._copy_w):
                    self._aside = (
                        aside_r,
                        aside_w,
                        self._open(os.devnull, os.O_WRONLY | os.O_CLOEXEC),
                    )
        except BaseException:
            self.close()
            raise

    def _open(self, path: str, flags: int) -> int:
        fd = os.open(path, flags)
        self._fds.append(fd)
        return fd

    def _pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self._fds += (read, write)
        with contextlib.suppress(OSError):
            fcntl.fcntl(write, _F_SETPIPE_SZ, self._size)
        return read, write

    def close(self) -> None:
        """Close the splicer's own fds."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def take(self) -> int:
        """Duplicate what the source holds into the copy; return the count (0: the source ended).

        Raises ``BlockingIOError`` when the source holds nothing yet.
        """
        return self._tee(self._source, self._copy_w, self._size, os.SPLICE_F_NONBLOCK)

    def move(self, target: int, count: int, wait_writable: Callable[[int], None]) -> int:
        """Splice ``count`` taken bytes on to ``target``; return how many went before a refusal.

        ``target`` refuses (``EINVAL``) when it takes no splice, e.g. a file opened
        ``O_APPEND``: the bytes not moved are still in the source, for the caller to
        copy. ``wait_writable(target)`` is called when ``target`` is non-blocking and
        full. ``BrokenPipeError`` (no reader left on ``target``) is raised.
        """
        moved = 0
        while moved < count:
            try:
                moved += os.splice(self._source, target, count - moved)
            except BlockingIOError:
                wait_writable(target)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                break
        return moved

    def read_copy(self, view: memoryview) -> None:
        """Read the next ``len(view)`` bytes of the taken bytes' copy into ``view``."""
        _read_exactly(self._copy_r, view)

    @property
    def can_set_aside(self) -> bool:
        """Tell whether :meth:`set_aside` may be called."""
        return self._aside is not None

    def set_aside(self, count: int) -> None:
        """Move the next ``count`` bytes of the copy aside, unread (see :meth:`read_aside`)."""
        assert self._aside is not None
        _splice_exactly(self._copy_r, self._aside[1], count)

    def read_aside(self, view: memoryview) -> None:
        """Read the bytes set aside into ``view``, as long."""
        assert self._aside is not None
        _read_exactly(self._aside[0], view)

    def drop_aside(self, count: int) -> None:
        """Drop the ``count`` bytes set aside, unread."""
        assert self._aside is not None
        _splice_exactly(self._aside[0], self._aside[2], count)

    def copy_rest(self, view: memoryview) -> None:
        """Read into ``view`` the taken bytes that :meth:`move` left in the source."""
        _read_exactly(self._source, view)


def splicer_for(source: int, tee: TeeFunction | None, size: int) -> Splicer | None:
    """Return a :class:`Splicer` for ``source`` if it is a pipe and ``tee`` is there, else ``None``."""
    if tee is None:
        return None
    try:
        if not stat.S_ISFIFO(os.fstat(source).st_mode):
            return None
        return Splicer(source, tee, size)
    except OSError:
        return None
