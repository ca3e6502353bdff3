"""The worker side of the contract: arm and release timers."""

from __future__ import annotations

import abc

__all__ = ["TimerClient"]


class TimerClient(abc.ABC):
    """Send timer requests from a worker to a server; one implementation per transport."""

    @abc.abstractmethod
    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm (or re-arm) the timer ``scope_id`` of this process to expire at ``expiration_time``.

        ``expiration_time`` is a ``time.time()`` deadline, as in torch.
        """

    @abc.abstractmethod
    def release(self, scope_id: str) -> None:
        """Release the timer ``scope_id`` of this process."""
