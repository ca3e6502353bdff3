"""Prometheus metrics of a running server: collect them, render the text format, export them.

:class:`Metrics` subscribes to a :class:`~timer_watchdog.WatchdogServer` and renders
the Prometheus text exposition format (version 0.0.4) itself; ``prometheus_client``
is never imported (docs/operations.md says why). :class:`MetricsFile` writes it for
node_exporter's textfile collector, replaced atomically; ``MetricsHTTP``
(``_metrics_http.py``) serves it at ``/metrics``, with ``/healthz`` beside it, and
``Exporter`` (``_export.py``) sets up either as the command's options say.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from timer_api import RejectReason, signal_name

from .__about__ import __version__
from ._events import Event, Reaped, Rejected, Signalled
from ._files import write_atomically
from ._server import WatchdogServer

__all__ = [
    "CONTENT_TYPE",
    "LATENESS_BUCKETS",
    "STALL_AFTER",
    "Health",
    "Histogram",
    "Metrics",
    "MetricsFile",
    "escape_label",
    "format_value",
    "loop_alive",
    "parse_address",
]

logger = logging.getLogger("timer_watchdog")

#: The ``Content-Type`` of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Upper bounds (seconds past the deadline) of the reap-lateness histogram's buckets.
LATENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Seconds a round of the engine loop may be busy before the loop counts as stalled.
STALL_AFTER = 10.0
#: Seconds between two writes of a metrics file.
FILE_INTERVAL = 5.0
#: Longest wait at exit for a metrics file write under way.
STUCK_WRITE = 5.0

_PREFIX = "timer_watchdog_"


def escape_label(value: str) -> str:
    """Escape a label value: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Format a sample value as the format spells it: ``3``, ``0.25``, ``+Inf``, ``NaN``."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs) + "}"


