"""Exceptions and rejection reasons shared by every package."""

from __future__ import annotations

import enum

__all__ = ["InvalidRequestError", "RejectReason", "TimerExpired"]


class RejectReason(str, enum.Enum):
    """Say why a request was refused; the value is what events and logs carry."""

    #: The bytes are not a JSON object / MessagePack map at all.
    MALFORMED = "malformed"
    #: A field has the wrong type (``"pid": "7"``, ``"pid": true``).
    WRONG_TYPE = "wrong_type"
    #: A required field (``pid``, ``scope_id``, ``expiration_time``) is absent.
    MISSING_FIELD = "missing_field"
    #: ``expiration_time`` or ``deadline`` is NaN or infinite.
    NON_FINITE = "non_finite"
    #: ``pid`` is not a positive integer that fits ``pid_t`` (1 to 2**31 - 1).
    BAD_PID = "bad_pid"
    #: A value is outside its documented range (a signal number above 64, ...).
    OUT_OF_RANGE = "out_of_range"
    #: The encoded request is larger than :data:`timer_api.MAX_REQUEST_BYTES`.
    OVERSIZE = "oversize"
    #: ``version`` is not one this decoder understands.
    BAD_VERSION = "bad_version"
    #: The queue delivered an object that is neither bytes nor a request.
    WRONG_OBJECT = "wrong_object"
    #: ``pid`` names pid 1, the server itself or the server's process group.
    PROTECTED_PID = "protected_pid"
    #: No process has that pid (it exited before the request was read).
    NO_SUCH_PROCESS = "no_such_process"
    #: The process with that pid is not the one that sent the request (pid reuse).
    PID_REUSED = "pid_reused"
    #: The process belongs to another user and the server refuses those.
    OTHER_USER = "other_user"
    #: The worker already holds the most timers the server allows one worker.
    TOO_MANY_TIMERS = "too_many_timers"
    #: The process is not a descendant of the job the server watches.
    NOT_IN_JOB = "not_in_job"


class InvalidRequestError(ValueError):
    """Raise when a request cannot be accepted; ``reason`` says why, ``detail`` says where.

    This is the only exception the codec raises for bad input. Queues also hand
    instances of it to the server in place of a request, so that a bad item is
    counted and reported without disturbing the valid requests around it.
    """

    def __init__(self, reason: RejectReason, detail: str, raw: bytes = b"") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        #: The first bytes of the offending input, for logs (at most 256).
        self.raw = raw[:256]

    def __reduce__(self) -> tuple[type[InvalidRequestError], tuple[RejectReason, str, bytes]]:
        return (type(self), (self.reason, self.detail, self.raw))


class TimerExpired(Exception):  # noqa: N818 - the name users expect, as asyncio.TimeoutError
    """Raise inside a soft-timeout block when its deadline has passed."""
