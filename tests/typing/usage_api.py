"""Typed usage of timer_api's public names; checked by mypy --strict, never run."""

from __future__ import annotations

import timer_api
from timer_api import InvalidRequestError, RejectReason, TimerClient, TimerRequest, expires


class NullClient(TimerClient):
    def acquire(self, scope_id: str, expiration_time: float) -> None:
        return None

    def release(self, scope_id: str) -> None:
        return None


def use() -> None:
    timer_api.configure(NullClient())
    request: TimerRequest = timer_api.decode_json(b"{}")
    line: bytes = timer_api.encode_json_line(request)
    assert line
    try:
        timer_api.decode_msgpack(b"\x80")
    except InvalidRequestError as error:
        reason: RejectReason = error.reason
        assert reason
    with expires(after=1.0):
        pass

    @expires(after=1.0)
    def work(x: int) -> str:
        return str(x)

    text: str = work(3)
    assert text
