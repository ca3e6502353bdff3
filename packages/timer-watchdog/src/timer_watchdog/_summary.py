"""Turn the engine's events into what the command prints: live lines, an events file, a summary."""

from __future__ import annotations

import json
import threading
from typing import IO

import msgspec

from timer_api import signal_name

from ._events import (
    Armed,
    ClockSkew,
    Event,
    Exited,
    Expired,
    Frame,
    JobSnapshot,
    Reaped,
    Rejected,
    Released,
    Signalled,
    Unkillable,
    WatchdogStats,
    encode_event,
)
from ._jobreport import JobReport, format_report
from ._policy import is_terminating

__all__ = ["EventLog", "Expiry", "Outliver", "Summary", "format_summary"]


class Expiry(msgspec.Struct, kw_only=True):
    """What happened to one worker whose timer expired."""

    pid: int
    scope_id: str
    #: Seconds past the deadline when the last thing happened to it.
    late: float
    #: The last signal it was sent (``None``: none, as with ``--observe-only``).
    signal: str | None = None
    #: ``reaped`` (confirmed dead), ``unkillable`` (alive after its final signal),
    #: ``signalled`` (sent a signal that only notifies) or ``expired`` (nothing sent).
    outcome: str = "expired"
    stack_path: str | None = None
    frame: Frame | None = None


class Outliver(msgspec.Struct, kw_only=True):
    """A process of the job that still held timers when ``run``'s COMMAND exited."""

    pid: int
    #: The scopes it held then.
    scope_ids: list[str]
    #: What became of it: ``released`` (its timers), ``exited``, ``reaped`` (killed),
    #: ``unkillable``, ``signalled`` (sent a notice as its last timer expired),
    #: ``expired`` (its last timer expired, reported only) or ``holding`` (still holding
    #: when the watchdog stopped).
    outcome: str = "holding"


class Summary(msgspec.Struct, kw_only=True):
    """The end-of-run report; ``--json`` prints it as one JSON object."""

    #: Why the command stopped: ``command exited`` for ``run``, or what stopped ``serve``.
    stopped: str
    #: The exit status of ``timer-watchdog`` itself.
    exit_status: int
    seconds: float
    #: Distinct workers (pids) that armed a timer.
    workers: int
    stats: WatchdogStats
    expiries: list[Expiry]
    #: ``run`` only: processes that still held timers when COMMAND exited.
    outlived: list[Outliver] = []
    #: ``run --progress/--heartbeat`` only: why the job was stopped, if it stalled.
    stalled: str | None = None
    #: Where every process of the job was at the first expiry (see ``JobReport``).
    job: JobReport | None = None


_QUIET = (Armed, Released)
_PREFIX = "timer-watchdog: "


