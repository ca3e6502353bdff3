"""``FileTimerServer``: the watchdog engine serving a named pipe, with torch's constructor."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from timer_watchdog import Event, Expired, Signalled, WatchdogPolicy, WatchdogServer
from timer_watchdog._process import Procfs

from ._queue import FileRequestQueue
from ._request import FileTimerRequest

__all__ = ["FileTimerServer"]

logger = logging.getLogger("timer_file")

LogEvent = Callable[[str, FileTimerRequest | None], None]

#: Longest wait of one :meth:`FileTimerServer.run_once` round, in seconds.
_RUN_ONCE_STEP = 0.01
#: Least time :meth:`FileTimerServer.run_once` gives reaps to be confirmed, in seconds.
_RUN_ONCE_REAP_LIMIT = 2.0


class _ConsultingProcfs(Procfs):
    """Read processes from /proc, and count a worker as exited when ``is_running`` says so.

    ``is_running`` can only make the engine drop a worker's timers without
    signalling it (as torch's server does for a process that is not running); a
    worker it calls running is still proven by the engine before any signal.
    """

    def __init__(self, is_running: Callable[[int], bool]) -> None:
        self._is_running = is_running

    def liveness(self, pid: int, start_time: int, pidfd: int | None = None) -> str | None:
        """Return ``None`` (exited) if ``is_running(pid)`` is false, else the engine's answer."""
        try:
            running = self._is_running(pid)
        except Exception:
            logger.exception("is_process_running(%d) raised; counting the process as running", pid)
            running = True
        if not running:
            return None
        return super().liveness(pid, start_time, pidfd)


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

    As in torch, :meth:`is_process_running` is consulted (also when a subclass or a
    ``mock.patch`` replaces it): a worker it calls not running has its timers
    dropped unsignalled. It cannot make the server signal anything: a worker it
    calls running is still identified by pid and start time before any signal.
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
        self._draining = False
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
        self._procfs = _ConsultingProcfs(self._consult_is_process_running)

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

    def run_once(self) -> None:
        """Stop the loop, process what is waiting in the pipe, then remove the pipe.

        torch's test helper, in the caller's thread once the loop thread has finished
        its round: the requests already written are read and registered (those that
        keep arriving, for at most ``max_interval``), the workers that exited are
        dropped, expired timers are handled, and the reaps this starts are given up to
        ``max(max_interval, 2)`` seconds to be confirmed. The pipe is then closed as by
        :meth:`stop`, which still logs ``"watchdog stopped"``; :meth:`start` serves again.
        """
        WatchdogServer.stop(self)
        self._draining = True
        try:
            end = time.monotonic() + self._max_interval
            self._run_watchdog()
            while self._file_queue.size() and time.monotonic() < end:
                self._run_watchdog()
            self._next_sweep = 0.0  # the next round checks every worker, as torch's does
            self._run_watchdog()
            end = time.monotonic() + max(self._max_interval, _RUN_ONCE_REAP_LIMIT)
            while self.stats().reaping and time.monotonic() < end:
                self._run_watchdog()
        finally:
            self._draining = False
            self._file_queue.close()

    def get_last_progress_time(self) -> int:
        """Return when the last watchdog round finished (``int(time.time())``), as torch does."""
        return self._last_progress_time if self._is_client_started else int(time.time())

    @staticmethod
    def is_process_running(pid: int) -> bool:
        """Tell whether process ``pid`` exists and can be signalled (consulted by the server)."""
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def _consult_is_process_running(self, pid: int) -> bool:
        # Looked up on each call, so that a later override or patch is seen.
        return self.is_process_running(pid)

    def _wait_timeout(self) -> float:
        timeout = super()._wait_timeout()
        return min(timeout, _RUN_ONCE_STEP) if self._draining else timeout

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
