"""Typed usage of timer_watchdog's engine names; checked by mypy --strict, never run."""

from __future__ import annotations

import signal
import time

from timer_api import InvalidRequestError, RejectReason, RequestQueue, TimerRequest, TimerServer
from timer_watchdog import (
    TERMINATING_SIGNALS,
    ClockSkew,
    Event,
    Expired,
    Frame,
    LoopHealth,
    Reaped,
    Rejected,
    WatchdogPolicy,
    WatchdogServer,
    WatchdogStats,
    decode_event,
    encode_event,
    is_terminating,
    parse_faulthandler,
)


class EmptyQueue(RequestQueue):
    def size(self) -> int:
        return 0

    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        return []


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
    kills: bool = is_terminating(int(signal.SIGTERM)) and 9 in TERMINATING_SIGNALS
    where: Frame | None = parse_faulthandler("", None)
    assert base
    assert counts
    assert kills
    assert where is None
    assert server.policy.grace
    forced = WatchdogPolicy(force_signal=True, max_timers_per_worker=100, descendants_of=1)
    health: LoopHealth = WatchdogServer(EmptyQueue(), policy=forced).loop_health()
    alive: tuple[bool, float, int] = (health.running, health.busy_for, health.loops)
    loops: int = stats.loops + stats.clock_skew
    assert alive
    assert loops >= 0
    new_reasons: tuple[RejectReason, ...] = (RejectReason.TOO_MANY_TIMERS, RejectReason.NOT_IN_JOB)
    assert new_reasons
