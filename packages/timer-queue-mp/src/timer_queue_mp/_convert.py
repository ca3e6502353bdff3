"""Turn one item taken off the queue into a request, or the reason it cannot be one."""

from __future__ import annotations

from timer_api import InvalidRequestError, RejectReason, TimerRequest, decode_msgpack

__all__ = ["to_request"]

_LEGACY_FIELDS = ("worker_id", "scope_id", "expiration_time")


def to_request(item: object) -> TimerRequest | InvalidRequestError:
    """Return ``item`` as a request, or an :class:`InvalidRequestError` saying why it is not one.

    ``item`` is MessagePack bytes from :class:`LocalTimerClient` (decoded, so checked
    as the wire format says), a ``timer_api.TimerRequest`` (returned as it is, as
    torch's queue does), or any object with torch's ``worker_id``, ``scope_id`` and
    ``expiration_time`` attributes, which becomes a request with those fields. The
    last two are not checked here: the server checks them with
    :func:`timer_api.check_request`, the same constraints the decoder applies.
    Anything else is a ``wrong_object`` rejection.
    """
    if type(item) is bytes:
        try:
            return decode_msgpack(item)
        except InvalidRequestError as error:
            return error
    if isinstance(item, (bytearray, memoryview)):
        return to_request(bytes(item))
    if isinstance(item, TimerRequest):
        return item
    try:
        worker_id, scope_id, expiration_time = (getattr(item, name) for name in _LEGACY_FIELDS)
    except Exception:  # AttributeError, or whatever a hostile property raises
        return InvalidRequestError(
            RejectReason.WRONG_OBJECT,
            f"expected MessagePack bytes or a TimerRequest, got {type(item).__qualname__}",
        )
    return TimerRequest(worker_id, scope_id, expiration_time)
