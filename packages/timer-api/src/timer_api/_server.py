"""The abstract server: a loop that takes requests, registers them and reaps expired workers."""

from __future__ import annotations

import abc
import threading
import time
from typing import Any

from ._errors import InvalidRequestError
from ._log import logger
from ._queue import RequestQueue
from ._request import TimerRequest

__all__ = ["TimerServer"]


#: How long :meth:`TimerServer.stop` waits for the loop thread before returning.
STOP_TIMEOUT = 2.0


class TimerServer(abc.ABC):
    """Run the watchdog loop over ``request_queue`` in a thread.

    One round (:meth:`_run_watchdog`) keeps torch's semantics: take a batch from the
    queue, register it, reap every worker with an expired timer, and clear the
    timers of the workers that were reaped. A ``_reap_worker`` that raises counts as
    reaped (and is logged); one that returns ``False`` is retried next round.
    ``max_interval`` bounds how long one round waits for requests.
    """

    def __init__(
        self, request_queue: RequestQueue, max_interval: float, daemon: bool = True
    ) -> None:
        self._request_queue = request_queue
        self._max_interval = max_interval
        self._daemon = daemon
        self._watchdog_thread: threading.Thread | None = None
        self._stop_signaled = False
        self._lifecycle_lock = threading.Lock()

    @abc.abstractmethod
    def register_timers(self, timer_requests: list[TimerRequest]) -> None:
        """Arm, re-arm or release (negative ``expiration_time``) the requested timers."""

    @abc.abstractmethod
    def clear_timers(self, worker_ids: set[Any]) -> None:
        """Drop every timer of the given workers."""

    @abc.abstractmethod
    def get_expired_timers(self, deadline: float) -> dict[Any, list[TimerRequest]]:
        """Return the timers that expire before ``deadline`` (``time.time()`` seconds), by worker."""

    @abc.abstractmethod
    def _reap_worker(self, worker_id: Any) -> bool:
        """Stop worker ``worker_id``; return ``False`` to be asked again next round."""

    def _reap_worker_no_throw(self, worker_id: Any) -> bool:
        """Reap ``worker_id``, logging an exception and counting it as reaped."""
        try:
            return self._reap_worker(worker_id)
        except Exception:
            logger.exception("error reaping worker %s; counting it as reaped", worker_id)
            return True

    def _reject(self, error: InvalidRequestError) -> None:
        """Handle an item of a batch that is not a valid request (default: log it)."""
        logger.warning("rejected timer request: %s", error)

    def _wait_timeout(self) -> float:
        """Return how long the next round may wait for requests."""
        return self._max_interval

    def _take_batch(self, timeout: float) -> list[TimerRequest]:
        """Take the next batch from the queue; hand its invalid items to :meth:`_reject`."""
        batch = self._request_queue.get(max(1, self._request_queue.size()), timeout)
        requests: list[TimerRequest] = []
        for item in batch:
            if isinstance(item, InvalidRequestError):
                self._reject(item)
            else:
                requests.append(item)
        return requests

    def _run_watchdog(self) -> None:
        """Run one round: take a batch, register it, reap the expired, clear the reaped."""
        self.register_timers(self._take_batch(self._wait_timeout()))
        reaped: set[Any] = set()
        for worker_id in self.get_expired_timers(time.time()):
            if self._reap_worker_no_throw(worker_id):
                reaped.add(worker_id)
        self.clear_timers(reaped)

    def _watchdog_loop(self) -> None:
        # A loop left running by a stop() that timed out must not come back to life
        # when start() clears the flag again: only the current thread keeps going.
        # (A loop run in the foreground, with no thread started, stops on the flag alone.)
        this_thread = threading.current_thread()
        while not self._stop_signaled and self._watchdog_thread in (None, this_thread):
            try:
                self._run_watchdog()
            except Exception:
                logger.exception("error in the watchdog round; continuing")

    def start(self) -> None:
        """Start the loop thread; a second call while it runs does nothing."""
        with self._lifecycle_lock:
            if self._watchdog_thread is not None and self._watchdog_thread.is_alive():
                return
            thread = threading.Thread(
                target=self._watchdog_loop,
                name=f"{type(self).__name__}-watchdog",
                daemon=self._daemon,
            )
            self._watchdog_thread = thread
            self._stop_signaled = False
            thread.start()

    def stop(self) -> None:
        """Stop the loop and wait a bounded time for it; calling it again does nothing."""
        with self._lifecycle_lock:
            self._stop_signaled = True
            thread, self._watchdog_thread = self._watchdog_thread, None
            self._request_queue.interrupt()
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                logger.warning(
                    "watchdog thread still busy after %.1fs; left to finish as %s",
                    STOP_TIMEOUT,
                    "a daemon" if thread.daemon else "a non-daemon thread",
                )
