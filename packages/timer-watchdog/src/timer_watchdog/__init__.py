"""The watchdog engine every timer server runs on.

A transport feeds requests into a :class:`WatchdogServer`; the server arms timers on
the monotonic clock and reaps a worker whose timer expires, by pidfd, after proving
the pid still names that worker::

    from timer_watchdog import WatchdogPolicy, WatchdogServer, encode_event

    server = WatchdogServer(queue, max_interval=60, policy=WatchdogPolicy(grace=5.0))
    server.subscribe(lambda event: log.write(encode_event(event)))
    server.start()
    ...
    server.stop()
"""

from .__about__ import __version__
from ._events import (
    Armed,
    ClockSkew,
    Event,
    Exited,
    Expired,
    Frame,
    JobSnapshot,
    LoopHealth,
    ProcessSnapshot,
    Reaped,
    Rejected,
    Released,
    Signalled,
    ThreadStack,
    Unkillable,
    WatchdogStats,
    decode_event,
    encode_event,
)
from ._jobreport import JobReport, ProcessGroup, build_report, format_report
from ._policy import TERMINATING_SIGNALS, WatchdogPolicy
from ._server import WatchdogServer
from ._transports import Transport

__all__ = [
    "TERMINATING_SIGNALS",
    "Armed",
    "ClockSkew",
    "Event",
    "Exited",
    "Expired",
    "Frame",
    "JobReport",
    "JobSnapshot",
    "LoopHealth",
    "ProcessGroup",
    "ProcessSnapshot",
    "Reaped",
    "Rejected",
    "Released",
    "Signalled",
    "ThreadStack",
    "Transport",
    "Unkillable",
    "WatchdogPolicy",
    "WatchdogServer",
    "WatchdogStats",
    "__version__",
    "build_report",
    "decode_event",
    "encode_event",
    "format_report",
]
