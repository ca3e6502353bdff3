"""Where a worker writes its stack dump when the server asks for one, and which signal asks.

The worker side is :func:`install_stack_dump`: it points :mod:`faulthandler` at the
worker's dump file for the dump signal, so that the server can ask for every
thread's Python stack before it kills the worker. The file is created afresh, mode
0600, never through a symlink, and only in a directory where no other user can plant
or swap files (see :func:`check_stack_directory`).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import stat
import threading
from typing import IO

from ._log import logger
from ._procfs import process_start_time
from ._signals import parse_signal

__all__ = [
    "DEFAULT_STACK_SIGNAL",
    "STACKS_DIR_ENV",
    "STACK_SIGNAL_ENV",
    "check_stack_directory",
    "install_stack_dump",
    "install_stack_dump_from_env",
    "stack_dump_path",
]


#: Environment variable naming the directory for stack dumps (set by ``timer-watchdog run --stacks``).
STACKS_DIR_ENV = "TIMER_WATCHDOG_STACKS"
#: Environment variable naming the signal number that asks a worker for a dump.
STACK_SIGNAL_ENV = "TIMER_WATCHDOG_STACK_SIGNAL"
#: The default dump signal: a real-time signal that nothing else in a Python worker uses.
DEFAULT_STACK_SIGNAL = int(signal.SIGRTMIN) + 4


def stack_dump_path(directory: str, pid: int, start_time: int) -> str:
    """Return the file that worker ``(pid, start_time)`` dumps its threads' stacks into."""
    return os.path.join(directory, f"worker-{pid}-{start_time}.stack")


def check_stack_directory(directory: str) -> None:
    """Raise ``PermissionError`` if users other than this one may plant files in ``directory``.

    A directory is refused when another user (not root) owns it, or everyone may write
    to it, or a group other than this process's may, unless it is sticky (as ``/tmp``
    is): there no one can remove or replace another user's file, and dump files are
    created new (``O_CREAT|O_EXCL|O_NOFOLLOW``), so the file written is always ours.
    Raises ``OSError`` if ``directory`` cannot be examined or is not a directory.
    """
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{directory} is not a directory")
    if st.st_mode & stat.S_ISVTX:
        return
    others = []
    if st.st_uid not in (os.geteuid(), 0):
        others.append(f"it belongs to uid {st.st_uid}")
    if st.st_mode & stat.S_IWOTH:
        others.append("everyone may write to it")
    elif st.st_mode & stat.S_IWGRP and st.st_gid != os.getegid():
        others.append(f"group {st.st_gid} may write to it")
    if others:
        raise PermissionError(
            f"stack directory {directory} is not safe: {' and '.join(others)}, and it is "
            "not sticky; use a directory only this user can write to (or chmod +t it)"
        )


def _create(path: str) -> IO[bytes]:
    """Create ``path`` new, mode 0600, and open it for writing; never follow a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FileExistsError(
            f"stack dump file {path} already exists and was not created by this process; "
            "not writing into it"
        ) from None
    return open(fd, "wb")


class _Installed:
    """What this process registered: kept alive so that the dump file stays open."""

    __slots__ = ("chain", "directory", "file", "path", "pid", "signum")

    def __init__(
        self, pid: int, directory: str, signum: int, chain: bool, path: str, file: IO[bytes]
    ) -> None:
        self.pid = pid
        self.directory = directory
        self.signum = signum
        self.chain = chain
        self.path = path
        self.file = file


_lock = threading.Lock()
_installed: _Installed | None = None
#: Per signal, whether a handler was there before ours (decided once, kept across forks).
_chain_for: dict[int, bool] = {}


def install_stack_dump(directory: str, signum: int = DEFAULT_STACK_SIGNAL) -> str:
    """Dump every thread's stack into this worker's file when ``signum`` arrives; return the file.

    The file is ``stack_dump_path(directory, pid, start_time)``; it is created (empty)
    now and written when the signal arrives. Calling it again in the same process
    with the same arguments does nothing; in a forked child it is done again for
    the child's own file. A handler already installed for ``signum`` still runs
    after the dump. Raises ``OSError`` if the file cannot be created (it exists
    already, or the directory is not safe: see :func:`check_stack_directory`) and
    ``ValueError`` for a signal number that cannot be caught.
    """
    global _installed
    directory = os.path.abspath(directory)
    signum = int(signum)
    with _lock:
        current = _installed
        pid = os.getpid()
        if (
            current is not None
            and current.pid == pid
            and current.directory == directory
            and current.signum == signum
        ):
            return current.path
        if signum in (signal.SIGKILL, signal.SIGSTOP) or not 0 < signum < signal.NSIG:
            raise ValueError(f"signal {signum} cannot carry a stack dump request")
        start_time = process_start_time(pid)
        if start_time is None:
            raise OSError(f"cannot read the start time of process {pid} from /proc")
        path = stack_dump_path(directory, pid, start_time)
        if current is not None and current.pid == pid and current.path == path:
            file = current.file  # only the signal changes
        else:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            check_stack_directory(directory)
            file = _create(path)
        if signum not in _chain_for:
            # Chaining into SIG_DFL would re-raise a signal whose default action
            # ends the process, so chain only into a handler that is really there.
            _chain_for[signum] = signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN)
        chain = _chain_for[signum]
        if current is not None and current.signum != signum:
            faulthandler.unregister(current.signum)
        faulthandler.register(signum, file, all_threads=True, chain=chain)
        _installed = _Installed(pid, directory, signum, chain, path, file)
        if current is not None and current.file is not file:
            current.file.close()
        return path


def install_stack_dump_from_env() -> str | None:
    """Call :func:`install_stack_dump` as the environment says; return the file, or ``None``.

    Reads :data:`STACKS_DIR_ENV` (the directory; unset or empty: do nothing) and
    :data:`STACK_SIGNAL_ENV` (a signal number or name; default
    :data:`DEFAULT_STACK_SIGNAL`). A worker must keep running when forensics
    cannot be set up, so a bad value is logged as a warning and ``None`` returned.
    """
    directory = os.environ.get(STACKS_DIR_ENV)
    if not directory:
        return None
    try:
        signum = _stack_signal(os.environ.get(STACK_SIGNAL_ENV, ""))
        return install_stack_dump(directory, signum)
    except (OSError, ValueError) as exc:
        logger.warning("no stack dump on request: %s", exc)
        return None


def _stack_signal(text: str) -> int:
    """Return the dump signal :data:`STACK_SIGNAL_ENV` names; empty gives the default."""
    if not text.strip():
        return DEFAULT_STACK_SIGNAL
    try:
        return parse_signal(text)
    except ValueError as exc:
        raise ValueError(f"{STACK_SIGNAL_ENV}: {exc}") from None


def _after_fork_in_child() -> None:
    """Give a forked child its own dump file, since its pid names a different one."""
    global _lock
    _lock = threading.Lock()
    current = _installed
    if current is None:
        return
    try:
        install_stack_dump(current.directory, current.signum)
    except (OSError, ValueError) as exc:
        # Never let the child write into its parent's file: stop catching the signal.
        faulthandler.unregister(current.signum)
        _forget()
        logger.warning("no stack dump on request in forked child: %s", exc)


def _forget() -> None:
    global _installed
    _installed = None


os.register_at_fork(after_in_child=_after_fork_in_child)
