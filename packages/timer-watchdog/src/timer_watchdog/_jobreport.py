"""Turn a job snapshot into one report that points at the culprit, and merge reports of several hosts.

Processes are grouped by the innermost frame of their stack that is in user code
(not the standard library or site-packages): ranks blocked in the same collective
fall into one group, and the rank stuck elsewhere stands out. The culprit is the
worker whose timer expired first.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping

import msgspec

from ._events import (
    Armed,
    Event,
    Expired,
    Frame,
    JobSnapshot,
    ProcessSnapshot,
    Released,
    decode_event,
)
from ._files import write_atomically
from ._forensics import is_library_file, own_frame

logger = logging.getLogger("timer_watchdog")

__all__ = [
    "HostExpiry",
    "JobReport",
    "JobReporter",
    "JobView",
    "ProcessGroup",
    "build_report",
    "format_report",
    "format_view",
    "merge_reports",
    "process_frame",
    "read_report_dir",
    "report_file_names",
    "write_report_files",
]


class ProcessGroup(msgspec.Struct, kw_only=True):
    """Processes stuck at the same place: ``frame`` (in user code), or no stack for ``reason``.

    ``members`` names each process as ``rank N`` when it has a ``RANK`` label, else
    ``pid N`` (prefixed with its host in a merged view); ``culprit`` marks the group of
    the worker whose timer expired first.
    """

    frame: Frame | None
    reason: str | None
    pids: list[int]
    members: list[str]
    culprit: bool = False
    hosts: list[str] = []


class JobReport(msgspec.Struct, kw_only=True):
    """One host's job report: the snapshot's processes grouped, and the culprit.

    Fields:
        host: the host (or ``--host-label``) the report is from.
        time: wall-clock time of the snapshot.
        culprit: pid of the worker whose timer expired first (``None``: unknown).
        culprit_rank: its ``RANK`` label, if it has one.
        scope_id, expiration_time: the culprit's timer and its wall-clock deadline.
        waiting_for: seconds between the moment every other worker was waiting (had
            armed the timer it held) and the culprit's expiry; ``None`` when not known.
        budget, seconds: the snapshot's budget and how long it held the first signal.
        groups: the processes grouped by where they are stuck, largest group first.
        processes: every process as captured (stacks included).
    """

    host: str
    time: float
    culprit: int | None
    culprit_rank: str | None
    scope_id: str | None
    expiration_time: float | None
    waiting_for: float | None
    budget: float
    seconds: float
    groups: list[ProcessGroup]
    processes: list[ProcessSnapshot]


def process_frame(process: ProcessSnapshot) -> Frame | None:
    """Return where ``process`` is stuck: the innermost user frame of its main thread.

    The main thread is the one whose outermost frame is a module's code; without
    one (or when it runs only library code), the first thread that has a user frame
    is used, so a queue's feeder thread is passed over; when no thread has a user
    frame, the first thread's innermost frame is used.
    """
    threads = sorted(
        process.threads, key=lambda t: not (t.frames and t.frames[-1].function == "<module>")
    )
    for thread in threads:
        if any(not is_library_file(frame.file) for frame in thread.frames):
            return own_frame(thread.frames)
    for thread in process.threads:
        if thread.frames:
            return thread.frames[0]
    return None


def _member(process: ProcessSnapshot) -> str:
    rank = process.labels.get("RANK")
    return f"rank {rank}" if rank is not None else f"pid {process.pid}"


def _rank_key(process: ProcessSnapshot) -> tuple[int, int, str]:
    rank = process.labels.get("RANK", "")
    return (0, int(rank), "") if rank.isdigit() else (1, process.pid, rank)


def armed_times(events: Iterable[Event]) -> dict[int, float]:
    """Return, per worker, when it armed the oldest timer it still holds (from the events)."""
    held: dict[int, dict[str, float]] = {}
    for event in events:
        if isinstance(event, Armed):
            held.setdefault(event.pid, {})[event.scope_id] = event.time
        elif isinstance(event, (Released, Expired)):
            held.get(event.pid, {}).pop(event.scope_id, None)
    return {pid: min(scopes.values()) for pid, scopes in held.items() if scopes}


def build_report(
    snapshot: JobSnapshot, *, armed: Mapping[int, float] | None = None, host: str | None = None
) -> JobReport:
    """Group the snapshot's processes by where they are stuck and name the culprit.

    ``armed`` gives, per worker, when it began waiting (armed the timer it holds; see
    :func:`armed_times`); with it, the report says how long the others had been
    waiting when the culprit's timer expired. ``host`` overrides the snapshot's host.
    """
    by_key: dict[tuple[object, ...], list[ProcessSnapshot]] = {}
    frames: dict[tuple[object, ...], Frame | None] = {}
    for process in sorted(snapshot.processes, key=_rank_key):
        frame = process_frame(process)
        if frame is not None:
            # By function, not line: a process polling in a loop moves between lines.
            key: tuple[object, ...] = ("frame", frame.file, frame.function)
        else:
            key = ("reason", process.reason or "no stack")
        by_key.setdefault(key, []).append(process)
        frames.setdefault(key, frame)  # the line of the lowest rank
    groups = [
        ProcessGroup(
            frame=frames[key],
            reason=None if frames[key] is not None else str(key[1]),
            pids=[p.pid for p in members],
            members=[_member(p) for p in members],
            culprit=any(p.pid == snapshot.culprit for p in members),
        )
        for key, members in by_key.items()
    ]
    groups.sort(key=lambda g: (not g.culprit, -len(g.pids)))
    culprit = next((p for p in snapshot.processes if p.pid == snapshot.culprit), None)
    waiting_for = None
    if armed and snapshot.culprit is not None and snapshot.expiration_time is not None:
        others = [
            armed[p.pid]
            for p in snapshot.processes
            if p.worker and p.pid != snapshot.culprit and p.pid in armed
        ]
        if others and max(others) <= snapshot.expiration_time:
            waiting_for = round(snapshot.expiration_time - max(others), 3)
    return JobReport(
        host=host or snapshot.host,
        time=snapshot.time,
        culprit=snapshot.culprit,
        culprit_rank=None if culprit is None else culprit.labels.get("RANK"),
        scope_id=snapshot.scope_id,
        expiration_time=snapshot.expiration_time,
        waiting_for=waiting_for,
        budget=snapshot.budget,
        seconds=snapshot.seconds,
        groups=groups,
        processes=list(snapshot.processes),
    )


def _where(frame: Frame) -> str:
    return f"{frame.function}() at {frame.file}:{frame.line}"


def _members(members: list[str]) -> str:
    """Return ``ranks 0, 2, 3; pid 40`` for ``rank 0``, ``rank 2``, ``rank 3``, ``pid 40``."""
    ranks = [m.split(" ", 1)[1] for m in members if m.startswith("rank ")]
    pids = [m.split(" ", 1)[1] for m in members if m.startswith("pid ")]
    parts = []
    if ranks:
        parts.append(("rank " if len(ranks) == 1 else "ranks ") + ", ".join(ranks))
    if pids:
        parts.append(("pid " if len(pids) == 1 else "pids ") + ", ".join(pids))
    return "; ".join(parts)


def _group_line(group: ProcessGroup, members: str, culprit_note: str) -> str:
    count = len(group.pids)
    head = f"{count} process{'es' if count != 1 else ''} ({members})"
    where = _where(group.frame) if group.frame is not None else f"no Python stack: {group.reason}"
    return f"{head}: {where}{culprit_note if group.culprit else ''}"


def _culprit_note(report: JobReport) -> str:
    if report.culprit is None:
        return ""
    note = " -- its timer expired first"
    if report.waiting_for is not None:
        note += f", {report.waiting_for:.1f}s after the others were already waiting"
    return note


def _rank_note(rank: str | None) -> str:
    """Return ``" (rank N)"`` for a known rank ``N``, else ``""``."""
    return f" (rank {rank})" if rank is not None else ""


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d} UTC"


def _process_line(process: ProcessSnapshot) -> str:
    labels = " ".join(f"{k}={v}" for k, v in process.labels.items())
    parts = [f"pid {process.pid}"]
    if process.ppid is not None:
        parts.append(f"ppid {process.ppid}")
    if process.command:
        parts.append(process.command)
    parts.append(f"state {process.state}")
    if process.wchan:
        parts.append(f"wchan {process.wchan}")
    if labels:
        parts.append(labels)
    if process.source is not None:
        parts.append(f"stacks from {process.source} in {process.took:.3f}s")
    else:
        parts.append(f"no stacks ({process.reason})")
    if process.expired:
        parts.append("timer expired")
    return ", ".join(parts)


def format_report(report: JobReport, *, stacks: bool = False) -> str:
    """Return the report as text: the culprit, the groups, and with ``stacks`` every stack."""
    count = len(report.processes)
    lines = [
        f"job report ({report.host}, {_clock(report.time)}): {count} "
        f"process{'es' if count != 1 else ''} captured in {report.seconds:.2f}s "
        f"(budget {report.budget:g}s)"
    ]
    if report.culprit is not None:
        lines.append(
            f"  first to expire: pid {report.culprit}{_rank_note(report.culprit_rank)}, "
            f"timer {report.scope_id!r}"
            + (
                f", {report.waiting_for:.1f}s after the others were already waiting"
                if report.waiting_for is not None
                else ""
            )
        )
    note = _culprit_note(report)
    for group in report.groups:
        lines.append("  " + _group_line(group, _members(group.members), note))
    if stacks:
        for process in report.processes:
            lines.append("")
            lines.append(_process_line(process))
            for thread in process.threads:
                ident = f"0x{thread.ident:x}" if thread.ident is not None else "?"
                name = f" {thread.name!r}" if thread.name else ""
                lines.append(f"  thread {ident}{name} (most recent call first):")
                lines.extend(f"    {f.function} ({f.file}:{f.line})" for f in thread.frames)
            if process.kernel_stack:
                lines.append("  kernel stack:")
                lines.extend(f"    {line}" for line in process.kernel_stack)
    return "\n".join(lines)


# -- across hosts -------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def report_file_names(host: str) -> tuple[str, str]:
    """Return the names of one host's report and events files in a report directory."""
    safe = _UNSAFE.sub("_", host) or "host"
    return f"job-report.{safe}.json", f"events.{safe}.jsonl"


