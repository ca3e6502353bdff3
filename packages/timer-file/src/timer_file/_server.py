"""``FileTimerServer``: the watchdog engine serving a named pipe, with torch's constructor."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from timer_watchdog import Event, Expired, Signalled, WatchdogPolicy, WatchdogServer

from ._queue import FileRequestQueue
from ._request import FileTimerRequest

__all__ = ["FileTimerServer"]

logger = logging.getLogger("timer_file")

LogEvent = Callable[[str, FileTimerRequest | None], None]


class FileTimerServer(WatchdogServer):
    """Reap workers whose timers, sent through the named pipe ``file_path``, expire.

    The constructor is torch's: it creates the pipe (privately, see
    :class:`FileRequestQueue`; ``file_path=None`` picks a path in a new private
    directory) and :meth:`stop` removes it. ``log_event(name, request)`` is called
    with torch's event names: ``"watchdog started"``, ``"watchdog stopped"``,
    ``"timer expired"`` and ``"kill worker process"``. ``run_id`` is kept for logs.

    Unlike torch's server, it never signals its own process after a reap unless
    the policy says ``exit_on_reap=True``. ``policy`` and ``wall_clock`` go to
    :class:`timer_watchdog.WatchdogServer`.
    """

    def __init__(
        self,
        file_path: str | None,
        run_id: str = "",
        max_interval: float = 10,
        daemon: bool = True,
        log_event: LogEvent | None = None,
        *,
        policy: WatchdogPolicy | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._file_queue = FileRequestQueue(file_path)
        try:
            super().__init__(
                self._file_queue, max_interval, daemon, policy=policy, wall_clock=wall_clock
            )
        except BaseException:
            self._file_queue.close()
            raise
        self._run_id = run_id
        self._log_event = log_event
        self._last_progress_time = int(time.time())
        self._is_client_started = False
        if log_event is not None:
            self.subscribe(self._forward_event)

    @property
    def file_path(self) -> str:
        """Return the path of the pipe that clients write to."""
        return self._file_queue.file_path

    @property
    def run_id(self) -> str:
        """Return the run id given at construction."""
        return self._run_id

    def start(self) -> None:
        """Create the pipe again if :meth:`stop` removed it, and start the watchdog thread."""
        self._file_queue.open()
        super().start()
        self._is_client_started = True
        self._log("watchdog started", None)

    def stop(self) -> None:
        """Stop the watchdog thread, then close and remove the pipe; calling it again does nothing."""
        super().stop()
        self._file_queue.close()
        if self._is_client_started:
            self._is_client_started = False
            self._log("watchdog stopped", None)

    def get_last_progress_time(self) -> int:
        """Return when the last watchdog round finished (``int(time.time())``), as torch does."""
        return self._last_progress_time if self._is_client_started else int(time.time())

    @staticmethod
    def is_process_running(pid: int) -> bool:
        """Tell whether process ``pid`` exists and can be signalled."""
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def _run_watchdog(self) -> None:
        super()._run_watchdog()
        self._last_progress_time = int(time.time())

    def _log(self, name: str, request: FileTimerRequest | None) -> None:
        if self._log_event is None:
            return
        try:
            self._log_event(name, request)
        except Exception:
            logger.exception("log_event(%r) raised; ignored", name)

    def _forward_event(self, event: Event) -> None:
        """Translate the engine's events into torch's ``log_event`` calls."""
        if isinstance(event, Expired):
            request = FileTimerRequest(
                event.pid, event.scope_id, event.expiration_time, event.action
            )
            self._log("timer expired", request)
        elif isinstance(event, Signalled):
            expiration = event.time - event.late
            request = FileTimerRequest(event.pid, event.scope_id, expiration, event.signal)
            self._log("kill worker process", request)
