"""Turn one item taken off the queue into a request, or the reason it cannot be one."""

from __future__ import annotations

from timer_api import (
    InvalidRequestError,
    RejectReason,
    TimerRequest,
    check_request,
    decode_msgpack,
)

__all__ = ["to_request"]

_LEGACY_FIELDS = ("worker_id", "scope_id", "expiration_time")


def to_request(item: object) -> TimerRequest | InvalidRequestError:
    """Return ``item`` as a checked request, or an :class:`InvalidRequestError` saying why it is not one.

    ``item`` is MessagePack bytes from :class:`LocalTimerClient` (decoded), a
    ``timer_api.TimerRequest``, or any object with torch's ``worker_id``,
    ``scope_id`` and ``expiration_time`` attributes (torch's ``TimerRequest``),
    which becomes a request with those fields. Either way the request is checked
    against the one schema (:func:`timer_api.check_request`), so a bad value is
    refused with the reason and message the wire format would give it.
    """
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return decode_msgpack(bytes(item) if type(item) is not bytes else item)
        except InvalidRequestError as error:
            return error
    if not isinstance(item, TimerRequest):
        try:
            worker_id, scope_id, expiration_time = (getattr(item, name) for name in _LEGACY_FIELDS)
        except Exception:  # AttributeError, or whatever a hostile property raises
            return InvalidRequestError(
                RejectReason.WRONG_OBJECT,
                f"expected MessagePack bytes or a TimerRequest, got {type(item).__qualname__}",
            )
        item = TimerRequest(worker_id, scope_id, expiration_time)
    try:
        return check_request(item)
    except InvalidRequestError as error:
        return error
