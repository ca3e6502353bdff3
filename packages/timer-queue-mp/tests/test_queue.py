"""MultiprocessingRequestQueue over real queues: torch's get contract, size, interrupt, bad items."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from timer_api import InvalidRequestError, RejectReason, TimerRequest, encode_msgpack
from timer_queue_mp import MultiprocessingRequestQueue
from timer_queue_mp._pipe import _framing_is_known
from timer_queue_mp._queue import WAKE_TOKEN

FORK = multiprocessing.get_context("fork")
PATIENCE = 60.0


def wait_for(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds or PATIENCE passes; return its last value."""
    deadline = time.monotonic() + PATIENCE
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


class SubclassedQueue(multiprocessing.queues.Queue):  # type: ignore[type-arg]
    """A queue type the bulk reader does not know: read through its own get()."""

    def __init__(self) -> None:
        super().__init__(ctx=FORK)


def arm(i: int) -> bytes:
    return encode_msgpack(TimerRequest(4242, f"s{i}", 1000.0 + i))


def scopes(items: list[Any]) -> list[str]:
    return [item.scope_id for item in items]


@pytest.fixture(params=["mp", "subclass", "manager"])
def kind(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """Yield each kind of queue a server may be given."""
    if request.param == "mp":
        yield "mp", FORK.Queue()
    elif request.param == "subclass":
        yield "subclass", SubclassedQueue()
    else:
        with multiprocessing.Manager() as manager:
            yield "manager", manager.Queue()


def put_all(queue: Any, items: list[Any], expect: int | None = None) -> MultiprocessingRequestQueue:
    """Put ``items`` and return a request queue once ``expect`` (default: all) can be read."""
    for item in items:
        queue.put(item)
    requests = MultiprocessingRequestQueue(queue)
    count = len(items) if expect is None else expect
    assert wait_for(lambda: requests.size() >= count)
    return requests


class TestGet:
    def test_returns_at_most_size_and_keeps_the_rest_in_order(self, kind: Any) -> None:
        requests = put_all(kind[1], [arm(i) for i in range(10)])
        assert scopes(requests.get(4, PATIENCE)) == ["s0", "s1", "s2", "s3"]
        assert scopes(requests.get(100, 0.05)) == [f"s{i}" for i in range(4, 10)]

    def test_returns_as_soon_as_size_arrived(self, kind: Any) -> None:
        requests = put_all(kind[1], [arm(i) for i in range(3)])
        started = time.monotonic()
        assert len(requests.get(3, 600)) == 3
        assert time.monotonic() - started < 300  # did not wait for the timeout

    def test_returns_what_arrived_by_the_timeout(self, kind: Any) -> None:
        requests = put_all(kind[1], [arm(0), arm(1)])
        assert scopes(requests.get(5, 0.2)) == ["s0", "s1"]

    def test_waits_for_more_until_size_arrived(self, kind: Any) -> None:
        queue = kind[1]
        requests = put_all(queue, [arm(0)])
        later = threading.Timer(0.2, queue.put, args=(arm(1),))
        later.start()
        try:
            assert scopes(requests.get(2, PATIENCE)) == ["s0", "s1"]
        finally:
            later.cancel()

    def test_empty_queue_gives_nothing(self, kind: Any) -> None:
        assert MultiprocessingRequestQueue(kind[1]).get(5, 0.05) == []

    @pytest.mark.parametrize("size", [0, -1])
    def test_no_size_gives_nothing(self, kind: Any, size: int) -> None:
        requests = put_all(kind[1], [arm(0)])
        assert requests.get(size, 0.05) == []
        assert scopes(requests.get(1, 0.05)) == ["s0"]

    def test_many_requests_from_a_process_keep_their_order(self) -> None:
        queue = FORK.Queue()
        producer = FORK.Process(target=_put_many, args=(queue, 5000))
        producer.start()
        requests = MultiprocessingRequestQueue(queue)
        got: list[Any] = []
        deadline = time.monotonic() + PATIENCE
        while len(got) < 5000 and time.monotonic() < deadline:
            got += requests.get(max(1, requests.size()), 1.0)
        producer.join(PATIENCE)
        assert scopes(got) == [f"s{i}" for i in range(5000)]


def _put_many(queue: Any, n: int) -> None:
    for i in range(n):
        queue.put(arm(i))


def _put_and_vanish(queue: Any, n: int) -> None:
    for i in range(n):
        queue.put(arm(i))
    time.sleep(0.5)  # the feeder thread fills the pipe, then blocks: nobody reads yet
    os._exit(0)


class TestSize:
    def test_counts_what_arrived(self, kind: Any) -> None:
        requests = put_all(kind[1], [arm(i) for i in range(7)])
        assert requests.size() == 7
        requests.get(3, 0)
        assert requests.size() == 4

    def test_skips_requests_lost_with_a_worker_that_did_not_flush(self) -> None:
        # 3000 requests (~100 bytes each) do not fit in a 64 KiB pipe: the worker's
        # feeder thread is still holding most of them when the worker exits.
        queue = FORK.Queue()
        worker = FORK.Process(target=_put_and_vanish, args=(queue, 3000))
        worker.start()
        worker.join(PATIENCE)
        requests = MultiprocessingRequestQueue(queue)
        arrived = 0
        while requests.size():
            arrived += len(requests.get(requests.size(), 0))
        assert 0 < arrived < 3000
        assert queue.qsize() == 3000 - arrived  # qsize() still counts the lost ones
        assert requests.size() == 0
        assert requests.get(1, 0.05) == []


class TestInterrupt:
    def test_wakes_a_waiting_get(self, kind: Any) -> None:
        requests = MultiprocessingRequestQueue(kind[1])
        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(requests.get(1, 600)))
        waiter.start()
        time.sleep(0.1)
        requests.interrupt()
        waiter.join(PATIENCE)
        assert not waiter.is_alive()
        assert result == [[]]

    def test_wake_token_is_never_returned(self, kind: Any) -> None:
        requests = put_all(kind[1], [WAKE_TOKEN, arm(0), WAKE_TOKEN, arm(1)], expect=2)
        got: list[Any] = []
        for _ in range(4):
            got += requests.get(4, 0.05)
        assert scopes(got) == ["s0", "s1"]


