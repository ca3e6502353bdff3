"""What the summary says of the workers that still held timers when ``run``'s COMMAND exited."""

from __future__ import annotations

import io
import signal

import pytest

from timer_watchdog import Armed, Exited, Expired, Reaped, Released, Unkillable, WatchdogStats
from timer_watchdog._summary import EventLog, format_summary

COMMAND, WORKER = 100, 200


def armed(pid: int, scope: str) -> Armed:
    return Armed(time=0.0, pid=pid, scope_id=scope, expires_in=60.0)


def expired(scope: str, action: int) -> Expired:
    return Expired(
        time=0.0, pid=WORKER, scope_id=scope, late=0.0, expiration_time=0.0, action=action
    )


@pytest.mark.parametrize(
    ("after", "outcome", "text"),
    [
        ([], "holding", "still holding them when the watchdog stopped"),
        ([Released(time=0.0, pid=WORKER, scope_id="a")], "holding", "still holding"),
        (
            [Released(time=0.0, pid=WORKER, scope_id=s) for s in "ab"],
            "released",
            "released them",
        ),
        ([Exited(time=0.0, pid=WORKER, timers=2)], "exited", "exited"),
        (
            [
                expired("a", int(signal.SIGKILL)),
                Reaped(time=0.0, pid=WORKER, scope_id="a", signal=9, late=0.1),
            ],
            "reaped",
            "killed",
        ),
        (
            [
                expired("a", int(signal.SIGKILL)),
                Unkillable(time=0.0, pid=WORKER, scope_id="a", signal=9, late=5.0, state="D"),
            ],
            "unkillable",
            "still alive after its final signal",
        ),
        ([expired("a", 0), expired("b", 0)], "expired", "reported only"),
        ([expired("a", int(signal.SIGUSR1)), expired("b", 0)], "expired", "reported only"),
        ([expired("a", 0), expired("b", int(signal.SIGUSR1))], "signalled", "sent a notice"),
    ],
)
def test_outcome_of_a_worker_that_outlived_the_command(after, outcome, text):
    log = EventLog(log=io.StringIO())
    for event in (armed(COMMAND, "main"), armed(WORKER, "a"), armed(WORKER, "b")):
        log(event)
    assert log.command_exited(COMMAND) == [WORKER]
    for event in after:
        log(event)
    summary = log.summary(
        stopped="command exited", exit_status=0, seconds=1.0, stats=WatchdogStats()
    )
    (outliver,) = summary.outlived
    assert (outliver.pid, outliver.scope_ids, outliver.outcome) == (WORKER, ["a", "b"], outcome)
    assert f"pid {WORKER} ('a', 'b'): " in format_summary(summary)
    assert text in format_summary(summary)


def test_nothing_outlived_without_other_holders():
    log = EventLog(log=io.StringIO())
    log(armed(COMMAND, "main"))
    log(armed(WORKER, "a"))
    log(Released(time=0.0, pid=WORKER, scope_id="a"))
    assert log.command_exited(COMMAND) == []
    summary = log.summary(
        stopped="command exited", exit_status=0, seconds=1.0, stats=WatchdogStats()
    )
    assert summary.outlived == []
    assert "still holding timers" not in format_summary(summary)
