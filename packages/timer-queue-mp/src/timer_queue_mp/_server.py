"""LocalTimerServer: the watchdog engine fed by a multiprocessing queue."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
        super().__init__(
            MultiprocessingRequestQueue(mp_queue),
            max_interval,
            daemon,
            policy=policy,
            wall_clock=wall_clock,
        )
