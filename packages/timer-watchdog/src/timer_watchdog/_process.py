"""Read worker processes from /proc and signal them only through a handle opened on admission.

A worker is ``(pid, start_time)``. :class:`Target` opens a pidfd on the pid first,
then reads the start time of the process behind it and checks that the pidfd's
process is still alive, so the pidfd names exactly the process whose start time was
read. The server opens one when it admits a worker and signals only through it, so
a signal can only reach the process that was proven to be the requester, even if
its pid is reused within one clock tick (where ``(pid, start_time)`` repeats).

Liveness comes from the pidfd (it polls readable once the whole thread group has
exited), so a worker whose main thread exited while other threads run is alive.
Where the kernel has no pidfd (before Linux 5.3, some sandboxes, or when the
server is out of file descriptors) the target falls back to ``/proc``: it re-reads
the start time right before ``os.kill``, and counts a zombie leader with live
threads as alive; a pid reused within one clock tick cannot be told apart then.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
from typing import NamedTuple

from timer_api import process_stat

__all__ = [
    "ProcStatus",
    "PidReused",
    "ProcessGone",
    "Procfs",
    "ProtectedProcess",
    "Target",
    "is_protected",
]

#: States of a process that has exited (a zombie waits only for its parent).
_DEAD_STATES = frozenset("ZXx")

_pidfd_open = getattr(os, "pidfd_open", None)
_pidfd_send_signal = getattr(signal, "pidfd_send_signal", None)

logger = logging.getLogger("timer_watchdog")
#: Why a pidfd could not be opened, once logged.
_warned_no_pidfd: set[int] = set()
#: Why /proc could not be read for a worker taken to be alive, once logged.
_warned_unreadable: set[int | None] = set()
#: The errors reading a process's /proc files gives once the process is gone.
_GONE = (errno.ENOENT, errno.ESRCH)


class ProcessGone(Exception):  # noqa: N818 - a state, not an error
    """Raise when the worker no longer exists: it exited, or its pid now names another process."""


class PidReused(ProcessGone):
    """Raise when the pid names a live process whose start time is not the claimed one."""


class ProtectedProcess(Exception):  # noqa: N818 - a refusal, not an error
    """Raise when asked to signal pid <= 1, the server itself or the server's process group."""


class ProcStatus(NamedTuple):
    """The parts of ``/proc/<pid>/status`` the engine uses."""

    #: One-letter state (``R``, ``S``, ``D``, ``T``, ``Z``, ...).
    state: str
    #: Real, effective, saved and filesystem uid.
    uids: tuple[int, ...]
    #: Bit mask of the signals the process catches (bit ``n - 1`` for signal ``n``).
    sigcgt: int


#: What ``select`` counts as readable.
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def is_protected(pid: int) -> bool:
    """Tell whether ``pid`` must never be signalled: pid <= 1, this process, or its group."""
    return pid <= 1 or pid == os.getpid() or pid == os.getpgrp()


def _readable(fd: int) -> bool:
    """Tell whether a pidfd polls readable, which means its whole thread group has exited.

    ``poll``, not ``select``: the latter refuses a descriptor above 1023, which a
    server that holds many files (or watches many workers) gives its pidfds.
    """
    poller = select.poll()
    poller.register(fd, _READABLE)
    for _, events in poller.poll(0):
        if events & select.POLLNVAL:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return bool(events & _READABLE)
    return False


def _open_pidfd(pid: int) -> int | None:
    """Open a pidfd on ``pid``; ``None`` where pidfds are unavailable; raise :class:`ProcessGone`."""
    if _pidfd_open is None or _pidfd_send_signal is None:
        _warn_no_pidfd(errno.ENOSYS)
        return None
    try:
        fd: int = _pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessGone(f"pid {pid} does not exist") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EMFILE, errno.ENFILE):
            raise
        _warn_no_pidfd(exc.errno)
        return None
    return fd


def _warn_unreadable(pid: int, exc: OSError) -> None:
    """Say, once per cause, that a worker is kept because /proc could not be read."""
    if exc.errno not in _warned_unreadable:
        _warned_unreadable.add(exc.errno)
        logger.warning(
            "cannot read /proc/%d (%s): the worker is taken to be alive until it can be",
            pid,
            exc.strerror or exc,
        )


def _warn_no_pidfd(code: int) -> None:
    """Say once per cause that workers are identified by /proc alone."""
    if code not in _warned_no_pidfd:
        _warned_no_pidfd.add(code)
        logger.warning(
            "cannot open a pidfd (%s): identifying workers by /proc start time instead, "
            "which cannot tell apart a pid reused within one clock tick",
            os.strerror(code),
        )


