"""Create, open and remove the server's named pipe without trusting what is at its path."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator

__all__ = [
    "PIPE_SIZE",
    "PipeInUseError",
    "UnsafePipeError",
    "default_pipe_path",
    "open_pipe",
    "remove_pipe",
]

#: Buffer size the server asks the kernel for, so that bursts fit while it is busy.
#: Clients take a pipe larger than the kernel's default as the sign of a server that
#: serves writers which keep the pipe open (see ``FileTimerClient``).
PIPE_SIZE = 1 << 20

_PIPE_NAME = "timer.pipe"
_DIR_PREFIX = "timer-file-"
#: Longest wait, in seconds, for another server starting in the same directory.
_LOCK_TIMEOUT = 10.0


class UnsafePipeError(PermissionError):
    """Raise when the pipe's path is a symlink, not a FIFO, or not owned by this user."""


class PipeInUseError(FileExistsError):
    """Raise when a live server is reading the pipe at the path: it is not ours to take."""


def default_pipe_path() -> str:
    """Create a private (0700) directory and return a pipe path inside it."""
    return os.path.join(tempfile.mkdtemp(prefix=_DIR_PREFIX), _PIPE_NAME)


def make_private_dir(path: str) -> None:
    """Create directory ``path`` with mode 0700, or accept it if it is already ours and private.

    Used to bring back the private directory of a default pipe path after it was removed.
    """
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise UnsafePipeError(f"refusing {path!r}: it is not a private directory of this user")


def has_reader(path: str) -> bool:
    """Tell whether a process holds the FIFO at ``path`` open for reading (a live server).

    Opening a FIFO for writing without blocking fails with ``ENXIO`` exactly when it
    has no reader; the descriptor is closed at once and nothing is written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    os.close(fd)
    return True


@contextlib.contextmanager
def _directory_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory of ``path`` while a server takes the path.

    Two servers starting at once in one directory thus cannot both find a pipe stale
    and replace each other's.
    """
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # a directory we may not read: go on unlocked, mkfifo says the rest
        yield
        return
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PipeInUseError(
                        f"cannot create the pipe {path!r}: its directory stayed locked by "
                        f"another process for {_LOCK_TIMEOUT:g}s",
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePipeError(f"refusing {path!r}: it is a symbolic link")
    if not stat.S_ISFIFO(st.st_mode):
        raise UnsafePipeError(f"refusing {path!r}: it exists and is not a named pipe")
    if st.st_uid != os.geteuid():
        raise UnsafePipeError(
            f"refusing {path!r}: the pipe belongs to uid {st.st_uid}, not {os.geteuid()}"
        )


def open_pipe(path: str) -> tuple[int, int, os.stat_result]:
    """Create (or adopt) the pipe at ``path`` privately; return ``(reader, keepalive, stat)``.

    A missing path gets a new FIFO with mode 0600. An existing path is replaced only
    if it is a stale FIFO owned by this user (no process reads it); a FIFO that a
    live server reads raises :class:`PipeInUseError`, and a symlink, any other file,
    or another user's FIFO raises :class:`UnsafePipeError`; both are left alone.
    Servers starting in the same directory take turns (an ``flock`` on it), so two of
    them cannot both find one pipe stale. Both descriptors are non-blocking and
    close-on-exec: the reader never waits for a first writer, and the keep-alive
    writer keeps the reader from seeing end-of-file when the last client goes away.
    """
    with _directory_lock(path):
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            _check(path, os.lstat(path))
            if has_reader(path):
                raise PipeInUseError(
                    f"refusing {path!r}: a running timer server is reading this pipe "
                    "(stop it first, or choose another path)",
                ) from None
            # A pipe left by a server that died: replace it, so that clients see a new
            # pipe and replay their armed timers into this server.
            os.unlink(path)
            os.mkfifo(path, 0o600)
        # Open the reader before other servers may look: from now on the pipe is live.
        flags = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            reader = os.open(path, os.O_RDONLY | flags)
        except OSError as exc:
            if os.path.islink(path):
                raise UnsafePipeError(f"refusing {path!r}: it is a symbolic link") from exc
            raise
    try:
        st = os.fstat(reader)
        _check(path, st)
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(reader, 0o600)
            st = os.fstat(reader)
        with contextlib.suppress(OSError):  # over the user's pipe quota: keep the default
            fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        # Reopen the very inode we hold, not whatever the path names by now.
        keepalive = os.open(f"/proc/self/fd/{reader}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(reader)
        raise
    return reader, keepalive, st


def remove_pipe(path: str, st: os.stat_result, *, remove_dir: bool = False) -> None:
    """Remove ``path`` if it still names the pipe ``st`` (and, if asked, its directory if empty)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        return  # another server's pipe took the path: leave it
    os.unlink(path)
    if remove_dir:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))