def _put_ghost(queue: Any) -> None:
    """Put an object of a class that only this process can import, then a request."""
    module = types.ModuleType("ghost_module_timer_queue_mp")
    ghost = type("Ghost", (), {"__module__": module.__name__})
    module.Ghost = ghost  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    queue.put(ghost())
    queue.put(arm(0))
    queue.close()
    queue.join_thread()


def take_all(
    requests: MultiprocessingRequestQueue, requests_expected: int, rejected_expected: int
) -> tuple[list[TimerRequest], list[InvalidRequestError]]:
    """Read until the expected numbers of requests and rejections arrived (bounded)."""
    got: list[TimerRequest] = []
    rejected: list[InvalidRequestError] = []
    deadline = time.monotonic() + PATIENCE
    while (len(got) < requests_expected or len(rejected) < rejected_expected) and (
        time.monotonic() < deadline
    ):
        got += requests.get(100, 0.1)
        rejected += requests.take_rejected()
    return got, rejected


class TestGetReturnsOnlyRequests:
    def test_request_objects_come_back_as_they_were_put(self, kind: Any) -> None:
        # torch's own queue test puts TimerRequest(0, ...) and expects it back.
        put = [TimerRequest(0, "zero", 0), TimerRequest(-1, "negative", 1.0, signal=99)]
        requests = put_all(kind[1], put)
        assert requests.get(2, PATIENCE) == put
        assert requests.take_rejected() == []

    def test_bad_items_are_set_aside_in_order(self, kind: Any) -> None:
        legacy = types.SimpleNamespace(worker_id=4242, scope_id="old", expiration_time=5.0)
        items = [b"\xffgarbage", arm(0), 42, legacy, "text", TimerRequest(4242, "obj", 6.0), None]
        requests = put_all(kind[1], items, expect=3)
        got, rejected = take_all(requests, 3, 4)
        assert all(type(g) is TimerRequest for g in got)
        assert scopes(got) == ["s0", "old", "obj"]
        assert [r.reason for r in rejected] == [
            RejectReason.MALFORMED,
            RejectReason.WRONG_OBJECT,
            RejectReason.WRONG_OBJECT,
            RejectReason.WRONG_OBJECT,
        ]
        assert requests.take_rejected() == []

    def test_get_returns_early_when_only_a_bad_item_arrived(self, kind: Any) -> None:
        requests = put_all(kind[1], [42], expect=0)
        assert wait_for(lambda: requests.get(1, 0) == [] and len(requests._rejected) == 1)
        started = time.monotonic()
        kind[1].put(43)
        assert requests.get(1, 600) == []
        assert time.monotonic() - started < 300  # did not wait for the timeout
        assert [r.reason for r in requests.take_rejected()] == [RejectReason.WRONG_OBJECT] * 2

    @pytest.mark.parametrize("queue_type", [FORK.Queue, SubclassedQueue])
    def test_item_that_cannot_be_unpickled_is_set_aside(self, queue_type: Any) -> None:
        # (A manager unpickles on put, so there the writer gets the error.)
        queue = queue_type()
        writer = FORK.Process(target=_put_ghost, args=(queue,))
        writer.start()
        writer.join(PATIENCE)
        got, rejected = take_all(MultiprocessingRequestQueue(queue), 1, 1)
        assert scopes(got) == ["s0"]
        assert [r.reason for r in rejected] == [RejectReason.WRONG_OBJECT]
        assert "unpickle" in rejected[0].detail

    def test_item_larger_than_the_pipe_does_not_disturb_the_others(self, kind: Any) -> None:
        requests = put_all(kind[1], [arm(0), b"\x00" * 300_000, arm(1)], expect=2)
        got, rejected = take_all(requests, 2, 1)
        assert scopes(got) == ["s0", "s1"]
        assert [r.reason for r in rejected] == [RejectReason.OVERSIZE]


