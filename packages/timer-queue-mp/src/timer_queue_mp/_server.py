"""LocalTimerServer: the watchdog engine fed by a multiprocessing queue."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from timer_api import TimerRequest
from timer_watchdog import WatchdogPolicy, WatchdogServer

from ._queue import MultiprocessingRequestQueue

__all__ = ["LocalTimerServer"]


class LocalTimerServer(WatchdogServer):
    """Reap worker processes whose timers, sent by :class:`LocalTimerClient`, expire.

    The server of torch's name and signature: ``mp_queue`` is the queue the workers'
    clients put into, read through :class:`MultiprocessingRequestQueue`; everything
    else is :class:`timer_watchdog.WatchdogServer` (deadline-driven reaping, pid-reuse
    safety, ``policy``, events, :meth:`stats`). ``max_interval`` caps one wait of the
    loop; it does not delay reaping.

    Queue items that are not requests, and items lost to a worker that died while
    writing one, never reach :meth:`register_timers`: the queue keeps them aside and
    the server counts and reports each as a rejected request (``stats().rejected``,
    a ``Rejected`` event with its reason).
    """

    def __init__(
        self,
        mp_queue: Any,
        max_interval: float = 60,
        daemon: bool = True,
        *,
        policy: WatchdogPolicy | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._mp_requests = MultiprocessingRequestQueue(mp_queue)
        super().__init__(
            self._mp_requests,
            max_interval,
            daemon,
            policy=policy,
            wall_clock=wall_clock,
        )

    def _take_batch(self, timeout: float) -> list[TimerRequest]:
        """Take the next batch, and report what the queue set aside as not requests."""
        requests = super()._take_batch(timeout)
        for error in self._mp_requests.take_rejected():
            self._reject(error)
        return requests
