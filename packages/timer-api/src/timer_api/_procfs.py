"""Read a process's start time, the half of a worker's identity that a pid lacks."""

from __future__ import annotations

__all__ = ["process_start_time"]


def process_start_time(pid: int) -> int | None:
    """Return the start time of process ``pid`` in clock ticks after boot, or ``None`` if it is gone.

    This is field 22 of ``/proc/<pid>/stat``. A pid can be reused once its process
    has exited, but never with the same start time, so ``(pid, start_time)`` names
    one process for the whole uptime of the host.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = data[data.rfind(b")") + 2 :].split()
    # Empty or cut short when the process vanished while the file was read.
    return int(fields[19]) if len(fields) > 19 else None
