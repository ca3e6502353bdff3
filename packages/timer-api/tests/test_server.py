"""TimerServer: torch's round semantics, rejections, and a start/stop that never hangs."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from timer_api import (
    InvalidRequestError,
    RejectReason,
    RequestQueue,
    TimerRequest,
    TimerServer,
    _server,
)

LONG = 3600.0  # a max_interval no test may wait out
BOUND = 60.0  # generous upper bound for anything a test waits for


def wait_until(predicate: Callable[[], bool], timeout: float = BOUND) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.01)
    return True


class MemoryQueue(RequestQueue):
    """An in-memory queue whose ``interrupt`` wakes a waiting ``get``."""

    def __init__(self) -> None:
        self._items: collections.deque[TimerRequest | InvalidRequestError] = collections.deque()
        self._cond = threading.Condition()
        self._epoch = 0  # bumped by interrupt(): wakes every waiting get
        self._pending = False  # an interrupt no get has seen yet
        self.calls: list[tuple[int, float]] = []
        self.waiting = 0

    def put(self, *items: TimerRequest | InvalidRequestError) -> None:
        with self._cond:
            self._items.extend(items)
            self._cond.notify_all()

    def size(self) -> int:
        return len(self._items)

    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        with self._cond:
            self.calls.append((size, timeout))
            if self._pending:
                self._pending = False
                return []
            epoch = self._epoch
            self.waiting += 1
            self._cond.wait_for(lambda: self._items or self._epoch != epoch, timeout)
            self.waiting -= 1
            self._pending = False
            return [self._items.popleft() for _ in range(min(size, len(self._items)))]

    def interrupt(self) -> None:
        with self._cond:
            self._epoch += 1
            self._pending = True
            self._cond.notify_all()


class GateQueue(RequestQueue):
    """A queue like torch's: ``get`` waits out its timeout, ``interrupt`` does nothing.

    Only the test can let a waiting ``get`` return, with :meth:`open_gates`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self.gates: list[threading.Event] = []

    def size(self) -> int:
        return 0

    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        gate = threading.Event()
        with self._lock:
            if self._opened:
                return []
            self.gates.append(gate)
        gate.wait(timeout)
        return []

    def open_gate(self, index: int) -> None:
        self.gates[index].set()

    def open_gates(self) -> None:
        with self._lock:
            self._opened = True
            for gate in self.gates:
                gate.set()


class TableServer(TimerServer):
    """A minimal concrete server: a dict of timers and scripted reap outcomes."""

    def __init__(self, queue: RequestQueue, max_interval: float = LONG, daemon: bool = True):
        super().__init__(queue, max_interval, daemon)
        self.timers: dict[tuple[int, str], TimerRequest] = {}
        #: pid -> outcomes of successive reaps (True, False or an exception); default True.
        self.outcomes: dict[int, list[bool | Exception]] = {}
        self.reap_calls: list[int] = []
        self.cleared: list[set[Any]] = []
        self.registered: list[list[TimerRequest]] = []
        self.register_error: Exception | None = None

    def register_timers(self, timer_requests: list[TimerRequest]) -> None:
        if self.register_error is not None:
            error, self.register_error = self.register_error, None
            raise error
        self.registered.append(list(timer_requests))
        for request in timer_requests:
            key = (request.worker_id, request.scope_id)
            if request.expiration_time < 0:
                self.timers.pop(key, None)
            else:
                self.timers[key] = request

    def clear_timers(self, worker_ids: set[Any]) -> None:
        self.cleared.append(set(worker_ids))
        for key in [key for key in self.timers if key[0] in worker_ids]:
            del self.timers[key]

    def get_expired_timers(self, deadline: float) -> dict[Any, list[TimerRequest]]:
        expired: dict[Any, list[TimerRequest]] = {}
        for request in self.timers.values():
            if request.expiration_time <= deadline:
                expired.setdefault(request.worker_id, []).append(request)
        return expired

    def _reap_worker(self, worker_id: Any) -> bool:
        self.reap_calls.append(worker_id)
        outcomes = self.outcomes.get(worker_id, [True])
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class RejectingServer(TableServer):
    def __init__(self, queue: RequestQueue) -> None:
        super().__init__(queue)
        self.rejected: list[InvalidRequestError] = []

    def _reject(self, error: InvalidRequestError) -> None:
        self.rejected.append(error)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("Server-watchdog")]


@pytest.fixture
def queue() -> MemoryQueue:
    return MemoryQueue()


@pytest.fixture
def server(queue: MemoryQueue) -> Iterator[TableServer]:
    server = TableServer(queue)
    yield server
    server.stop()