class EventLog:
    """Subscribe to a server: write each event to ``events`` and a line for it to ``log``.

    ``events`` receives every event as one JSON line; ``log`` receives a readable
    line for each event that matters to a person (every event with ``verbose``), or
    the event's JSON with ``as_json``. Called from the server's thread.
    """

    def __init__(
        self,
        *,
        log: IO[str],
        events: IO[bytes] | None = None,
        as_json: bool = False,
        verbose: bool = False,
    ) -> None:
        self._log = log
        self._events = events
        self._as_json = as_json
        self._verbose = verbose
        self._lock = threading.Lock()
        self._workers: set[int] = set()
        self._expiries: dict[int, Expiry] = {}
        #: The scopes each worker holds now (armed, or expired and not yet reaped).
        self._held: dict[int, set[str]] = {}
        self._outlived: dict[int, Outliver] = {}

    def __call__(self, event: Event) -> None:
        """Record ``event``, write it to the events file and log it."""
        line = encode_event(event)
        with self._lock:
            self._record(event)
            if self._events is not None:
                self._events.write(line)
                self._events.flush()
            if not self._verbose and isinstance(event, _QUIET):
                return
            self._write(line.decode().rstrip("\n") if self._as_json else _PREFIX + describe(event))

    def write(self, text: str) -> None:
        """Write ``text`` and a newline to the log (never inside a line of the server's thread)."""
        with self._lock:
            self._write(text)

    def _write(self, text: str) -> None:
        self._log.write(text + "\n")
        self._log.flush()

    def note(self, message: str) -> None:
        """Log a message of the command's own: a prefixed line, or ``{"log": "info", ...}``."""
        if self._as_json:
            self.write(json.dumps({"log": "info", "message": message}))
        else:
            self.write(_PREFIX + message)

    def command_exited(self, command_pid: int) -> list[int]:
        """Remember, and return, the other workers that hold timers now that the command exited."""
        with self._lock:
            for pid, scopes in self._held.items():
                if pid != command_pid:
                    self._outlived[pid] = Outliver(pid=pid, scope_ids=sorted(scopes))
            return sorted(self._outlived)

    def _record(self, event: Event) -> None:
        self._record_held(event)
        if isinstance(event, Armed):
            self._workers.add(event.pid)
        elif isinstance(event, Expired):
            self._expiries[event.pid] = Expiry(
                pid=event.pid, scope_id=event.scope_id, late=event.late
            )
        elif isinstance(event, (Signalled, Reaped, Unkillable)):
            expiry = self._expiries.setdefault(
                event.pid, Expiry(pid=event.pid, scope_id=event.scope_id, late=event.late)
            )
            expiry.late = event.late
            expiry.signal = signal_name(event.signal)
            expiry.outcome = event.event if isinstance(event, (Reaped, Unkillable)) else "signalled"
            if isinstance(event, Reaped):
                expiry.stack_path = event.stack_path
                expiry.frame = event.frame

    def _record_held(self, event: Event) -> None:
        """Follow which scopes each worker holds, and what becomes of those that outlived."""
        if isinstance(event, Armed):
            self._held.setdefault(event.pid, set()).add(event.scope_id)
            return
        if isinstance(event, (Released, Expired)):
            if isinstance(event, Expired) and is_terminating(event.action):
                return  # held until the worker is reaped
            held = self._held.get(event.pid)
            if held is None:
                return
            held.discard(event.scope_id)
            if held:
                return
            if isinstance(event, Released):
                outcome = "released"
            else:
                outcome = "signalled" if event.action else "expired"
        elif isinstance(event, Exited):
            outcome = "exited"
        elif isinstance(event, Reaped):
            outcome = "reaped"
        elif isinstance(event, Unkillable):
            outcome = "unkillable"
        else:
            return
        if outcome != "unkillable":
            self._held.pop(event.pid, None)
        outliver = self._outlived.get(event.pid)
        if outliver is not None:
            outliver.outcome = outcome

    def summary(
        self,
        *,
        stopped: str,
        exit_status: int,
        seconds: float,
        stats: WatchdogStats,
        stalled: str | None = None,
        job: JobReport | None = None,
    ) -> Summary:
        """Return the summary of everything recorded so far (``job``: the job report)."""
        with self._lock:
            return Summary(
                stopped=stopped,
                exit_status=exit_status,
                seconds=round(seconds, 3),
                workers=len(self._workers),
                stats=stats,
                expiries=[msgspec.structs.replace(e) for e in self._expiries.values()],
                outlived=[msgspec.structs.replace(o) for o in self._outlived.values()],
                stalled=stalled,
                job=job,
            )


def _where(frame: Frame | None) -> str:
    return f"{frame.function}() at {frame.file}:{frame.line}" if frame is not None else ""


#: How a ``signalled`` event's ``detail`` reads in a sentence.
_SIGNAL_DETAILS = {
    "first": "",
    "escalation": ", the grace period being over",
    "retry": " again",
    "notify": " (a notice: the worker is not killed)",
}