def write_report_files(
    directory: str, host: str, report: JobReport | None, events: Iterable[Event]
) -> list[str]:
    """Write this host's report (``null`` without one) and events into ``directory``; return the paths.

    Each file appears complete (written aside, then renamed).
    """
    os.makedirs(directory, exist_ok=True)
    report_name, events_name = report_file_names(host)
    encoder = msgspec.json.Encoder()
    payload = encoder.encode({"host": host, "report": report})
    lines = b"".join(encoder.encode(e) + b"\n" for e in events)
    written = []
    for name, data in ((report_name, payload), (events_name, lines)):
        path = os.path.join(directory, name)
        write_atomically(path, data)
        written.append(path)
    return written


class HostExpiry(msgspec.Struct, kw_only=True):
    """One expired timer of the job, on one host."""

    host: str
    pid: int
    rank: str | None
    scope_id: str
    expiration_time: float


class JobView(msgspec.Struct, kw_only=True):
    """The reports of every host merged: expiries in wall-clock order, groups across hosts.

    ``first`` is the earliest expiry of the job (its process, host and rank).
    """

    hosts: list[str]
    first: HostExpiry | None
    expiries: list[HostExpiry]
    groups: list[ProcessGroup]
    reports: list[JobReport]


class _HostFile(msgspec.Struct):
    host: str
    report: JobReport | None = None