class _Family:
    """Lines of one metric family: HELP and TYPE first, then its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.lines = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]

    def sample(
        self, value: float, labels: Sequence[tuple[str, str]] = (), suffix: str = ""
    ) -> None:
        self.lines.append(f"{self.name}{suffix}{_labels(labels)} {format_value(value)}")


class Histogram:
    """A cumulative histogram over fixed bucket bounds (not thread-safe on its own)."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        if not self.bounds or any(not math.isfinite(b) for b in self.bounds):
            raise ValueError("histogram bounds must be finite and at least one")
        self.counts = [0] * len(self.bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in every bucket whose bound is at least ``value``."""
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1

    def render(self, family: _Family) -> None:
        """Add the ``_bucket`` (cumulative, then ``+Inf``), ``_sum`` and ``_count`` samples."""
        for bound, count in zip(self.bounds, self.counts, strict=True):
            family.sample(count, [("le", repr(float(bound)))], "_bucket")
        family.sample(self.count, [("le", "+Inf")], "_bucket")
        family.sample(self.sum, suffix="_sum")
        family.sample(self.count, suffix="_count")


class Health(NamedTuple):
    """Whether the engine loop is alive, and a line that says so (for /healthz and STATUS=)."""

    alive: bool
    text: str


def loop_alive(server: WatchdogServer, stall_after: float = STALL_AFTER) -> Health:
    """Say whether ``server``'s loop runs and its current round is younger than ``stall_after``."""
    health = server.loop_health()
    if not health.running:
        return Health(False, "engine loop not running")
    if health.busy_for >= stall_after:
        return Health(False, f"engine loop stalled: one round busy for {health.busy_for:.1f}s")
    return Health(True, f"engine loop alive ({health.loops} rounds)")


class Metrics:
    """Collect a server's metrics from its events and counters; render them as text.

    Create it before the server starts so that no event is missed; the cumulative
    counters come from ``server.stats()`` whenever they are rendered.
    """

    def __init__(
        self,
        server: WatchdogServer,
        *,
        stall_after: float = STALL_AFTER,
        buckets: Iterable[float] = LATENESS_BUCKETS,
    ) -> None:
        self._server = server
        self._stall_after = stall_after
        self._lock = threading.Lock()
        self._rejected = {reason.value: 0 for reason in RejectReason}
        policy = server.policy
        self._signals: dict[str, int] = {}
        if not policy.observe_only:
            self._signals = {signal_name(policy.signal): 0, signal_name(9): 0}
        self._lateness = Histogram(buckets)
        self._unsubscribe = server.subscribe(self._on_event)

    def close(self) -> None:
        """Stop listening to the server's events (what was collected stays)."""
        self._unsubscribe()

    @property
    def stall_after(self) -> float:
        """Seconds a loop round may be busy before the loop counts as stalled."""
        return self._stall_after

    def health(self) -> Health:
        """Say whether the engine loop is alive (never waits for the server's lock)."""
        return loop_alive(self._server, self._stall_after)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Rejected):
            reason = event.reason.value
            with self._lock:
                self._rejected[reason] = self._rejected.get(reason, 0) + 1
        elif isinstance(event, Signalled):
            name = signal_name(event.signal)
            with self._lock:
                self._signals[name] = self._signals.get(name, 0) + 1
        elif isinstance(event, Reaped):
            with self._lock:
                self._lateness.observe(max(0.0, event.late))

    def render(self) -> str:
        """Return every metric in the text exposition format, ending with a newline."""
        stats = self._server.stats()
        loop = self._server.loop_health()
        families: list[_Family] = []

        def family(name: str, kind: str, help_text: str) -> _Family:
            made = _Family(_PREFIX + name, kind, help_text)
            families.append(made)
            return made

        info = family("info", "gauge", "Version of the timer-watchdog serving these metrics.")
        info.sample(1, [("version", __version__)])
        requests = family("requests_total", "counter", "Timer requests handled, by outcome.")
        for outcome, value in (
            ("armed", stats.armed),
            ("released", stats.released),
            ("rejected", stats.rejected),
        ):
            requests.sample(value, [("outcome", outcome)])
        family(
            "requests_received_total", "counter", "Timer requests received, valid or not."
        ).sample(stats.received)
        with self._lock:
            rejected = sorted(self._rejected.items())
            signals = sorted(self._signals.items())
            rejected_family = family(
                "requests_rejected_total", "counter", "Timer requests refused, by reason."
            )
            for reason, value in rejected:
                rejected_family.sample(value, [("reason", reason)])
            signals_family = family(
                "signals_sent_total", "counter", "Signals sent to hung workers, by signal."
            )
            for name, value in signals:
                signals_family.sample(value, [("signal", name)])
            self._lateness.render(
                family(
                    "reap_lateness_seconds",
                    "histogram",
                    "Seconds from a timer's deadline to its worker confirmed dead.",
                )
            )
        family(
            "armed_timers", "gauge", "Timers held now (armed, or expired and being reaped)."
        ).sample(stats.timers)
        family("known_workers", "gauge", "Workers the server knows now.").sample(stats.workers)
        family("reaping_workers", "gauge", "Workers being reaped now.").sample(stats.reaping)
        family(
            "expired_timers_total", "counter", "Timers that reached their deadline, worker alive."
        ).sample(stats.expired)
        family("reaped_workers_total", "counter", "Workers confirmed dead after a signal.").sample(
            stats.reaped
        )
        family(
            "unkillable_total",
            "counter",
            "Times a worker was found alive after its final signal.",
        ).sample(stats.unkillable)
        family(
            "exited_workers_total", "counter", "Workers found gone while holding timers."
        ).sample(stats.exited)
        family(
            "clock_skew_total",
            "counter",
            "Requests whose monotonic deadline disagreed with their wall-clock expiration.",
        ).sample(stats.clock_skew)
        family(
            "late_requests_total",
            "counter",
            "Arm requests that arrived after their worker had exited; dropped, not rejected.",
        ).sample(stats.late)
        family("loop_iterations_total", "counter", "Completed rounds of the engine loop.").sample(
            stats.loops
        )
        family("loop_running", "gauge", "1 while the engine loop thread runs, else 0.").sample(
            int(loop.running)
        )
        family(
            "loop_busy_seconds",
            "gauge",
            "Seconds the engine loop's current round has been busy (0 while it waits).",
        ).sample(loop.busy_for)
        family(
            "loop_alive", "gauge", "1 while the engine loop runs and is not stalled, else 0."
        ).sample(int(loop.running and loop.busy_for < self._stall_after))
        return "".join(line + "\n" for made in families for line in made.lines)


# -- export over HTTP -----------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """Turn ``HOST:PORT``, ``:PORT`` or ``[IPV6]:PORT`` into ``(host, port)``; raise ``ValueError``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port in 0..65535, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, [::1]:9100, got {text!r}")
    return host, int(port_text)


# -- export to a file -------------------------------------------------------------------


class MetricsFile:
    """Write the metrics to ``path`` now, every ``interval`` seconds from a thread, and at close."""

    def __init__(self, metrics: Metrics, path: str, interval: float = FILE_INTERVAL) -> None:
        self._metrics = metrics
        self.path = path
        self._interval = interval
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(
            target=self._loop, name="timer-watchdog-metrics-file", daemon=True
        )

    def write(self) -> None:
        """Write the file once; raise ``OSError`` if it cannot be written."""
        write_atomically(self.path, self._metrics.render())

    def start(self) -> None:
        """Write the file every interval from a thread, until :meth:`close`."""
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._write_logged()

    def _write_logged(self) -> None:
        try:
            self.write()
        except OSError as exc:
            if not self._failing:
                logger.warning("cannot write the metrics file %s: %s", self.path, exc)
            self._failing = True
        else:
            self._failing = False

    def close(self) -> None:
        """Stop the thread and write the file one last time (unless a write is stuck)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STUCK_WRITE)
            if self._thread.is_alive():  # waiting for a server whose loop is stuck
                logger.warning("metrics file %s not written at exit: server stuck", self.path)
                return
        self._write_logged()


# -- what the commands use ----------------------------------------------------------------