class Procfs:
    """Read process facts from /proc; the engine's only view of process state.

    Tests substitute a subclass to simulate states that cannot be produced on
    demand (a worker stuck in ``D`` state).
    """

    def stat(self, pid: int) -> tuple[str, int] | None:
        """Return ``(state, start_time)`` of ``pid`` from ``/proc/<pid>/stat``, or ``None`` if gone.

        Like every read here, it raises ``OSError`` when /proc cannot be read for
        another reason than the process being gone (no file descriptor left, say):
        not knowing is never taken for an exited process.
        """
        stat = process_stat(pid, strict=True)
        return None if stat is None else (stat.state, stat.start_time)

    def status(self, pid: int) -> ProcStatus | None:
        """Return the state, uids and caught signals of ``pid``, or ``None`` if it is gone."""
        try:
            with open(f"/proc/{pid}/status", "rb") as file:
                data = file.read()
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            return None
        state, sigcgt = "?", 0
        uids: tuple[int, ...] = ()
        for line in data.splitlines():
            key, _, value = line.partition(b":")
            if key == b"State":
                state = value.strip()[:1].decode("ascii", "replace")
            elif key == b"Uid":
                uids = tuple(int(part) for part in value.split())
            elif key == b"SigCgt":
                sigcgt = int(value.strip(), 16)
        if not uids:
            return None
        return ProcStatus(state, uids, sigcgt)

    def liveness(self, pid: int, start_time: int, pidfd: int | None = None) -> str | None:
        """Return the /proc state letter of worker ``(pid, start_time)``, or ``None`` if it is dead.

        With a pidfd, dead means the pidfd polls readable (every thread has exited);
        the letter is then only informative (``Z`` for a main thread that exited
        while other threads run, ``?`` when /proc cannot be read). Without one, dead
        means its pid is gone or names another process, or it is a zombie with no
        live thread left; ``OSError`` when /proc cannot be read.
        """
        if pidfd is not None:
            if _readable(pidfd):
                return None
            try:
                stat = self.stat(pid)
            except OSError:
                return "?"
            return "?" if stat is None else stat[0]
        stat = self.stat(pid)
        if stat is None or stat[1] != start_time:
            return None
        if stat[0] in _DEAD_STATES and not (stat[0] == "Z" and self.threads(pid) > 1):
            return None
        return stat[0]

    def threads(self, pid: int) -> int:
        """Return how many threads of ``pid`` exist (an exited main thread included), 0 if gone."""
        try:
            return len(os.listdir(f"/proc/{pid}/task"))
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            return 0

    def parent(self, pid: int) -> int | None:
        """Return the parent pid of ``pid`` from ``/proc/<pid>/stat``, or ``None`` if it is gone."""
        stat = process_stat(pid, strict=True)
        return None if stat is None else stat.ppid

    def descends_from(self, pid: int, root: int) -> bool:
        """Tell whether ``pid`` is ``root`` or one of its descendants (walks the parent chain)."""
        seen = 0
        while pid > 1 and seen < 4096:
            if pid == root:
                return True
            parent = self.parent(pid)
            if parent is None:
                return False
            pid, seen = parent, seen + 1
        return pid == root

    def same_user(self, status: ProcStatus) -> bool:
        """Tell whether a process belongs to the server's user, as the kernel judges ``kill()``.

        The server's real or effective uid must be the process's real or saved uid.
        """
        mine = {os.getuid(), os.geteuid()}
        return status.uids[0] in mine or (len(status.uids) > 2 and status.uids[2] in mine)

    def catches(self, pid: int, signum: int) -> bool:
        """Tell whether ``pid`` has a handler for ``signum`` (SigCgt), so the signal will not kill it.

        ``False`` when /proc cannot be read: nothing is then waited for from the worker.
        """
        try:
            status = self.status(pid)
        except OSError:
            return False
        return status is not None and bool(status.sigcgt >> (signum - 1) & 1)


class Target:
    """A worker proven to be ``(pid, start_time)``, ready to be signalled; close it when done.

    Opening one is the proof: a pidfd is opened first, then the start time of the
    process behind the pid is read (and compared with ``start_time`` if one is
    claimed), then the pidfd is checked to be still alive, so it names the very
    process whose start time was read.
    """

    __slots__ = ("_procfs", "pid", "pidfd", "start_time")

    def __init__(self, procfs: Procfs, pid: int, start_time: int | None = None) -> None:
        """Open worker ``pid``; raise :class:`ProcessGone`, :class:`PidReused` or :class:`ProtectedProcess`.

        ``start_time``: the one the requester claims; ``None`` pins what /proc shows.
        """
        if is_protected(pid):
            raise ProtectedProcess(f"pid {pid} is protected")
        self._procfs = procfs
        self.pid = pid
        self.pidfd = _open_pidfd(pid)
        try:
            stat = procfs.stat(pid)
            if stat is None:
                raise ProcessGone(f"pid {pid} exited")
            if start_time is not None and stat[1] != start_time:
                raise PidReused(f"pid {pid} now names another process")
            self.start_time = stat[1]
            if self.state() is None:
                raise ProcessGone(f"pid {pid} exited (state {stat[0]})")
        except BaseException:
            self.close()
            raise

    def _verify(self) -> None:
        """Raise :class:`ProcessGone` unless the pid still names the live worker."""
        if self._procfs.liveness(self.pid, self.start_time) is None:
            raise ProcessGone(f"pid {self.pid} exited or now names another process")

    def send(self, signum: int) -> None:
        """Send ``signum`` to the worker; raise :class:`ProcessGone` if it is gone."""
        try:
            if self.pidfd is not None:
                assert _pidfd_send_signal is not None
                _pidfd_send_signal(self.pidfd, signum)
            else:
                self._verify()
                os.kill(self.pid, signum)
        except ProcessLookupError:
            raise ProcessGone(f"pid {self.pid} exited") from None

    def alive(self) -> bool:
        """Tell whether the worker still runs (a pidfd poll; /proc only without a pidfd).

        ``True`` when /proc cannot be read (see :meth:`Procfs.stat`): a worker is
        forgotten only once it is known to be gone.
        """
        if self.pidfd is not None:
            return not _readable(self.pidfd)
        try:
            return self._procfs.liveness(self.pid, self.start_time) is not None
        except OSError as exc:
            _warn_unreadable(self.pid, exc)
            return True

    def state(self) -> str | None:
        """Return the worker's /proc state letter, or ``None`` once it is dead."""
        return self._procfs.liveness(self.pid, self.start_time, self.pidfd)

    def catches(self, signum: int) -> bool:
        """Tell whether the worker catches ``signum``."""
        return self._procfs.catches(self.pid, signum)

    def close(self) -> None:
        """Close the pidfd; calling it again does nothing."""
        fd, self.pidfd = self.pidfd, None
        if fd is not None:
            os.close(fd)
