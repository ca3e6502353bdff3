"""Build this process's requests: the one place a worker fills in who, when and from which thread."""

from __future__ import annotations

import os
import threading
import time

from ._check import check_arm, check_scope, check_signal
from ._codec import FALLBACK_SIGNAL
from ._procfs import process_start_time
from ._request import TimerRequest

__all__ = ["RequestBuilder"]

_getpid = os.getpid
_get_ident = threading.get_ident
_monotonic = time.monotonic
_wall = time.time


#: (pid, start time) of this process once read; ``None`` until first needed, and again
#: in a forked child (``os.register_at_fork``), which reads its own.
_IDENTITY: list[tuple[int, int | None] | None] = [None]


def _read_identity() -> tuple[int, int | None]:
    """Read, remember and return this process's pid and start time (clock ticks after boot)."""
    pid = _getpid()
    identity = _IDENTITY[0] = (pid, process_start_time(pid))
    return identity


def _forget_identity() -> None:
    _IDENTITY[0] = None


os.register_at_fork(after_in_child=_forget_identity)


class RequestBuilder:
    """Build the arm and release requests of this process, checked against the schema.

    Each request carries the process's pid and start time (read once per process:
    a forked child reads its own, through ``os.register_at_fork``), the deadline on
    both clocks and the calling thread. ``scope_id`` and ``expiration_time`` are
    checked as the server checks them (:func:`timer_api.check_request`), so a
    request the server would refuse raises :class:`InvalidRequestError` here.

    ``signal`` is the signal asked for on expiry (``None``: the server chooses, 0 or
    less: observe only). With ``fallback=True`` an arm with ``signal=None`` carries
    :data:`FALLBACK_SIGNAL` flagged ``signal_is_fallback``: what the JSON codec
    writes for torch's server anyway, built once here instead of on each encode.
    """

    __slots__ = ("_arm_signal", "_fallback", "signal")

    def __init__(self, signal: int | None = None, *, fallback: bool = False) -> None:
        check_signal(signal)
        signal = None if signal is None else int(signal)  # an IntEnum such as signal.SIGTERM
        self.signal = signal
        self._fallback = fallback and signal is None
        self._arm_signal = FALLBACK_SIGNAL if self._fallback else signal

    @staticmethod
    def identity() -> tuple[int, int | None]:
        """Return the pid and start time the requests carry."""
        return _IDENTITY[0] or _read_identity()

    def arm(self, scope_id: str, expiration_time: float) -> TimerRequest:
        """Return the request arming ``scope_id`` until ``expiration_time`` (``time.time()``)."""
        check_arm(scope_id, expiration_time)
        pid, start_time = _IDENTITY[0] or _read_identity()
        return TimerRequest(
            pid,
            scope_id,
            expiration_time,
            self._arm_signal,
            start_time,
            _monotonic() + (expiration_time - _wall()),
            _get_ident(),
            1,
            self._fallback,
        )

    def release(self, scope_id: str) -> TimerRequest:
        """Return the request releasing ``scope_id``."""
        check_scope(scope_id)
        pid, start_time = _IDENTITY[0] or _read_identity()
        return TimerRequest(pid, scope_id, -1.0, 0, start_time, None, _get_ident())
