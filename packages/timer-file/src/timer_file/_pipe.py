"""Create, open and remove the server's named pipe without trusting what is at its path."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile

__all__ = ["PIPE_SIZE", "UnsafePipeError", "default_pipe_path", "open_pipe", "remove_pipe"]

#: Buffer size the server asks the kernel for, so that bursts fit while it is busy.
#: Clients take a pipe larger than the kernel's default as the sign of a server that
#: serves writers which keep the pipe open (see ``FileTimerClient``).
PIPE_SIZE = 1 << 20

_PIPE_NAME = "timer.pipe"
_DIR_PREFIX = "timer-file-"


class UnsafePipeError(PermissionError):
    """Raise when the pipe's path is a symlink, not a FIFO, or not owned by this user."""


def default_pipe_path() -> str:
    """Create a private (0700) directory and return a pipe path inside it."""
    return os.path.join(tempfile.mkdtemp(prefix=_DIR_PREFIX), _PIPE_NAME)


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
    if it is a FIFO owned by this user; a symlink, any other file, or another user's
    FIFO raises :class:`UnsafePipeError` and is left alone. Both descriptors
    are non-blocking and close-on-exec: the reader never waits for a first writer,
    and the keep-alive writer keeps the reader from seeing end-of-file when the last
    client goes away.
    """
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        _check(path, os.lstat(path))
        # A pipe left by a server that died: replace it, so that clients see a new
        # inode and replay their armed timers into this server.
        os.unlink(path)
        os.mkfifo(path, 0o600)
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