@pytest.fixture
def gate_queue() -> Iterator[GateQueue]:
    queue = GateQueue()
    yield queue
    queue.open_gates()


PAST = time.time() - 100.0
FUTURE = time.time() + LONG


class TestRound:
    def test_batch_is_taken_whole_and_registered(self, queue, server):
        batch = [
            TimerRequest(1, "a", FUTURE),
            TimerRequest(2, "b", FUTURE),
            TimerRequest(1, "c", FUTURE),
        ]
        queue.put(*batch)
        server._run_watchdog()
        assert queue.calls == [(3, LONG)]
        assert server.registered == [batch]
        assert set(server.timers) == {(1, "a"), (2, "b"), (1, "c")}

    def test_empty_queue_asks_for_one_and_waits_max_interval(self):
        queue = MemoryQueue()
        server = TableServer(queue, max_interval=0.05)
        server._run_watchdog()
        assert queue.calls == [(1, 0.05)]
        assert server.registered == [[]]

    def test_release_removes_the_timer(self, queue, server):
        queue.put(TimerRequest(1, "a", FUTURE), TimerRequest(1, "b", FUTURE))
        server._run_watchdog()
        queue.put(TimerRequest(1, "a", -1.0))
        server._run_watchdog()
        assert set(server.timers) == {(1, "b")}

    def test_expired_workers_are_reaped_and_cleared(self, queue, server):
        queue.put(
            TimerRequest(1, "late", PAST),
            TimerRequest(1, "fine", FUTURE),
            TimerRequest(2, "fine", FUTURE),
            TimerRequest(3, "late", PAST),
        )
        server._run_watchdog()
        assert sorted(server.reap_calls) == [1, 3]
        assert server.cleared == [{1, 3}]
        assert set(server.timers) == {(2, "fine")}

    def test_nothing_expired_reaps_nothing(self, queue, server):
        queue.put(TimerRequest(1, "a", FUTURE))
        server._run_watchdog()
        assert server.reap_calls == []
        assert server.cleared == [set()]

    @pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(1, "EPERM"), KeyError(1)])
    def test_reap_that_raises_counts_as_reaped(self, queue, server, caplog, error):
        server.outcomes[1] = [error]
        queue.put(TimerRequest(1, "late", PAST))
        with caplog.at_level(logging.ERROR, logger="timer_api"):
            server._run_watchdog()
        assert server.cleared == [{1}]
        assert server.timers == {}
        assert any(record.exc_info and record.exc_info[1] is error for record in caplog.records)

    def test_reap_that_returns_false_is_retried_next_round(self, queue, server):
        server.outcomes[1] = [False, False, True]
        queue.put(TimerRequest(1, "late", PAST))
        server._run_watchdog()
        assert server.cleared == [set()]
        assert (1, "late") in server.timers
        for _ in range(2):
            queue.interrupt()  # an empty queue would otherwise wait max_interval
            server._run_watchdog()
        assert server.reap_calls == [1, 1, 1]
        assert server.cleared == [set(), set(), {1}]
        assert server.timers == {}

    def test_one_failing_reap_does_not_stop_the_others(self, queue, server):
        server.outcomes[1] = [False]
        server.outcomes[2] = [RuntimeError("x")]
        queue.put(
            TimerRequest(1, "a", PAST), TimerRequest(2, "a", PAST), TimerRequest(3, "a", PAST)
        )
        server._run_watchdog()
        assert sorted(server.reap_calls) == [1, 2, 3]
        assert server.cleared == [{2, 3}]


class TestRejects:
    def test_invalid_items_go_to_reject_and_valid_ones_around_them_register(self, queue):
        server = RejectingServer(queue)
        bad_pid = InvalidRequestError(RejectReason.BAD_PID, "pid 0")
        garbage = InvalidRequestError(RejectReason.MALFORMED, "not json", b"\xff")
        good = [
            TimerRequest(1, "a", FUTURE),
            TimerRequest(2, "b", FUTURE),
            TimerRequest(3, "c", FUTURE),
        ]
        queue.put(good[0], bad_pid, good[1], garbage, good[2])
        server._run_watchdog()
        assert server.rejected == [bad_pid, garbage]
        assert server.registered == [good]

    def test_default_reject_logs_and_continues(self, queue, server, caplog):
        queue.put(
            InvalidRequestError(RejectReason.OVERSIZE, "too big"), TimerRequest(1, "a", FUTURE)
        )
        with caplog.at_level(logging.WARNING, logger="timer_api"):
            server._run_watchdog()
        assert "oversize: too big" in caplog.text
        assert set(server.timers) == {(1, "a")}


