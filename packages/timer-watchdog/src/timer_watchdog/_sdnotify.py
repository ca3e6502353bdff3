"""Tell systemd how the server is doing, through ``NOTIFY_SOCKET``, with no dependency.

systemd's notify protocol is one ``AF_UNIX`` datagram per message, holding
newline-separated ``KEY=VALUE`` fields. :class:`Notifier` sends them (and does
nothing when ``NOTIFY_SOCKET`` is unset); :class:`Supervisor` sends ``WATCHDOG=1``
every half of ``WATCHDOG_USEC``, only while the engine loop is alive, with a
``STATUS=`` line of live counts, so that systemd restarts a watchdog whose loop is
stuck.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

from ._metrics import STALL_AFTER, loop_alive
from ._server import WatchdogServer

__all__ = ["STATUS_INTERVAL", "Notifier", "Supervisor", "status_line"]

logger = logging.getLogger("timer_watchdog")

#: Seconds between two ``STATUS=`` updates when systemd asks for no watchdog pings.
STATUS_INTERVAL = 5.0


class Notifier:
    """Send notify messages to ``address`` (a path, or ``@name`` in the abstract namespace).

    ``watchdog_usec`` is systemd's ``WATCHDOG_USEC`` (``None``: no watchdog). With no
    address every method does nothing and returns ``False``.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._target: str | bytes | None = None
        self._socket: socket.socket | None = None
        self._failed = False
        if address and address[0] == "@":
            self._target = b"\0" + address[1:].encode()
        elif address and address[0] == "/":
            self._target = address
        elif address:
            logger.warning("NOTIFY_SOCKET=%s is not a socket path; not notifying systemd", address)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        text = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if text.isdigit() and int(text) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(text)
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (and :meth:`close` was not called)."""
        return self._target is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (``None``: none)."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) as one datagram; return whether it was sent."""
        if self._target is None:
            return False
        if self._socket is None:  # opened on first use, so that nothing is held before
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        data = "\n".join(field.replace("\n", " ") for field in fields).encode()
        try:
            self._socket.sendto(data, self._target)
        except OSError as exc:
            if not self._failed:
                logger.warning("cannot notify systemd at %s: %s", self.address, exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        """Close the socket; later messages are not sent."""
        self._target = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def status_line(server: WatchdogServer) -> str:
    """Return the server's live counts as one short line."""
    stats = server.stats()
    return (
        f"{stats.timers} timers armed, {stats.workers} workers, {stats.expired} expired, "
        f"{stats.reaped} reaped, {stats.rejected} rejected"
    )


class Supervisor:
    """Ping systemd's watchdog while ``server``'s loop is alive, and keep ``STATUS=`` current.

    Every tick (half of ``WATCHDOG_USEC``, else :data:`STATUS_INTERVAL`) sends one
    datagram: ``WATCHDOG=1`` and the counts while the loop is alive, or only a
    ``STATUS=`` saying why not. The loop counts as stalled when a round has been
    busy for ``stall_after`` seconds (at most the ping interval, so a stalled loop
    is never pinged for). ``what`` prefixes the status (``serving /run/x.pipe``).

    The ticks never wait for the server: the counts come from a second thread
    (:meth:`refresh`), since ``server.stats()`` waits while an event is delivered
    and a stuck subscriber would hold it forever; a tick sends the latest counts.
    """

    def __init__(
        self,
        notifier: Notifier,
        server: WatchdogServer,
        what: Callable[[], str],
        stall_after: float = STALL_AFTER,
    ) -> None:
        self._notifier = notifier
        self._server = server
        self._what = what
        interval = notifier.watchdog_interval
        self.interval = interval if interval is not None else STATUS_INTERVAL
        self.stall_after = min(stall_after, interval) if interval is not None else stall_after
        self._counts = "starting"
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(step,), name=name, daemon=True)
            for step, name in (
                (self.tick, "timer-watchdog-sdnotify"),
                (self.refresh, "timer-watchdog-sdnotify-counts"),
            )
        ]

    def ready(self) -> None:
        """Say the server is ready, then keep pinging and updating the status from threads."""
        if not self._notifier.enabled:
            return
        self.refresh()
        self._notifier.notify("READY=1", f"STATUS={self._what()}: ready", f"MAINPID={os.getpid()}")
        for thread in self._threads:
            thread.start()

    def refresh(self) -> None:
        """Read the server's counts for the next ticks (waits for the server)."""
        self._counts = status_line(self._server)

    def tick(self) -> None:
        """Send one ping with the latest counts if the loop is alive, else only the status."""
        health = loop_alive(self._server, self.stall_after)
        if not health.alive:
            self._notifier.notify(f"STATUS={self._what()}: {health.text}")
        elif self._notifier.watchdog_interval is not None:
            self._notifier.notify("WATCHDOG=1", f"STATUS={self._what()}: {self._counts}")
        else:
            self._notifier.notify(f"STATUS={self._what()}: {self._counts}")

    def _loop(self, step: Callable[[], None]) -> None:
        while not self._stop.wait(self.interval):
            step()

    def stopping(self, why: str) -> None:
        """Stop pinging, say the server is stopping and why, close the socket; once only."""
        if self._stop.is_set():
            return
        self._stop.set()
        ticker = self._threads[0]
        if ticker.is_alive():
            ticker.join()  # a tick never waits for the server
        self._notifier.notify("STOPPING=1", f"STATUS={self._what()}: stopping ({why})")
        self._notifier.close()