def read_report_dir(directory: str) -> tuple[list[JobReport], dict[str, list[Event]], list[str]]:
    """Read every host's report and events from ``directory``; return them and the problems met.

    Raise ``OSError`` if ``directory`` cannot be listed.
    """
    reports: list[JobReport] = []
    events: dict[str, list[Event]] = {}
    problems: list[str] = []
    decoder = msgspec.json.Decoder(_HostFile)
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith("job-report.") and name.endswith(".json"):
            try:
                with open(path, "rb") as file:
                    host_file = decoder.decode(file.read())
            except (OSError, msgspec.DecodeError) as exc:
                problems.append(f"{name}: {exc}")
                continue
            events.setdefault(host_file.host, [])
            if host_file.report is not None:
                reports.append(host_file.report)
        elif name.startswith("events.") and name.endswith(".jsonl"):
            host = name[len("events.") : -len(".jsonl")]
            try:
                with open(path, "rb") as file:
                    lines = file.read().splitlines()
            except OSError as exc:
                problems.append(f"{name}: {exc}")
                continue
            found = events.setdefault(host, [])
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    found.append(decode_event(line))
                except msgspec.DecodeError as exc:
                    problems.append(f"{name}:{number}: {exc}")
    return reports, events, problems


def merge_reports(reports: list[JobReport], events: Mapping[str, list[Event]]) -> JobView:
    """Merge hosts' reports and events into one job view ordered by wall-clock time.

    Events files are keyed by the safe form of the host name (see :func:`report_file_names`).
    """
    ranks: dict[tuple[str, int], str | None] = {}
    for report in reports:
        for process in report.processes:
            ranks[(report.host, process.pid)] = process.labels.get("RANK")
    safe_names = {report_file_names(r.host)[1]: r.host for r in reports}
    expiries: dict[tuple[str, int, str], HostExpiry] = {}
    for name, host_events in events.items():
        host = safe_names.get(report_file_names(name)[1], name)
        for event in host_events:
            if isinstance(event, Expired):
                expiries.setdefault(
                    (host, event.pid, event.scope_id),
                    HostExpiry(
                        host=host,
                        pid=event.pid,
                        rank=ranks.get((host, event.pid)),
                        scope_id=event.scope_id,
                        expiration_time=event.expiration_time,
                    ),
                )
    for report in reports:
        if report.culprit is not None and report.expiration_time is not None:
            expiries.setdefault(
                (report.host, report.culprit, report.scope_id or ""),
                HostExpiry(
                    host=report.host,
                    pid=report.culprit,
                    rank=report.culprit_rank,
                    scope_id=report.scope_id or "",
                    expiration_time=report.expiration_time,
                ),
            )
    ordered = sorted(expiries.values(), key=lambda e: (e.expiration_time, e.host, e.pid))
    first = ordered[0] if ordered else None
    merged: dict[tuple[object, ...], ProcessGroup] = {}
    for report in sorted(reports, key=lambda r: r.host):
        for group in report.groups:
            frame = group.frame
            key: tuple[object, ...] = (
                ("frame", frame.file, frame.function)
                if frame is not None
                else ("reason", group.reason)
            )
            into = merged.setdefault(
                key, ProcessGroup(frame=frame, reason=group.reason, pids=[], members=[])
            )
            into.pids.extend(group.pids)
            into.members.extend(f"{report.host}: {m}" for m in group.members)
            into.hosts.extend(report.host for _ in group.pids)
            if first is not None and report.host == first.host and first.pid in group.pids:
                into.culprit = True
    groups = sorted(merged.values(), key=lambda g: (not g.culprit, -len(g.pids)))
    hosts = sorted({r.host for r in reports} | {e.host for e in ordered})
    return JobView(hosts=hosts, first=first, expiries=ordered, groups=groups, reports=reports)


