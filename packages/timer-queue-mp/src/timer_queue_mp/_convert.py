"""Turn one item taken off the queue into a validated request, or the reason it is not one."""

from __future__ import annotations

import msgspec

from timer_api import InvalidRequestError, RejectReason, TimerRequest, decode_msgpack

__all__ = ["to_request"]

_encode = msgspec.msgpack.Encoder().encode
_LEGACY_FIELDS = ("worker_id", "scope_id", "expiration_time")


def to_request(item: object) -> TimerRequest | InvalidRequestError:
    """Return ``item`` as a validated request, or an :class:`InvalidRequestError` saying why not.

    ``item`` is MessagePack bytes from :class:`LocalTimerClient`, or a pickled
    request object put by older code: ``timer_api.TimerRequest`` itself or any
    object with torch's ``worker_id``, ``scope_id`` and ``expiration_time``
    attributes. Objects are re-encoded and decoded, so they pass exactly the
    checks that bytes do. Anything else is a ``wrong_object`` rejection.
    """
    if type(item) is bytes:
        try:
            return decode_msgpack(item)
        except InvalidRequestError as error:
            return error
    if isinstance(item, (bytearray, memoryview)):
        return to_request(bytes(item))
    if isinstance(item, TimerRequest):
        return _revalidate(item)
    try:
        worker_id, scope_id, expiration_time = (getattr(item, name) for name in _LEGACY_FIELDS)
    except Exception:  # AttributeError, or whatever a hostile property raises
        return InvalidRequestError(
            RejectReason.WRONG_OBJECT,
            f"expected MessagePack bytes or a TimerRequest, got {type(item).__qualname__}",
        )
    return _revalidate({"pid": worker_id, "scope_id": scope_id, "expiration_time": expiration_time})


def _revalidate(request: object) -> TimerRequest | InvalidRequestError:
    """Run ``request`` through the wire format, so that it is checked as received bytes are."""
    try:
        data = _encode(request)
    except (TypeError, ValueError, OverflowError) as exc:
        return InvalidRequestError(RejectReason.WRONG_TYPE, f"cannot encode request: {exc}")
    return to_request(data)
