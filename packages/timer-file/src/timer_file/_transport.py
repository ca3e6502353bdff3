"""``PipeTransport``: the named-pipe transport of the ``timer-watchdog`` command.

Registered in the ``timer_watchdog.transports`` entry-point group as ``pipe``, so
that the command finds it without timer-watchdog importing timer_file.
"""

from __future__ import annotations

import os

from timer_watchdog import WatchdogPolicy, WatchdogServer

from ._client import TIMER_FILE_ENV
from ._queue import FileRequestQueue

__all__ = ["PIPE_ENV", "PipeTransport"]

#: Our own variable naming the pipe, set next to torch's ``TORCHELASTIC_TIMER_FILE``.
PIPE_ENV = "TIMER_WATCHDOG_PIPE"


class PipeTransport:
    """Create a server's named pipe at ``path``, or in a new private directory if ``None``.

    The pipe exists as soon as the transport is built (``OSError`` if it cannot be
    made, :class:`~timer_file.UnsafePipeError` for a path this user must not take
    over); :meth:`close` removes it, and the private directory with it.
    """

    def __init__(self, path: str | None = None) -> None:
        self._queue = FileRequestQueue(None if path is None else os.path.abspath(path))

    @property
    def path(self) -> str:
        """Return the pipe's path."""
        return self._queue.file_path

    def environment(self) -> dict[str, str]:
        """Return the variables that point a worker's ``FileTimerClient`` at this pipe."""
        return {TIMER_FILE_ENV: self.path, PIPE_ENV: self.path}

    def server(self, *, max_interval: float, policy: WatchdogPolicy) -> WatchdogServer:
        """Build a (not started) server that reads this pipe."""
        return WatchdogServer(self._queue, max_interval, policy=policy)

    def problem(self) -> str | None:
        """Say whether the pipe was removed or replaced, so that workers can no longer reach us."""
        return self._queue.problem()

    def close(self) -> None:
        """Close and remove the pipe; calling it again does nothing."""
        self._queue.close()
