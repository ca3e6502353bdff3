"""LocalTimerClient: what it puts on a real multiprocessing queue."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
from typing import Any

import pytest

from timer_api import (
    InvalidRequestError,
    RejectReason,
    TimerRequest,
    decode_msgpack,
    process_start_time,
)
from timer_queue_mp import LocalTimerClient

PATIENCE = 60.0


def take(queue: Any) -> TimerRequest:
    """Take one item off ``queue`` and decode it as the server would."""
    item = queue.get(timeout=PATIENCE)
    assert type(item) is bytes
    return decode_msgpack(item)


def _arm_in_child(client: LocalTimerClient, report: Any) -> None:
    client.acquire("child", time.time() + 60)
    report.put(process_start_time(os.getpid()))
    report.close()
    report.join_thread()


class TestRequests:
    def test_arm_carries_identity_deadline_and_thread(self, fork: Any) -> None:
        queue = fork.Queue()
        client = LocalTimerClient(queue)
        before = time.monotonic()
        client.acquire("step", time.time() + 30)
        after = time.monotonic()
        request = take(queue)
        assert request.worker_id == os.getpid()
        assert request.scope_id == "step"
        assert request.start_time == process_start_time(os.getpid())
        assert request.thread_id == threading.get_ident()
        assert request.signal is None  # the server's choice
        assert request.deadline is not None
        assert before + 25 < request.deadline < after + 35
        assert not request.is_release

    def test_release_is_negative_without_deadline(self, fork: Any) -> None:
        queue = fork.Queue()
        LocalTimerClient(queue).release("step")
        request = take(queue)
        assert request.is_release
        assert request.expiration_time == -1
        assert request.deadline is None
        assert request.start_time == process_start_time(os.getpid())

    def test_requests_keep_their_order(self, fork: Any) -> None:
        queue = fork.Queue()
        client = LocalTimerClient(queue)
        for i in range(50):
            client.acquire(f"s{i}", time.time() + 60)
            client.release(f"s{i}")
        got = [take(queue) for _ in range(100)]
        assert [(r.scope_id, r.is_release) for r in got] == [
            (f"s{i // 2}", i % 2 == 1) for i in range(100)
        ]

    def test_thread_id_is_the_calling_thread(self, fork: Any) -> None:
        queue = fork.Queue()
        client = LocalTimerClient(queue)
        idents: list[int] = []

        def arm() -> None:
            idents.append(threading.get_ident())
            client.acquire("thread", time.time() + 60)

        thread = threading.Thread(target=arm)
        thread.start()
        thread.join(PATIENCE)
        assert take(queue).thread_id == idents[0] != threading.get_ident()

    @pytest.mark.parametrize(
        "signal", [15, signal.SIGTERM, signal.SIGKILL], ids=["int", "SIGTERM", "SIGKILL"]
    )
    def test_signal_extension_is_sent(self, fork: Any, signal: int) -> None:
        # A signal.Signals (an IntEnum) is accepted, as FileTimerClient accepts it.
        queue = fork.Queue()
        LocalTimerClient(queue, signal=signal).acquire("x", time.time() + 60)
        assert take(queue).signal == int(signal)

    def test_start_time_is_read_again_after_fork(self, fork: Any) -> None:
        queue, report = fork.Queue(), fork.Queue()
        client = LocalTimerClient(queue)
        client.acquire("parent", time.time() + 60)  # caches the parent's identity
        assert take(queue).worker_id == os.getpid()
        child = fork.Process(target=_arm_in_child, args=(client, report))
        child.start()
        request = take(queue)
        child_start_time = report.get(timeout=PATIENCE)
        child.join(PATIENCE)
        assert request.worker_id == child.pid
        assert request.start_time == child_start_time != process_start_time(os.getpid())

    def test_pickled_client_keeps_its_signal(self) -> None:
        with multiprocessing.Manager() as manager:
            queue = manager.Queue()
            client = pickle.loads(pickle.dumps(LocalTimerClient(queue, signal=10)))
            client.acquire("x", time.time() + 60)
            assert take(queue).signal == 10


class TestBadInput:
    @pytest.mark.parametrize(
        ("scope", "error"),
        [
            (7, RejectReason.WRONG_TYPE),
            (b"bytes", RejectReason.WRONG_TYPE),
            (None, RejectReason.WRONG_TYPE),
            ("x" * 2049, RejectReason.OUT_OF_RANGE),
        ],
    )
    def test_bad_scope_is_refused_at_the_caller(
        self, fork: Any, scope: Any, error: RejectReason
    ) -> None:
        queue = fork.Queue()
        client = LocalTimerClient(queue)
        with pytest.raises(InvalidRequestError, match="scope_id") as caught:
            client.acquire(scope, time.time() + 60)
        assert caught.value.reason is error
        with pytest.raises(InvalidRequestError, match="scope_id") as caught:
            client.release(scope)
        assert caught.value.reason is error
        client.release("sentinel")
        assert take(queue).scope_id == "sentinel"  # nothing else was put

    @pytest.mark.parametrize("expiration", [math.nan, math.inf, -math.inf])
    def test_non_finite_expiration_is_refused(self, fork: Any, expiration: float) -> None:
        with pytest.raises(ValueError, match="finite"):
            LocalTimerClient(fork.Queue()).acquire("x", expiration)

    def test_request_too_large_for_the_server_is_refused(self, fork: Any) -> None:
        with pytest.raises(InvalidRequestError) as caught:
            LocalTimerClient(fork.Queue()).acquire("\u20ac" * 2048, time.time() + 60)
        assert caught.value.reason is RejectReason.OVERSIZE

    def test_longest_scope_is_accepted_by_the_server(self, fork: Any) -> None:
        queue = fork.Queue()
        LocalTimerClient(queue).acquire("x" * 2048, time.time() + 60)
        assert take(queue).scope_id == "x" * 2048

    @pytest.mark.parametrize("signal", [65, 1.5, True, "15"])
    def test_bad_signal_is_refused(self, fork: Any, signal: Any) -> None:
        with pytest.raises(ValueError, match="signal"):
            LocalTimerClient(fork.Queue(), signal=signal)
