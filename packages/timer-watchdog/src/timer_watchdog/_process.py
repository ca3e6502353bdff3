"""Read worker processes from /proc and signal them only once their identity is proven.

A worker is ``(pid, start_time)``. :class:`Target` opens a pidfd first, then checks
that the process behind the pid still has the pinned start time, then sends through
the pidfd, so a pid recycled in between can never receive the signal. Where the
kernel has no pidfd, it re-reads the start time right before ``os.kill``.
"""

from __future__ import annotations

import errno
import os
import select
import signal
from typing import NamedTuple

from timer_api import process_stat

__all__ = [
    "ProcStatus",
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


class ProcessGone(Exception):  # noqa: N818 - a state, not an error
    """Raise when the worker no longer exists: it exited, or its pid now names another process."""


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


def is_protected(pid: int) -> bool:
    """Tell whether ``pid`` must never be signalled: pid <= 1, this process, or its group."""
    return pid <= 1 or pid == os.getpid() or pid == os.getpgrp()


def _readable(fd: int) -> bool:
    """Tell whether a pidfd polls readable, which means its process has exited."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class Procfs:
    """Read process facts from /proc; the engine's only view of process state.

    Tests substitute a subclass to simulate states that cannot be produced on
    demand (a worker stuck in ``D`` state).
    """

    def stat(self, pid: int) -> tuple[str, int] | None:
        """Return ``(state, start_time)`` of ``pid`` from ``/proc/<pid>/stat``, or ``None`` if gone."""
        return process_stat(pid)

    def status(self, pid: int) -> ProcStatus | None:
        """Return the state, uids and caught signals of ``pid``, or ``None`` if it is gone."""
        try:
            with open(f"/proc/{pid}/status", "rb") as file:
                data = file.read()
        except OSError:
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

        Dead means: its pidfd polls readable, its pid is gone or names another
        process, or it is a zombie.
        """
        if pidfd is not None and _readable(pidfd):
            return None
        stat = self.stat(pid)
        if stat is None or stat[1] != start_time or stat[0] in _DEAD_STATES:
            return None
        return stat[0]

    def parent(self, pid: int) -> int | None:
        """Return the parent pid of ``pid`` from ``/proc/<pid>/stat``, or ``None`` if it is gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                data = file.read()
        except OSError:
            return None
        fields = data[data.rfind(b")") + 2 :].split()
        return int(fields[1]) if len(fields) > 1 else None

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
        """Tell whether ``pid`` has a handler for ``signum`` (SigCgt), so the signal will not kill it."""
        status = self.status(pid)
        return status is not None and bool(status.sigcgt >> (signum - 1) & 1)


class Target:
    """A worker proven to be ``(pid, start_time)``, ready to be signalled; close it when done."""

    __slots__ = ("_procfs", "pid", "pidfd", "start_time")

    def __init__(self, procfs: Procfs, pid: int, start_time: int) -> None:
        """Open worker ``(pid, start_time)``; raise :class:`ProcessGone` or :class:`ProtectedProcess`."""
        if is_protected(pid):
            raise ProtectedProcess(f"pid {pid} is protected")
        self._procfs = procfs
        self.pid = pid
        self.start_time = start_time
        self.pidfd: int | None = None
        if _pidfd_open is not None and _pidfd_send_signal is not None:
            try:
                self.pidfd = _pidfd_open(pid)
            except ProcessLookupError:
                raise ProcessGone(f"pid {pid} does not exist") from None
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                    raise
                # No pidfd on this kernel (or in this sandbox): checked os.kill instead.
        try:
            self._verify()
        except BaseException:
            self.close()
            raise

    def _verify(self) -> None:
        """Raise :class:`ProcessGone` unless the pid still names the live worker."""
        stat = self._procfs.stat(self.pid)
        if stat is None:
            raise ProcessGone(f"pid {self.pid} exited")
        if stat[1] != self.start_time:
            raise ProcessGone(f"pid {self.pid} now names another process")
        if stat[0] in _DEAD_STATES:
            raise ProcessGone(f"pid {self.pid} exited (state {stat[0]})")

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
