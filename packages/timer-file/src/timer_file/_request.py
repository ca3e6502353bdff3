"""``FileTimerRequest``: torch's request object for the pipe, and its conversions."""

from __future__ import annotations

from timer_api import TimerRequest

__all__ = ["FileTimerRequest"]


class FileTimerRequest:
    """Arm or release (negative ``expiration_time``) the timer ``scope_id`` of ``worker_pid``.

    The name, constructor and :meth:`to_json` follow
    ``torch.distributed.elastic.timer.FileTimerRequest``; the transport itself sends
    :class:`timer_api.TimerRequest`, which carries the same keys plus optional ones.
    """

    __slots__ = ("expiration_time", "scope_id", "signal", "version", "worker_id")

    def __init__(
        self, worker_pid: int, scope_id: str, expiration_time: float, signal: int | None = 0
    ) -> None:
        self.worker_id = worker_pid
        self.scope_id = scope_id
        self.expiration_time = expiration_time
        self.signal = signal
        self.version = 1

    @property
    def worker_pid(self) -> int:
        """Return the pid of the worker that owns the timer."""
        return self.worker_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileTimerRequest):
            return NotImplemented
        return (
            self.worker_id == other.worker_id
            and self.scope_id == other.scope_id
            and self.expiration_time == other.expiration_time
            and self.signal == other.signal
            and self.version == other.version
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (
            f"FileTimerRequest(worker_pid={self.worker_id!r}, scope_id={self.scope_id!r}, "
            f"expiration_time={self.expiration_time!r}, signal={self.signal!r})"
        )

    def to_json(self) -> str:
        """Return the request as torch's one-line JSON object (no newline)."""
        import json  # torch's exact spelling; imported here, off a worker's import path

        return json.dumps(
            {
                "version": self.version,
                "pid": self.worker_id,
                "scope_id": self.scope_id,
                "expiration_time": self.expiration_time,
                "signal": self.signal,
            }
        )

    def to_timer_request(self) -> TimerRequest:
        """Return the same request as a :class:`timer_api.TimerRequest`."""
        return TimerRequest(
            worker_id=self.worker_id,
            scope_id=self.scope_id,
            expiration_time=self.expiration_time,
            signal=self.signal,
        )

    @classmethod
    def from_timer_request(cls, request: TimerRequest) -> FileTimerRequest:
        """Return ``request`` as a :class:`FileTimerRequest` (the optional fields are dropped)."""
        return cls(request.worker_id, request.scope_id, request.expiration_time, request.signal)
