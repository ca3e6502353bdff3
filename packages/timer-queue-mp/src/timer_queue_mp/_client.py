"""The worker side: send arm and release requests over a multiprocessing queue."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from timer_api import (
    MAX_REQUEST_BYTES,
    MAX_SCOPE_LENGTH,
    InvalidRequestError,
    RejectReason,
    TimerClient,
    TimerRequest,
    encode_msgpack,
    install_stack_dump_from_env,
    process_start_time,
)

__all__ = ["LocalTimerClient"]

_MAX_SECONDS = sys.float_info.max
_MAX_SIGNAL = 64

# (pid, start time) of this process, read once and again only after a fork.
_identity: tuple[int, int | None] = (0, None)

_getpid = os.getpid
_get_ident = threading.get_ident
_monotonic = time.monotonic
_wall = time.time


def _start_time(pid: int) -> int | None:
    """Return this process's start time, re-reading it when ``pid`` shows a fork happened."""
    global _identity
    if _identity[0] != pid:
        _identity = (pid, process_start_time(pid))
    return _identity[1]


class LocalTimerClient(TimerClient):
    """Send this process's timer requests to a :class:`LocalTimerServer` over ``mp_queue``.

    Each request is one MessagePack-encoded :class:`timer_api.TimerRequest` (bytes),
    carrying the worker's pid and start time (its identity even if the pid is
    reused later), the deadline on both clocks and the arming thread. ``put`` is
    asynchronous, as in torch: the queue's feeder thread writes the bytes.

    ``signal`` (an extension) asks the server to send that signal on expiry
    instead of its own choice; ``None``, the default, leaves the choice to the
    server; 0 or less asks it to report the expiry and send nothing.
    """

    __slots__ = ("_mp_queue", "_put", "_signal")

    def __init__(self, mp_queue: Any, *, signal: int | None = None) -> None:
        if signal is not None and (
            not isinstance(signal, int) or isinstance(signal, bool) or signal > _MAX_SIGNAL
        ):
            raise ValueError(f"signal must be None or an int up to {_MAX_SIGNAL}, got {signal!r}")
        signal = None if signal is None else int(signal)
        self._mp_queue = mp_queue
        self._put = mp_queue.put
        self._signal = signal
        install_stack_dump_from_env()  # under `timer-watchdog run --stacks DIR`

    def __reduce__(self) -> tuple[Callable[..., LocalTimerClient], tuple[Any]]:
        return (functools.partial(type(self), signal=self._signal), (self._mp_queue,))

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm (or re-arm) timer ``scope_id`` to expire at ``expiration_time`` (``time.time()``)."""
        if type(scope_id) is not str or len(scope_id) > MAX_SCOPE_LENGTH:
            _refuse_scope(scope_id)
        if not -_MAX_SECONDS <= expiration_time <= _MAX_SECONDS:
            raise ValueError(f"expiration_time must be a finite number, got {expiration_time!r}")
        pid = _getpid()
        start = _identity[1] if _identity[0] == pid else _start_time(pid)
        data = encode_msgpack(
            TimerRequest(
                pid,
                scope_id,
                expiration_time,
                self._signal,
                start,
                _monotonic() + (expiration_time - _wall()),
                _get_ident(),
            )
        )
        if len(data) > MAX_REQUEST_BYTES:
            _refuse_size(data)
        self._put(data)

    def release(self, scope_id: str) -> None:
        """Release timer ``scope_id`` of this process."""
        if type(scope_id) is not str or len(scope_id) > MAX_SCOPE_LENGTH:
            _refuse_scope(scope_id)
        pid = _getpid()
        start = _identity[1] if _identity[0] == pid else _start_time(pid)
        data = encode_msgpack(TimerRequest(pid, scope_id, -1.0, 0, start, None, _get_ident()))
        if len(data) > MAX_REQUEST_BYTES:
            _refuse_size(data)
        self._put(data)


def _refuse_scope(scope_id: object) -> NoReturn:
    """Refuse a scope the server would reject, at the caller rather than silently later."""
    if type(scope_id) is not str:
        raise TypeError(f"scope_id must be a str, got {type(scope_id).__name__}")
    raise ValueError(f"scope_id is {len(scope_id)} characters long, limit {MAX_SCOPE_LENGTH}")


def _refuse_size(data: bytes) -> NoReturn:
    """Refuse a request too large for the server to accept."""
    raise InvalidRequestError(
        RejectReason.OVERSIZE,
        f"encoded request is {len(data)} bytes, limit {MAX_REQUEST_BYTES}",
        data,
    )
