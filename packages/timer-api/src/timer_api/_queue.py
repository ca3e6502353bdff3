"""The server side of a transport: where requests come from."""

from __future__ import annotations

import abc

from ._errors import InvalidRequestError
from ._request import TimerRequest

__all__ = ["RequestQueue"]


class RequestQueue(abc.ABC):
    """Deliver the requests that clients sent, in batches, to one server."""

    #: ``True`` when every request the last :meth:`get` returned was checked against
    #: the schema already (decoded by this package's codec, or passed through
    #: :func:`timer_api.check_request`): a server need not check them again. A queue
    #: may set it per batch.
    checked: bool = False

    @abc.abstractmethod
    def size(self) -> int:
        """Return about how many requests are waiting (a hint for the batch size)."""

    @abc.abstractmethod
    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        """Return at most ``size`` requests, waiting at most ``timeout`` seconds for the first.

        Returns as soon as ``size`` requests are in hand, otherwise with what arrived
        by ``timeout`` (possibly nothing). Input that is not a valid request is
        returned in its place as an :class:`InvalidRequestError`, so the server can
        count and report it while serving the requests around it.
        """

    def interrupt(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Wake a :meth:`get` that is waiting, so that a stopping server exits at once."""
