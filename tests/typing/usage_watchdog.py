"""Typed usage of timer_watchdog's engine names; checked by mypy --strict, never run."""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping

from timer_api import InvalidRequestError, RejectReason, RequestQueue, TimerRequest, TimerServer
from timer_watchdog import (
    TERMINATING_SIGNALS,
    ClockSkew,
    Event,
    Expired,
    Frame,
    JobReport,
    JobSnapshot,
    LoopHealth,
    ProcessGroup,
    ProcessSnapshot,
    Reaped,
    Rejected,
    Signalled,
    ThreadStack,
    Transport,
    WatchdogPolicy,
    WatchdogServer,
    WatchdogStats,
    build_report,
    decode_event,
    encode_event,
    format_report,
)


class EmptyQueue(RequestQueue):
    def size(self) -> int:
        return 0

    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        return []


class EmptyTransport:
    """A third-party transport: no base class, only the members of ``Transport``."""

    def __init__(self, path: str | None) -> None:
        self._path = path or "/nowhere"

    @property
    def path(self) -> str:
        return self._path

    def environment(self) -> Mapping[str, str]:
        return {"EMPTY_TRANSPORT": self._path}

    def server(self, *, max_interval: float, policy: WatchdogPolicy) -> WatchdogServer:
        return WatchdogServer(EmptyQueue(), max_interval, policy=policy)

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        return None


def transport_factory(path: str | None) -> Transport:
    return EmptyTransport(path)


def on_event(event: Event) -> None:
    line: bytes = encode_event(event)
    again: Event = decode_event(line)
    tag: str = again.event
    if isinstance(event, Reaped):
        frame: Frame | None = event.frame
        path: str | None = event.stack_path
        assert frame is None or frame.line > 0, (path, tag)
    elif isinstance(event, Rejected):
        reason: RejectReason = event.reason
        assert reason
    elif isinstance(event, ClockSkew):
        skew: float = event.skew
        assert skew
    elif isinstance(event, JobSnapshot):
        report: JobReport = build_report(event, armed={1234: 1.0}, host="node-1")
        text: str = format_report(report, stacks=True)
        group: ProcessGroup = report.groups[0]
        process: ProcessSnapshot = report.processes[0]
        thread: ThreadStack = process.threads[0]
        rank: str | None = process.labels.get("RANK")
        assert text or group.members or thread.frames or rank or report.waiting_for
    elif isinstance(event, Signalled):
        held: float = event.held
        assert held >= 0
    elif isinstance(event, Expired):
        asked: int | None = event.signal
        action: int = event.action
        assert action or asked is None


def use() -> None:
    policy = WatchdogPolicy(signal=signal.SIGTERM, grace=5.0, stacks_dir="/tmp/stacks")
    server = WatchdogServer(EmptyQueue(), 60.0, True, policy=policy, wall_clock=time.time)
    base: TimerServer = server
    unsubscribe = server.subscribe(on_event)
    server.start()
    server.register_timers([TimerRequest(1234, "scope", time.time() + 10)])
    expired: dict[int, list[TimerRequest]] = server.get_expired_timers(time.time())
    server.clear_timers(set(expired))
    stats: WatchdogStats = server.stats()
    counts: tuple[int, int, int] = (stats.armed, stats.reaped, stats.timers)
    unsubscribe()
    server.stop()
    kills: bool = 9 in TERMINATING_SIGNALS
    transport: Transport = transport_factory(None)
    transport.server(max_interval=1.0, policy=policy).stop()
    transport.close()
    assert base
    assert counts
    assert kills
    assert server.policy.grace
    forced = WatchdogPolicy(force_signal=True, max_timers_per_worker=100, descendants_of=1)
    assert WatchdogPolicy(job_snapshot=True, snapshot_budget=3.0).job_snapshot
    health: LoopHealth = WatchdogServer(EmptyQueue(), policy=forced).loop_health()
    alive: tuple[bool, float, int] = (health.running, health.busy_for, health.loops)
    loops: int = stats.loops + stats.clock_skew
    assert alive
    assert loops >= 0
    new_reasons: tuple[RejectReason, ...] = (RejectReason.TOO_MANY_TIMERS, RejectReason.NOT_IN_JOB)
    assert new_reasons
