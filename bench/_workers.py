"""A live stand-in worker: a real process that timers can name and that never runs Python."""

from __future__ import annotations

import subprocess

__all__ = ["SleepingWorker"]


class SleepingWorker:
    """Start ``sleep`` as a child; its pid (and start time) identify the timers' worker."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(["sleep", "900"])
        self.pid = self._proc.pid
        self.start_time = _start_time(self.pid)

    def close(self) -> None:
        """Kill and reap the child."""
        self._proc.kill()
        self._proc.wait(10)

    def __enter__(self) -> SleepingWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_time(pid: int) -> int:
    """Return field 22 of ``/proc/<pid>/stat`` (clock ticks after boot)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    return int(data[data.rindex(b")") + 2 :].split()[19])
