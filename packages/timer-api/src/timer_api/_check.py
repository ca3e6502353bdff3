"""Check requests against the one schema: the constraints annotated on :class:`TimerRequest`.

The decoders apply those constraints to bytes; :func:`check_request` applies the very
same ones, through msgspec, to a request built in Python, and :func:`check_column` to
one field of many requests at once. Every rejection names its reason the same way
(:func:`rejection`) and its field by its wire name, so a bad request gets the same
error whichever way it arrives.
"""

from __future__ import annotations

import functools
from typing import Any, get_args

import msgspec

from ._errors import InvalidRequestError, RejectReason
from ._request import ScopeId, Seconds, TimerRequest

__all__ = [
    "check_arm",
    "check_column",
    "check_request",
    "check_scope",
    "check_signal",
    "rejection",
]

_FLOAT_FIELDS = ("`$.expiration_time`", "`$.deadline`")
_convert = msgspec.convert
_astuple = msgspec.structs.astuple


@functools.cache
def _fields() -> dict[str, tuple[Any, str]]:
    """Return each field's annotated type (constraints included) and wire name, by attribute.

    Read once, when first needed (``worker_id`` is ``pid`` on the wire).
    """
    return {f.name: (f.type, f.encode_name) for f in msgspec.structs.fields(TimerRequest)}


class _Rows:
    """Some fields of the request as one positional record, checked in one call into C.

    The record type is made on first use, off a worker's import path.
    """

    __slots__ = ("_fields", "_type")

    def __init__(self, *fields: str) -> None:
        self._fields = fields
        self._type: Any = None

    def check(self, values: tuple[Any, ...]) -> None:
        """Raise the :class:`InvalidRequestError` that ``values`` (in field order) deserve, if any."""
        if self._type is None:
            fields = _fields()
            self._type = msgspec.defstruct(
                "_Row",
                [(name, fields[name][0]) for name in self._fields],
                array_like=True,
                gc=False,
            )
        try:
            _convert(values, self._type)
        except msgspec.ValidationError as exc:
            message = str(exc)
            for index, name in enumerate(self._fields):  # `$[1]` is `$.scope_id`
                message = message.replace(f"`$[{index}]`", f"`$.{_fields()[name][1]}`")
            raise rejection(msgspec.ValidationError(message)) from None


_REQUEST = _Rows(*TimerRequest.__struct_fields__)
_ARM = _Rows("scope_id", "expiration_time")
_SCOPE = _Rows("scope_id")
_SIGNAL = _Rows("signal")


def check_request(request: object) -> TimerRequest:
    """Return ``request`` if every field satisfies the schema, else raise :class:`InvalidRequestError`.

    The error is the one decoding the same values from the wire gives: the same
    reason, and msgspec's message naming the field by its wire name.
    """
    if not isinstance(request, TimerRequest):
        raise InvalidRequestError(
            RejectReason.WRONG_OBJECT, f"expected a TimerRequest, got {type(request).__qualname__}"
        )
    _REQUEST.check(_astuple(request)[: len(TimerRequest.__struct_fields__)])
    return request


# The bounds of the two fields a worker passes on every call, read from their msgspec
# constraints: a plain str scope and float time within them pass without a call into
# msgspec; anything else is left to msgspec, which gives the verdict and the message.
_SCOPE_LIMIT = get_args(ScopeId)[1].max_length
_TIME_LOW = get_args(Seconds)[1].ge
_TIME_HIGH = get_args(Seconds)[1].le


def check_arm(scope_id: object, expiration_time: object) -> None:
    """Raise :class:`InvalidRequestError` unless an arm of ``scope_id`` at ``expiration_time`` is valid."""
    if not (
        type(scope_id) is str
        and len(scope_id) <= _SCOPE_LIMIT
        and type(expiration_time) is float
        and _TIME_LOW <= expiration_time <= _TIME_HIGH
    ):
        _ARM.check((scope_id, expiration_time))


def check_scope(scope_id: object) -> None:
    """Raise :class:`InvalidRequestError` unless ``scope_id`` is a valid scope."""
    if not (type(scope_id) is str and len(scope_id) <= _SCOPE_LIMIT):
        _SCOPE.check((scope_id,))


def check_signal(signal: object) -> None:
    """Raise :class:`InvalidRequestError` unless ``signal`` is a valid ``signal`` field."""
    _SIGNAL.check((signal,))


def check_column(name: str, values: list[Any]) -> bool:
    """Tell whether every item of ``values`` is valid in field ``name`` (one call into C)."""
    try:
        _convert(values, list[_fields()[name][0]])  # type: ignore[misc]
    except msgspec.ValidationError:
        return False
    return True


def rejection(exc: msgspec.DecodeError, raw: bytes = b"") -> InvalidRequestError:
    """Turn msgspec's error about a request into an :class:`InvalidRequestError` with a reason."""
    message = str(exc)
    bounded = "` >" in message or "` <" in message or "` of length " in message
    if not isinstance(exc, msgspec.ValidationError):
        reason = RejectReason.MALFORMED
    elif message.startswith("Object missing required field"):
        reason = RejectReason.MISSING_FIELD
    elif message.startswith(("Expected `object`", "Expected `array`")):
        reason = RejectReason.MALFORMED
    elif message.endswith("`$.pid`"):
        reason = RejectReason.BAD_PID if bounded else RejectReason.WRONG_TYPE
    elif message.endswith("`$.version`"):
        reason = RejectReason.BAD_VERSION if "int` " in message else RejectReason.WRONG_TYPE
    elif message.endswith(_FLOAT_FIELDS) and (
        message.startswith("Number out of range") or "float` " in message
    ):
        reason = RejectReason.NON_FINITE
    elif message.startswith("Expected `") and not bounded:
        reason = RejectReason.WRONG_TYPE
    else:
        reason = RejectReason.OUT_OF_RANGE
    return InvalidRequestError(reason, message, raw)