def format_view(view: JobView) -> str:
    """Return the merged job view as text."""
    lines = [f"job view over {len(view.hosts)} host(s): {', '.join(view.hosts) or 'none'}"]
    first = view.first
    if first is None:
        lines.append("  no timer expired on any host")
    else:
        rank = f"rank {first.rank}" if first.rank is not None else "rank unknown"
        lines.append(
            f"  first to expire: pid {first.pid} ({rank}) on {first.host}, "
            f"timer {first.scope_id!r} at {_clock(first.expiration_time)}"
        )
    if view.expiries:
        lines.append("  expiries in wall-clock order:")
    for expiry in view.expiries:
        lines.append(
            f"    {_clock(expiry.expiration_time)}  {expiry.host}  "
            f"pid {expiry.pid}{_rank_note(expiry.rank)}  {expiry.scope_id!r}"
        )
    if view.groups:
        lines.append("  where every process was (innermost frame in user code):")
    for group in view.groups:
        by_host: dict[str, list[str]] = {}
        for member in group.members:
            host, _, who = member.partition(": ")
            by_host.setdefault(host, []).append(who)
        members = "; ".join(f"{host}: {_members(who)}" for host, who in by_host.items())
        lines.append("    " + _group_line(group, members, " -- the first to expire is here"))
    return "\n".join(lines)


