"""Read a process's state and start time, the half of a worker's identity that a pid lacks."""

from __future__ import annotations

import errno
from typing import NamedTuple

__all__ = ["ProcessStat", "process_start_time", "process_stat"]

#: The errors reading a process's /proc files gives once the process is gone.
_GONE = (errno.ENOENT, errno.ESRCH)


class ProcessStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` that the timer packages use."""

    #: One-letter state (``R``, ``S``, ``D``, ``T``, ``Z``, ...).
    state: str
    #: Field 22: start time in clock ticks after boot.
    start_time: int
    #: Parent pid.
    ppid: int
    #: Process group id.
    pgid: int


def process_stat(pid: int, *, strict: bool = False) -> ProcessStat | None:
    """Return the state, start time, parent and group of process ``pid``, or ``None`` if gone.

    Read from ``/proc/<pid>/stat``, the one place the packages read it. ``strict``:
    an error that does not mean the process is gone (no file descriptor left, say)
    is raised instead of being taken for a gone process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError as exc:
        if strict and exc.errno not in _GONE:
            raise
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = data[data.rfind(b")") + 2 :].split()
    # Empty or cut short when the process vanished while the file was read.
    if len(fields) <= 19:
        return None
    return ProcessStat(
        fields[0].decode("ascii", "replace"), int(fields[19]), int(fields[1]), int(fields[2])
    )


def process_start_time(pid: int) -> int | None:
    """Return the start time of process ``pid`` in clock ticks after boot, or ``None`` if it is gone.

    This is field 22 of ``/proc/<pid>/stat``. A pid can be reused once its process
    has exited, but never with the same start time, so ``(pid, start_time)`` names
    one process for the whole uptime of the host.
    """
    stat = process_stat(pid)
    return None if stat is None else stat[1]
