"""Read a process's state and start time, the half of a worker's identity that a pid lacks."""

from __future__ import annotations

__all__ = ["process_start_time", "process_stat"]


def process_stat(pid: int) -> tuple[str, int] | None:
    """Return ``(state, start_time)`` of process ``pid`` from ``/proc/<pid>/stat``, or ``None`` if gone.

    ``state`` is the one-letter state (``R``, ``S``, ``D``, ``Z``, ...); ``start_time``
    is field 22, in clock ticks after boot.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = data[data.rfind(b")") + 2 :].split()
    # Empty or cut short when the process vanished while the file was read.
    if len(fields) <= 19:
        return None
    return fields[0].decode("ascii", "replace"), int(fields[19])


def process_start_time(pid: int) -> int | None:
    """Return the start time of process ``pid`` in clock ticks after boot, or ``None`` if it is gone.

    This is field 22 of ``/proc/<pid>/stat``. A pid can be reused once its process
    has exited, but never with the same start time, so ``(pid, start_time)`` names
    one process for the whole uptime of the host.
    """
    stat = process_stat(pid)
    return None if stat is None else stat[1]
