"""A writer that dies in the middle of an item: the loss is reported and later items still arrive."""

from __future__ import annotations

import array
import fcntl
import multiprocessing
import os
import pickle
import signal
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

import pytest

from timer_api import InvalidRequestError, RejectReason, TimerRequest, encode_msgpack
from timer_queue_mp import LocalTimerServer, MultiprocessingRequestQueue, _pipe
from timer_watchdog import Event, Rejected

FORK = multiprocessing.get_context("fork")
PATIENCE = 60.0

Start = Callable[..., multiprocessing.process.BaseProcess]
Serve = Callable[..., LocalTimerServer]
WaitFor = Callable[..., bool]


@pytest.fixture
def short_frame_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give a cut frame up after 1 s of silence instead of ``FRAME_WAIT``'s 5: the same path, sooner.

    Only for tests whose writer is dead: a live one is never that silent there.
    """
    monkeypatch.setattr(_pipe, "FRAME_WAIT", 1.0)


def arm(i: int) -> bytes:
    return encode_msgpack(TimerRequest(4242, f"s{i}", 1000.0 + i))


def frame(item: object) -> bytes:
    """Return ``item`` framed as ``multiprocessing.connection`` writes it to the pipe."""
    data = pickle.dumps(item)
    return struct.pack("!i", len(data)) + data


def _write_raw(queue: Any, data: bytes) -> None:
    """Write ``data`` straight into the queue's pipe, as a writer killed mid-item leaves it."""
    os.write(queue._writer.fileno(), data)
    os._exit(0)


def _put_then_exit(queue: Any, items: list[Any]) -> None:
    for item in items:
        queue.put(item)
    queue.close()
    queue.join_thread()


def take_all(
    requests: MultiprocessingRequestQueue, n_requests: int, n_rejected: int
) -> tuple[list[TimerRequest], list[InvalidRequestError]]:
    """Read until the expected numbers of requests and rejections arrived (bounded)."""
    got: list[TimerRequest] = []
    rejected: list[InvalidRequestError] = []
    deadline = time.monotonic() + PATIENCE
    while (len(got) < n_requests or len(rejected) < n_rejected) and time.monotonic() < deadline:
        got += requests.get(100, 0.1)
        rejected += requests.take_rejected()
    return got, rejected


# A frame that says it holds `claimed` bytes, with a pickle's first bytes and no more.
TORN = {
    "shorter-than-what-follows": struct.pack("!i", 60) + b"\x80\x04\x95",
    "longer-than-what-follows": struct.pack("!i", 100_000) + b"\x80\x04\x95" + b"\x01" * 5000,
    "not-a-frame": b"\x00\x00\x00\x01xyz",
    "long-header-cut": struct.pack("!iQ", -1, 2**33) + b"\x80\x05",
}


class TestQueue:
    @pytest.mark.slow
    @pytest.mark.usefixtures("short_frame_wait")
    @pytest.mark.parametrize("torn", TORN.values(), ids=TORN.keys())
    def test_items_after_a_torn_one_arrive_and_the_loss_is_reported(self, torn: bytes) -> None:
        queue = FORK.Queue()
        requests = MultiprocessingRequestQueue(queue)
        assert requests.reads_in_bulk
        first = FORK.Process(target=_put_then_exit, args=(queue, [arm(0)]))
        first.start()
        first.join(PATIENCE)
        dying = FORK.Process(target=_write_raw, args=(queue, torn))
        dying.start()
        dying.join(PATIENCE)
        later = FORK.Process(target=_put_then_exit, args=(queue, [arm(1), arm(2)]))
        later.start()
        got, rejected = take_all(requests, 3, 1)
        later.join(PATIENCE)
        assert [g.scope_id for g in got] == ["s0", "s1", "s2"]
        assert len(rejected) == 1
        assert rejected[0].reason is RejectReason.MALFORMED

    @pytest.mark.slow
    @pytest.mark.usefixtures("short_frame_wait")
    def test_torn_item_is_reported_when_nothing_follows(self) -> None:
        queue = FORK.Queue()
        requests = MultiprocessingRequestQueue(queue)
        dying = FORK.Process(target=_write_raw, args=(queue, TORN["longer-than-what-follows"]))
        dying.start()
        dying.join(PATIENCE)
        got, rejected = take_all(requests, 0, 1)
        assert got == []
        assert [r.reason for r in rejected] == [RejectReason.MALFORMED]
        assert "short" in rejected[0].detail
        # And the queue keeps working afterwards.
        queue.put(arm(5))
        got, rejected = take_all(requests, 1, 0)
        assert [g.scope_id for g in got] == ["s5"]
        assert rejected == []

    def test_reads_in_bulk_while_an_item_is_written_slowly(self) -> None:
        # A live writer that keeps making progress is never cut off.
        queue = FORK.Queue()
        requests = MultiprocessingRequestQueue(queue)
        huge = b"\x01" * 3_000_000
        writer = FORK.Process(target=_put_then_exit, args=(queue, [arm(0), huge, arm(1)]))
        writer.start()
        got, rejected = take_all(requests, 2, 1)
        writer.join(PATIENCE)
        assert [g.scope_id for g in got] == ["s0", "s1"]
        assert [r.reason for r in rejected] == [RejectReason.OVERSIZE]