class TestLoop:
    def test_started_server_serves_requests(self, queue, server):
        server.start()
        queue.put(TimerRequest(1, "late", PAST))
        assert wait_until(lambda: server.cleared and {1} in server.cleared)
        assert server.reap_calls[0] == 1

    def test_round_error_is_logged_and_the_loop_goes_on(self, queue, server, caplog):
        server.register_error = RuntimeError("broken table")
        with caplog.at_level(logging.ERROR, logger="timer_api"):
            server.start()
            queue.put(TimerRequest(1, "a", FUTURE))
            assert wait_until(lambda: server.register_error is None)
            queue.put(TimerRequest(2, "b", FUTURE))
            assert wait_until(lambda: (2, "b") in server.timers)
        assert "broken table" in caplog.text

    @pytest.mark.parametrize("daemon", [True, False])
    def test_thread_daemon_flag(self, queue, daemon):
        server = TableServer(queue, daemon=daemon)
        server.start()
        try:
            [thread] = loop_threads()
            assert thread.daemon is daemon
        finally:
            server.stop()
        assert loop_threads() == []

    def test_foreground_loop_stops_on_stop(self, queue, server):
        runner = threading.Thread(target=server._watchdog_loop)
        runner.start()
        assert wait_until(lambda: queue.waiting == 1)
        server.stop()
        runner.join(BOUND)
        assert not runner.is_alive()


class TestStartStop:
    def test_start_twice_runs_one_loop(self, server):
        server.start()
        server.start()
        assert len(loop_threads()) == 1

    @pytest.mark.parametrize("times", [1, 2, 5])
    def test_stop_is_idempotent(self, server, times):
        server.start()
        for _ in range(times):
            server.stop()
        assert loop_threads() == []

    def test_stop_without_start(self, server):
        server.stop()
        server.stop()
        assert loop_threads() == []

    def test_restart_after_stop_serves_again(self, queue, server):
        server.start()
        server.stop()
        server.start()
        queue.put(TimerRequest(1, "a", FUTURE))
        assert wait_until(lambda: (1, "a") in server.timers)
        assert len(loop_threads()) == 1

    def test_concurrent_start_and_stop(self, queue, server):
        errors: list[BaseException] = []

        def churn() -> None:
            try:
                for _ in range(20):
                    server.start()
                    server.stop()
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        workers = [threading.Thread(target=churn) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert not any(worker.is_alive() for worker in workers)
        assert errors == []
        server.stop()

        def all_gone() -> bool:
            queue.interrupt()  # wake any loop a racing stop() left waiting
            return loop_threads() == []

        assert wait_until(all_gone)

    def test_stop_returns_promptly_when_the_queue_interrupts(self, queue):
        server = TableServer(queue, max_interval=LONG)
        server.start()
        [thread] = loop_threads()
        assert wait_until(lambda: queue.waiting == 1)
        began = time.monotonic()
        server.stop()
        # The loop has exited by the time stop() returns: it did not wait out a timeout.
        assert not thread.is_alive()
        assert time.monotonic() - began < BOUND

    @pytest.mark.slow
    def test_stop_is_bounded_when_the_queue_cannot_be_interrupted(self, gate_queue, caplog):
        server = TableServer(gate_queue, max_interval=LONG)
        server.start()
        [thread] = loop_threads()
        assert wait_until(lambda: len(gate_queue.gates) == 1)
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="timer_api"):
            server.stop()
        elapsed = time.monotonic() - began
        assert elapsed < _server.STOP_TIMEOUT + BOUND
        assert thread.is_alive()  # left behind, still blocked in get()
        assert "still busy" in caplog.text
        gate_queue.open_gates()
        thread.join(BOUND)
        assert not thread.is_alive()
        assert len(gate_queue.gates) == 1  # it did not start another round

    def test_loop_left_behind_does_not_resume_after_restart(self, gate_queue, monkeypatch):
        monkeypatch.setattr(_server, "STOP_TIMEOUT", 0.05)
        server = TableServer(gate_queue, max_interval=LONG)
        server.start()
        [old] = loop_threads()
        assert wait_until(lambda: len(gate_queue.gates) == 1)
        server.stop()
        assert old.is_alive()
        server.start()
        assert wait_until(lambda: len(gate_queue.gates) == 2)
        gate_queue.open_gate(0)  # the old loop's get() returns now
        old.join(BOUND)
        assert not old.is_alive()
        assert len(gate_queue.gates) == 2  # the old loop ran no round after its get()
        assert len(loop_threads()) == 1
        server.stop()
