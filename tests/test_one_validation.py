"""One validation path: a bad request gets the same rejection from each client, the engine and the codec.

The clients (``LocalTimerClient``, ``FileTimerClient``) refuse it at the caller, the
engine (``register_timers`` of a server) reports it as a ``rejected`` event, and the
codec refuses the same values from the wire: the same reason (and, but for how msgspec
names a type it read from MessagePack, the same message), because all of them check the
constraints annotated on ``timer_api.TimerRequest``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from timer_api import InvalidRequestError, RejectReason, TimerRequest, decode_msgpack
from timer_file import FileTimerClient
from timer_queue_mp import LocalTimerClient, LocalTimerServer
from timer_watchdog import Rejected

FAR = time.time() + 3600

BAD_ARMS = [
    pytest.param(7, FAR, RejectReason.WRONG_TYPE, id="int-scope"),
    pytest.param(None, FAR, RejectReason.WRONG_TYPE, id="none-scope"),
    pytest.param("x" * 2049, FAR, RejectReason.OUT_OF_RANGE, id="long-scope"),
    pytest.param("s", math.nan, RejectReason.NON_FINITE, id="nan"),
    pytest.param("s", math.inf, RejectReason.NON_FINITE, id="inf"),
    pytest.param("s", "soon", RejectReason.WRONG_TYPE, id="str-expiration"),
    pytest.param("s", True, RejectReason.WRONG_TYPE, id="bool-expiration"),
]

BAD_SIGNALS = [
    pytest.param(99, RejectReason.OUT_OF_RANGE, id="99"),
    pytest.param(True, RejectReason.WRONG_TYPE, id="bool"),
    pytest.param(2.0, RejectReason.WRONG_TYPE, id="float"),
]


#: No process is started here: the fork context's queues keep no named semaphore that
#: the resource tracker must follow.
FORK = multiprocessing.get_context("fork")


def _raised(call: Any) -> tuple[RejectReason, str]:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    return caught.value.reason, caught.value.detail


def _engine(request: TimerRequest) -> tuple[RejectReason, str]:
    """Register ``request`` directly on a server (not started); return its one rejection."""
    server = LocalTimerServer(FORK.Queue())
    rejected: list[Rejected] = []
    server.subscribe(lambda event: rejected.append(event) if isinstance(event, Rejected) else None)
    server.register_timers([request])
    assert [server.stats().rejected, server.stats().timers] == [1, 0]
    [event] = rejected
    return event.reason, event.detail


def _wire(**fields: Any) -> tuple[RejectReason, str]:
    """Decode the same values from the wire (MessagePack carries NaN and any type)."""
    data = msgspec.msgpack.encode({"pid": os.getpid(), **fields})
    return _raised(lambda: decode_msgpack(data))


@pytest.mark.parametrize(("scope", "expiration", "reason"), BAD_ARMS)
def test_a_bad_arm_is_refused_alike_everywhere(
    tmp_path: Path, scope: Any, expiration: Any, reason: RejectReason
) -> None:
    queue = FORK.Queue()
    pipe = str(tmp_path / "no-server-needed")  # refused before the client opens anything
    outcomes = {
        "LocalTimerClient": _raised(lambda: LocalTimerClient(queue).acquire(scope, expiration)),
        "FileTimerClient": _raised(lambda: FileTimerClient(pipe).acquire(scope, expiration)),
        "engine": _engine(TimerRequest(os.getpid(), scope, expiration)),
    }
    wire = _wire(scope_id=scope, expiration_time=expiration)
    assert len(set(outcomes.values())) == 1, outcomes
    assert outcomes["engine"][0] is wire[0] is reason


@pytest.mark.parametrize(("signal", "reason"), BAD_SIGNALS)
def test_a_bad_signal_is_refused_alike_everywhere(
    tmp_path: Path, signal: Any, reason: RejectReason
) -> None:
    queue = FORK.Queue()
    outcomes = {
        "LocalTimerClient": _raised(lambda: LocalTimerClient(queue, signal=signal)),
        "FileTimerClient": _raised(lambda: FileTimerClient(str(tmp_path / "p"), signal)),
        "engine": _engine(TimerRequest(os.getpid(), "s", FAR, signal)),
    }
    wire = _wire(scope_id="s", expiration_time=FAR, signal=signal)
    assert len(set(outcomes.values())) == 1, outcomes
    assert outcomes["engine"][0] is wire[0] is reason
