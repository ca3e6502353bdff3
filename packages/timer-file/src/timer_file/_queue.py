"""``FileRequestQueue``: the server's end of the named pipe, as a ``timer_api.RequestQueue``."""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import fcntl
import os
import select
import termios
import threading
import time
import weakref

from timer_api import InvalidRequestError, LineDecoder, RequestQueue, TimerRequest

from ._pipe import default_pipe_path, make_private_dir, open_pipe, remove_pipe

__all__ = ["FileRequestQueue"]

#: Bytes taken from the pipe per ``read()``: the whole pipe buffer at once.
READ_SIZE = 1 << 20
#: Rough size of one encoded request, to turn unread bytes into a batch-size hint.
_TYPICAL_REQUEST_BYTES = 64

Item = TimerRequest | InvalidRequestError


class FileRequestQueue(RequestQueue):
    """Serve the requests written into a named pipe that this queue creates and owns.

    The pipe is created privately when the queue opens (see :func:`open_pipe`) and
    removed when it closes; ``file_path=None`` picks a path in a new private
    directory, which :meth:`close` removes and :meth:`open` makes again.
    :meth:`get` waits with ``poll`` on the pipe and on a wake-up pipe
    (:meth:`interrupt`), reads big chunks, and decodes them line by line: a line
    that is not a valid request comes back as an :class:`InvalidRequestError` in its
    place, and the requests around it are kept.

    A child made by ``fork()`` gets the queue closed (the pipe is left to the
    parent): it must not keep the pipe "read" after the server process is gone,
    which would make a new server refuse the path (:class:`PipeInUseError`).
    """

    checked = True  # every line is decoded by the codec

    def __init__(self, file_path: str | None = None) -> None:
        self._owns_dir = file_path is None
        self._path = default_pipe_path() if file_path is None else file_path
        self._pending: collections.deque[Item] = collections.deque()
        self._decoder = LineDecoder()
        self._lock = threading.Lock()
        self._fds: tuple[int, int, int, int] | None = None
        self._stat: os.stat_result | None = None
        self.open()
        _OPEN_QUEUES.add(self)

    @property
    def file_path(self) -> str:
        """Return the path of the pipe."""
        return self._path

    def open(self) -> None:
        """Create and open the pipe; do nothing if it is open already."""
        with self._lock:
            if self._fds is not None:
                return
            if self._owns_dir:  # close() removed the private directory with the pipe
                make_private_dir(os.path.dirname(self._path))
            reader, keepalive, self._stat = open_pipe(self._path)
            wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._fds = (reader, keepalive, wake_r, wake_w)
            self._decoder = LineDecoder()

    def problem(self) -> str | None:
        """Say why clients can no longer reach this queue through its path, or ``None``."""
        st = self._stat
        if self._fds is None or st is None:
            return f"the pipe {self._path!r} is closed"
        try:
            now = os.lstat(self._path)
        except FileNotFoundError:
            return f"the pipe {self._path!r} was removed"
        except OSError as exc:
            return f"the pipe {self._path!r} cannot be checked: {exc}"
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return f"the pipe {self._path!r} was replaced by another file"
        return None

    def close(self) -> None:
        """Close the pipe and remove it from the file system; calling it again does nothing."""
        self.interrupt()
        with self._lock:
            fds, self._fds = self._fds, None
            if fds is None:
                return
            try:
                # While our descriptors are open, no other pipe can reuse its inode number.
                if self._stat is not None:
                    remove_pipe(self._path, self._stat, remove_dir=self._owns_dir)
            finally:
                for fd in fds:
                    os.close(fd)
                self._pending.clear()

    def _forget_after_fork(self) -> None:
        """In a forked child: close our copies of the descriptors, leave the pipe to the parent."""
        self._lock = threading.Lock()  # the parent's loop may have held it while forking
        fds, self._fds = self._fds, None
        self._pending.clear()
        for fd in fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def interrupt(self) -> None:
        """Wake a :meth:`get` that is waiting."""
        fds = self._fds
        if fds is not None:
            # Fails only when full (a wake-up is pending already) or just closed.
            with contextlib.suppress(OSError):
                os.write(fds[3], b"!")

    def size(self) -> int:
        """Return the requests decoded but not taken, plus an estimate for the unread bytes."""
        fds = self._fds
        unread = 0
        if fds is not None:
            buf = array.array("i", [0])
            try:
                fcntl.ioctl(fds[0], termios.FIONREAD, buf)
                unread = buf[0]
            except OSError:
                pass
        # Rounded up: any unread byte counts, so that ``size() == 0`` means nothing waits.
        return len(self._pending) + -(-unread // _TYPICAL_REQUEST_BYTES)

    def get(self, size: int, timeout: float) -> list[Item]:
        """Return at most ``size`` items; wait at most ``timeout`` seconds for the first.

        Once one item is in hand, only what can be read without waiting is added.
        """
        size = max(1, size)
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while True:
                fds = self._fds
                if fds is None:
                    break
                self._read_available(fds[0], size)
                if self._pending:
                    return self._take(size)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if self._wait(fds[0], fds[2], remaining):
                    return self._take(size)
        # Closed: nothing will arrive; pause briefly so that a caller's loop does not spin.
        time.sleep(min(max(0.0, deadline - time.monotonic()), 0.05))
        return []

    def _take(self, size: int) -> list[Item]:
        pending = self._pending
        if len(pending) <= size:
            out = list(pending)
            pending.clear()
            return out
        return [pending.popleft() for _ in range(size)]

    def _read_available(self, reader: int, size: int) -> None:
        """Read and decode until the pipe is empty or ``size`` items are pending."""
        pending = self._pending
        feed = self._decoder.feed
        while len(pending) < size:
            try:
                chunk = os.read(reader, READ_SIZE)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not chunk:  # cannot happen while the keep-alive writer is open
                return
            pending.extend(feed(chunk))

    @staticmethod
    def _wait(reader: int, wake: int, timeout: float) -> bool:
        """Wait for data or a wake-up; return ``True`` if woken up (after draining it)."""
        poller = select.poll()
        poller.register(reader, select.POLLIN)
        poller.register(wake, select.POLLIN)
        try:
            ready = poller.poll(timeout * 1000.0)
        except InterruptedError:
            return False
        for fd, _ in ready:
            if fd == wake:
                try:
                    while os.read(wake, 4096):
                        pass
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EBADF):
                        raise
                return True
        return False


#: Every queue made in this process, closed in a forked child.
_OPEN_QUEUES: weakref.WeakSet[FileRequestQueue] = weakref.WeakSet()


def _forget_all_after_fork() -> None:
    for queue in list(_OPEN_QUEUES):
        queue._forget_after_fork()


os.register_at_fork(after_in_child=_forget_all_after_fork)
