"""RequestBuilder: the one place a worker's requests are built, refreshed in a forked child."""

from __future__ import annotations

import os
import signal
import threading
import time

import msgspec
import pytest

from timer_api import (
    FALLBACK_SIGNAL,
    InvalidRequestError,
    RejectReason,
    RequestBuilder,
    TimerRequest,
    decode_msgpack,
    encode_msgpack,
    process_start_time,
)


def _built_in_child(builder: RequestBuilder) -> tuple[int, int | None, list[TimerRequest]]:
    """Fork; return the child's pid and start time and the requests it built, read back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report who it is and what it built, then leave at once
        try:
            me = os.getpid()
            record = [me, process_start_time(me)] + [
                encode_msgpack(request)
                for request in (builder.arm("child", time.time() + 60), builder.release("child"))
            ]
            os.write(write_end, msgspec.msgpack.encode(record))
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_pid, child_start, *encoded = msgspec.msgpack.decode(b"".join(chunks))
    return child_pid, child_start, [decode_msgpack(data) for data in encoded]


class TestIdentity:
    def test_requests_carry_this_process_and_thread(self) -> None:
        before = time.monotonic()
        arm = RequestBuilder().arm("s", time.time() + 60)
        assert (arm.worker_id, arm.start_time) == (os.getpid(), process_start_time(os.getpid()))
        assert arm.thread_id == threading.get_ident()
        assert arm.deadline is not None
        assert before + 59 < arm.deadline < time.monotonic() + 61

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads running
    def test_a_forked_child_builds_with_its_own_pid_and_start_time(self) -> None:
        builder = RequestBuilder(15)
        parent = builder.arm("parent", time.time() + 60)  # the identity is read and kept here
        child_pid, child_start, built = _built_in_child(builder)
        assert child_pid != os.getpid()
        for request in built:
            assert (request.worker_id, request.start_time) == (child_pid, child_start)
        assert [r.expiration_time >= 0 for r in built] == [True, False]
        again = builder.arm("parent", time.time() + 60)  # the parent keeps its own
        assert (again.worker_id, again.start_time) == (parent.worker_id, parent.start_time)


class TestSignal:
    @pytest.mark.parametrize(
        ("given", "carried"), [(None, None), (0, 0), (-3, -3), (signal.SIGTERM, 15)]
    )
    def test_arm_carries_the_signal(self, given: int | None, carried: int | None) -> None:
        arm = RequestBuilder(given).arm("s", 1.0)
        assert (arm.signal, type(arm.signal)) == (carried, type(carried))

    def test_fallback_fills_in_torchs_number_flagged(self) -> None:
        arm = RequestBuilder(fallback=True).arm("s", 1.0)
        assert (arm.signal, arm.signal_is_fallback) == (FALLBACK_SIGNAL, True)
        assert RequestBuilder(15, fallback=True).arm("s", 1.0).signal_is_fallback is False

    @pytest.mark.parametrize(
        ("bad", "reason"),
        [
            (65, RejectReason.OUT_OF_RANGE),
            (1.5, RejectReason.WRONG_TYPE),
            (True, RejectReason.WRONG_TYPE),
            ("15", RejectReason.WRONG_TYPE),
        ],
    )
    def test_bad_signal_is_refused(self, bad: object, reason: RejectReason) -> None:
        with pytest.raises(InvalidRequestError, match="signal") as caught:
            RequestBuilder(bad)  # type: ignore[arg-type]
        assert caught.value.reason is reason


class TestChecked:
    @pytest.mark.parametrize(
        ("scope", "expiration", "reason"),
        [
            (7, 1.0, RejectReason.WRONG_TYPE),
            ("x" * 2049, 1.0, RejectReason.OUT_OF_RANGE),
            ("s", float("nan"), RejectReason.NON_FINITE),
            ("s", float("inf"), RejectReason.NON_FINITE),
            ("s", "soon", RejectReason.WRONG_TYPE),
        ],
    )
    def test_arm_the_server_would_refuse_raises(
        self, scope: object, expiration: object, reason: RejectReason
    ) -> None:
        with pytest.raises(InvalidRequestError) as caught:
            RequestBuilder().arm(scope, expiration)  # type: ignore[arg-type]
        assert caught.value.reason is reason

    def test_release_of_a_bad_scope_raises(self) -> None:
        with pytest.raises(InvalidRequestError, match="scope_id"):
            RequestBuilder().release(None)  # type: ignore[arg-type]

    def test_longest_scope_is_accepted(self) -> None:
        assert RequestBuilder().release("x" * 2048).scope_id == "x" * 2048
        assert RequestBuilder().arm("x" * 2048, 1.0).scope_id == "x" * 2048

    @pytest.mark.parametrize("expiration", [0, 5, 1.7976931348623157e308, -1.0])
    def test_any_finite_number_is_an_expiration_time(self, expiration: float) -> None:
        assert RequestBuilder().arm("s", expiration).expiration_time == expiration
