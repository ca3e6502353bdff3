"""The worker side: send arm and release requests over a multiprocessing queue."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn

from timer_api import (
    MAX_REQUEST_BYTES,
    InvalidRequestError,
    RejectReason,
    RequestBuilder,
    TimerClient,
    encode_msgpack,
    install_stack_dump_from_env,
)

__all__ = ["LocalTimerClient"]


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

    __slots__ = ("_arm", "_mp_queue", "_put", "_release", "_signal")

    def __init__(self, mp_queue: Any, *, signal: int | None = None) -> None:
        builder = RequestBuilder(signal)
        self._mp_queue = mp_queue
        self._put = mp_queue.put
        self._signal = builder.signal
        self._arm = builder.arm
        self._release = builder.release
        install_stack_dump_from_env()  # under `timer-watchdog run --stacks DIR`

    def __reduce__(self) -> tuple[Callable[..., LocalTimerClient], tuple[Any]]:
        return (functools.partial(type(self), signal=self._signal), (self._mp_queue,))

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm (or re-arm) timer ``scope_id`` to expire at ``expiration_time`` (``time.time()``).

        A request the server would refuse raises :class:`timer_api.InvalidRequestError` here.
        """
        data = encode_msgpack(self._arm(scope_id, expiration_time))
        if len(data) > MAX_REQUEST_BYTES:
            _refuse_size(data)
        self._put(data)

    def release(self, scope_id: str) -> None:
        """Release timer ``scope_id`` of this process."""
        data = encode_msgpack(self._release(scope_id))
        if len(data) > MAX_REQUEST_BYTES:
            _refuse_size(data)
        self._put(data)


def _refuse_size(data: bytes) -> NoReturn:
    """Refuse a request too large for the server to accept."""
    raise InvalidRequestError(
        RejectReason.OVERSIZE,
        f"encoded request is {len(data)} bytes, limit {MAX_REQUEST_BYTES}",
        data,
    )