def describe(event: Event) -> str:
    """Return one readable line (two for a reaped worker with a stack) about ``event``."""
    if isinstance(event, Armed):
        return f"pid {event.pid}: armed {event.scope_id!r} for {event.expires_in:.3g}s"
    if isinstance(event, Released):
        return f"pid {event.pid}: released {event.scope_id!r}"
    if isinstance(event, Expired):
        return f"pid {event.pid}: timer {event.scope_id!r} expired ({event.late:.2f}s late)"
    if isinstance(event, Signalled):
        why = _SIGNAL_DETAILS.get(event.detail, f" ({event.detail})")
        return f"pid {event.pid}: sent {signal_name(event.signal)}{why}"
    if isinstance(event, Reaped):
        text = (
            f"pid {event.pid}: killed by {signal_name(event.signal)}, "
            f"{event.late:.2f}s after its deadline"
        )
        if event.frame is not None:
            text += f"\n    stuck in {_where(event.frame)}"
        if event.stack_path:
            text += f"\n    stack dump: {event.stack_path}"
        return text
    if isinstance(event, Unkillable):
        return (
            f"pid {event.pid}: still alive after {signal_name(event.signal)} "
            f"(state {event.state}); sending it again"
        )
    if isinstance(event, Rejected):
        sender = f" from pid {event.pid}" if event.pid is not None else ""
        return f"rejected a request{sender}: {event.reason.value}: {event.detail}"
    if isinstance(event, Exited):
        return f"pid {event.pid} exited holding {event.timers} timer(s)"
    if isinstance(event, ClockSkew):
        return (
            f"pid {event.pid}: timer {event.scope_id!r} has a monotonic deadline "
            f"{event.skew:+.3g}s off its wall-clock time (another time namespace?); "
            "armed by the wall clock"
        )
    if isinstance(event, JobSnapshot):
        return (
            f"job snapshot: {len(event.processes)} process(es) captured in "
            f"{event.seconds:.2f}s before the first signal"
        )
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover - the union is closed


def format_summary(summary: Summary) -> str:
    """Return the summary as a few readable lines."""
    stats = summary.stats
    lines = [
        f"timer-watchdog summary: {summary.stopped} (status {summary.exit_status}) "
        f"after {summary.seconds:.1f}s",
        f"  workers seen: {summary.workers}, timers armed: {stats.armed}, "
        f"expired: {stats.expired}, rejected requests: {stats.rejected}",
    ]
    if summary.stalled is not None:
        lines.append(f"  {summary.stalled}")
    if not summary.expiries:
        lines.append("  no timer expired")
    for expiry in summary.expiries:
        if expiry.outcome == "reaped":
            what = f"killed with {expiry.signal}"
        elif expiry.outcome == "unkillable":
            what = f"still alive after {expiry.signal}"
        elif expiry.outcome == "signalled":
            what = f"sent {expiry.signal}"
        else:
            what = "not signalled"
        lines.append(
            f"  pid {expiry.pid}: {what}, {expiry.late:.2f}s after the deadline "
            f"of {expiry.scope_id!r}"
        )
        if expiry.frame is not None:
            lines.append(f"    stuck in {_where(expiry.frame)}")
        if expiry.stack_path:
            lines.append(f"    stack dump: {expiry.stack_path}")
    if summary.outlived:
        lines.append("  still holding timers when the command exited:")
    for outliver in summary.outlived:
        scopes = ", ".join(repr(scope) for scope in outliver.scope_ids)
        lines.append(f"    pid {outliver.pid} ({scopes}): {_OUTCOMES[outliver.outcome]}")
    if summary.job is not None:
        lines.extend("  " + line for line in format_report(summary.job).splitlines())
    return "\n".join(lines)


#: How an outliver's ``outcome`` reads in the summary.
_OUTCOMES = {
    "holding": "still holding them when the watchdog stopped",
    "released": "released them",
    "exited": "exited",
    "reaped": "killed",
    "unkillable": "still alive after its final signal",
    "signalled": "sent a notice as its last timer expired",
    "expired": "its last timer expired (reported only)",
}