class TestBulkReader:
    """The bulk reader uses private parts of multiprocessing.Queue; nox runs this on every Python."""

    def test_plain_queue_is_read_in_bulk_on_this_python(self) -> None:
        assert _framing_is_known()
        requests = MultiprocessingRequestQueue(FORK.Queue())
        assert requests.reads_in_bulk

    @pytest.mark.parametrize("change", ["missing", "different"])
    def test_queue_without_the_expected_layout_is_read_through_its_get(self, change: str) -> None:
        # What a future Python that renames or reshapes Queue._reader looks like.
        queue = FORK.Queue()
        for item in (arm(0), 42, arm(1)):
            queue.put(item)  # (the first put starts the feeder thread, which uses _reader)
        if change == "missing":
            del queue._reader
        else:
            queue._reader = object()
        requests = MultiprocessingRequestQueue(queue)
        assert not requests.reads_in_bulk
        got, rejected = take_all(requests, 2, 1)
        assert scopes(got) == ["s0", "s1"]
        assert [r.reason for r in rejected] == [RejectReason.WRONG_OBJECT]

    def test_other_queue_types_are_read_through_their_get(self) -> None:
        assert not MultiprocessingRequestQueue(SubclassedQueue()).reads_in_bulk


class TestBrokenTransport:
    def test_simple_queue_is_refused(self) -> None:
        with pytest.raises(TypeError, match="SimpleQueue"):
            MultiprocessingRequestQueue(FORK.SimpleQueue())

    def test_dead_manager_gives_nothing_and_can_be_interrupted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = multiprocessing.Manager()
        requests = MultiprocessingRequestQueue(manager.Queue())
        manager.shutdown()
        assert requests.get(1, 0.05) == []
        assert requests.size() == 0
        assert "cannot read timer requests" in caplog.text
        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(requests.get(1, 600)))
        waiter.start()
        time.sleep(0.1)
        requests.interrupt()
        waiter.join(PATIENCE)
        assert not waiter.is_alive()
        assert result == [[]]

    def test_closed_queue_gives_nothing(self, caplog: pytest.LogCaptureFixture) -> None:
        queue = FORK.Queue()
        requests = MultiprocessingRequestQueue(queue)
        queue.close()
        assert requests.get(1, 0.05) == []
        assert "is closed" in caplog.text
