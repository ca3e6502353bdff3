"""The request that arms or releases one timer, and its limits: the one schema.

Every limit lives here once, as a msgspec constraint on a field; the decoders and
:mod:`timer_api._check` enforce these constraints and nothing else.
"""

from __future__ import annotations

import sys
from typing import Annotated

import msgspec

__all__ = ["MAX_SCOPE_LENGTH", "MAX_SIGNAL", "PID_T_MAX", "TimerRequest"]

_FINITE = msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)

#: Largest value of the kernel's ``pid_t``; a bigger "pid" cannot name a process.
PID_T_MAX = 2**31 - 1

Pid = Annotated[int, msgspec.Meta(gt=0, le=PID_T_MAX)]
Seconds = Annotated[float, _FINITE]
#: Largest signal number (Linux's SIGRTMAX).
MAX_SIGNAL = 64
#: A signal number (1 to 64), or 0 or less for "observe only" (torch's meaning).
SignalNumber = Annotated[int, msgspec.Meta(ge=-PID_T_MAX - 1, le=MAX_SIGNAL)]
#: Longest ``scope_id`` a server accepts, in characters.
MAX_SCOPE_LENGTH = 2048

ScopeId = Annotated[str, msgspec.Meta(max_length=MAX_SCOPE_LENGTH)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
WireVersion = Annotated[int, msgspec.Meta(ge=1, le=1)]


class TimerRequest(msgspec.Struct, gc=False):
    """Arm, re-arm or release the timer ``scope_id`` of worker ``worker_id``.

    The first three fields and their order are those of
    ``torch.distributed.elastic.timer.TimerRequest``; the rest are optional
    extensions that old peers ignore. Instances compare by value. They hold only
    numbers, strings and ``None``, so they are not tracked by the garbage collector
    (``gc=False``): building many (a server answering ``get_expired_timers``) costs
    no collections.

    Fields:
        worker_id: pid of the worker process (``"pid"`` on the wire).
        scope_id: name of the timer within the worker.
        expiration_time: deadline as ``time.time()`` seconds; negative releases the timer.
        signal: signal to send on expiry; ``None`` (absent or ``null`` on the wire)
            leaves the choice to the server; 0 or a negative number asks it to report
            the expiry and send nothing (torch's meaning of those values).
        start_time: the worker's start time in clock ticks after boot
            (``/proc/<pid>/stat`` field 22); proves which process sent the request.
            ``None``: unknown, the server pins what it sees on first receipt.
        deadline: the same deadline on ``time.monotonic()``; ``None``: the server
            derives it from ``expiration_time`` on receipt.
        thread_id: ``threading.get_ident()`` of the thread that armed the timer.
        version: wire-format version, always 1 (see docs/wire-format.md).
        signal_is_fallback: on the wire only: ``true`` says that ``signal`` is there for
            servers that need a number (torch's) and that a server with a policy is to
            choose; the codec decodes such a request as ``signal=None``.
    """

    worker_id: Pid = msgspec.field(name="pid")
    scope_id: ScopeId
    expiration_time: Seconds
    signal: SignalNumber | None = None
    start_time: NonNegative | None = None
    deadline: Seconds | None = None
    thread_id: NonNegative | None = None
    version: WireVersion = 1
    signal_is_fallback: bool = False

    @property
    def is_release(self) -> bool:
        """Tell whether this request releases its timer rather than arming it."""
        return self.expiration_time < 0
