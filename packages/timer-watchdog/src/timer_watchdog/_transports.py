"""Find the transports that installed packages offer to the command, by entry point.

A package adds a transport by declaring, in its ``pyproject.toml``::

    [project.entry-points."timer_watchdog.transports"]
    pipe = "timer_file._transport:PipeTransport"

The object named there is called as ``factory(path)`` and returns a
:class:`Transport` (exported as ``timer_watchdog.Transport``, so that a third-party
transport can type against it); ``path=None`` asks for a new private endpoint.
timer-watchdog never imports a transport package itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from ._policy import WatchdogPolicy
    from ._server import WatchdogServer

__all__ = ["ENTRY_POINT_GROUP", "Transport", "TransportError", "available", "load"]

#: The entry-point group that transports register in.
ENTRY_POINT_GROUP = "timer_watchdog.transports"


class Transport(Protocol):
    """An endpoint that workers write requests to, and the server that reads it.

    ``timer-watchdog run`` and ``serve`` drive every transport through these five
    members only; a class that has them (no need to inherit) is a transport.
    """

    @property
    def path(self) -> str:
        """Return where workers reach the server (for the pipe transport, the pipe's path)."""
        ...

    def environment(self) -> Mapping[str, str]:
        """Return the variables that tell a worker started under the command where to connect."""
        ...

    def server(self, *, max_interval: float, policy: WatchdogPolicy) -> WatchdogServer:
        """Build the server on this endpoint, not started."""
        ...

    def problem(self) -> str | None:
        """Say why the endpoint can no longer be reached (removed, replaced), or ``None``."""
        ...

    def close(self) -> None:
        """Remove the endpoint; calling it again does nothing."""
        ...


class TransportError(LookupError):
    """Raise when no installed package offers the transport asked for."""


def _entry_points() -> dict[str, EntryPoint]:
    # Imported here: importlib.metadata costs an engine-only user ~25 ms.
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Return the names of the installed transports, sorted."""
    return sorted(_entry_points())


def load(name: str) -> Callable[[str | None], Transport]:
    """Return the factory of transport ``name``; raise :class:`TransportError` if none is installed."""
    found = _entry_points().get(name)
    if found is None:
        names = ", ".join(available()) or "none"
        hint = " (pip install timer-file)" if name == "pipe" else ""
        raise TransportError(f"no transport named {name!r} is installed{hint}; installed: {names}")
    factory: Callable[[str | None], Transport] = found.load()
    return factory