#: Most events (other than ``armed`` and ``released``) kept for the report directory.
MAX_KEPT_EVENTS = 10_000

#: The name of the report file written into the stacks directory.
REPORT_FILE = "job-report.txt"


class JobReporter:
    """Subscribe to a server: build the job report when its snapshot arrives, and keep it.

    The report is written (with every stack) to ``<stacks_dir>/job-report.txt`` as
    soon as it is built. ``host`` names this host in the report (default: the host
    name). Events other than ``armed`` and ``released`` are kept (up to
    :data:`MAX_KEPT_EVENTS`) for :meth:`write_dir`.
    """

    def __init__(self, *, host: str | None = None, stacks_dir: str | None = None) -> None:
        self.host = host
        self.stacks_dir = stacks_dir
        self.report: JobReport | None = None
        #: Where the report was written, if it was.
        self.path: str | None = None
        self._lock = threading.Lock()
        self._armed: dict[int, dict[str, float]] = {}
        self._events: list[Event] = []

    def __call__(self, event: Event) -> None:
        """Follow ``event``; build and write the report on the first snapshot."""
        with self._lock:
            if isinstance(event, Armed):
                self._armed.setdefault(event.pid, {})[event.scope_id] = event.time
                return
            if isinstance(event, (Released, Expired)):
                held = self._armed.get(event.pid)
                if held is not None:
                    held.pop(event.scope_id, None)
                    if not held:
                        del self._armed[event.pid]
            if isinstance(event, Released):
                return
            if len(self._events) < MAX_KEPT_EVENTS:
                self._events.append(event)
            if not isinstance(event, JobSnapshot) or self.report is not None:
                return
            armed = {pid: min(scopes.values()) for pid, scopes in self._armed.items()}
            self.report = build_report(event, armed=armed, host=self.host)
            report = self.report
        if self.stacks_dir is not None:
            path = os.path.join(self.stacks_dir, REPORT_FILE)
            try:
                with open(path, "w", encoding="utf-8") as out:
                    out.write(format_report(report, stacks=True) + "\n")
                self.path = path
            except OSError as exc:
                logger.warning("cannot write the job report to %s: %s", path, exc)

    def write_dir(self, directory: str) -> list[str]:
        """Write this host's report and events into ``directory`` (see :func:`write_report_files`)."""
        with self._lock:
            events = list(self._events)
            report = self.report
        host = self.host or (report.host if report is not None else socket.gethostname())
        return write_report_files(directory, host, report, events)