def _put_huge_item(queue: Any) -> None:
    """Put an item far larger than the pipe, and stay (the feeder blocks on the full pipe)."""
    queue.put(b"\x01" * 8_000_000)
    time.sleep(120)


def _pipe_holds_part_of_it(fd: int) -> bool:
    """Tell whether half the pipe's capacity (of an 8 MB item) is waiting in it."""
    waiting = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, waiting)
    return waiting[0] >= fcntl.fcntl(fd, 1032) // 2  # F_GETPIPE_SZ


@pytest.mark.slow
@pytest.mark.usefixtures("short_frame_wait")
def test_worker_killed_mid_item_does_not_leave_the_server_deaf(
    serve: Serve, start_worker: Start, wait_for: WaitFor
) -> None:
    queue = FORK.Queue()
    victim = FORK.Process(target=_put_huge_item, args=(queue,), daemon=True)
    victim.start()
    # Nobody reads yet: the victim's feeder thread fills the pipe and blocks in write().
    fd = queue._reader.fileno()
    assert wait_for(lambda: _pipe_holds_part_of_it(fd), PATIENCE), "the item never reached the pipe"
    victim.kill()  # mid-item, holding the queue's write lock
    victim.join(PATIENCE)
    assert victim.exitcode == -signal.SIGKILL
    server = serve(queue)
    events: list[Event] = []
    server.subscribe(events.append)
    hung = start_worker(FORK, queue, "hang")
    hung.join(PATIENCE)
    assert hung.exitcode == -signal.SIGKILL, "the later hung worker was not reaped"
    done = FORK.Event()
    fine = start_worker(FORK, queue, "in_time", finish=done)
    assert wait_for(lambda: server.stats().released == 1)
    done.set()
    fine.join(PATIENCE)
    assert fine.exitcode == 0
    rejections = [e for e in events if isinstance(e, Rejected)]
    assert [e.reason for e in rejections] == [RejectReason.MALFORMED]
    assert "short" in rejections[0].detail
    assert "write lock" in rejections[0].detail
    assert server.stats().rejected == 1


def _write_whole_item_then_die_holding_the_lock(queue: Any, item: bytes) -> None:
    """Write a whole item as a feeder thread does, and die before releasing the writers' lock.

    This is what SIGKILL leaves when it lands between a feeder thread's write and its
    release of the lock, as it can when the reaper kills a worker whose other thread is
    sending a request: nothing is cut short, and the lock stays held for good.
    """
    queue._wlock.acquire()
    queue._writer.send_bytes(pickle.dumps(item))
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_writer_killed_holding_the_write_lock_does_not_leave_the_server_deaf(
    serve: Serve, start_worker: Start, wait_for: WaitFor
) -> None:
    queue = FORK.Queue()
    server = serve(queue)
    armed_by_the_dead = TimerRequest(4242, "whole", time.time() + 3600)
    dying = FORK.Process(
        target=_write_whole_item_then_die_holding_the_lock,
        args=(queue, encode_msgpack(armed_by_the_dead)),
    )
    dying.start()
    dying.join(PATIENCE)
    assert dying.exitcode == -signal.SIGKILL
    assert not queue._wlock.acquire(False), "the dead writer should have left the lock held"
    # A later worker's requests must still reach the server: its hang is reaped.
    hung = start_worker(FORK, queue, "hang")
    hung.join(PATIENCE)
    assert hung.exitcode == -signal.SIGKILL, "the hung worker after the dead writer was not reaped"
    done = FORK.Event()
    fine = start_worker(FORK, queue, "in_time", finish=done)
    assert wait_for(lambda: server.stats().released == 1, PATIENCE)
    done.set()
    fine.join(PATIENCE)
    assert fine.exitcode == 0
