"""LocalTimerServer with real worker processes, real queues and real signals."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import time
import types
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from timer_api import RejectReason, TimerRequest, encode_msgpack, process_start_time
from timer_queue_mp import LocalTimerServer, MultiprocessingRequestQueue
from timer_watchdog import Event, Expired, Rejected, WatchdogPolicy, WatchdogServer

PATIENCE = 60.0

Start = Callable[..., multiprocessing.process.BaseProcess]
Serve = Callable[..., LocalTimerServer]
WaitFor = Callable[..., bool]


def finish(process: multiprocessing.process.BaseProcess) -> int | None:
    """Wait (bounded) for ``process`` and return its exit code."""
    process.join(PATIENCE)
    return process.exitcode


class TestComposition:
    def test_is_the_engine_over_a_multiprocessing_queue(self, fork: Any) -> None:
        server = LocalTimerServer(fork.Queue(), max_interval=5, daemon=False)
        assert isinstance(server, WatchdogServer)
        assert isinstance(server._request_queue, MultiprocessingRequestQueue)
        assert server._max_interval == 5
        assert server._daemon is False

    def test_engine_options_are_passed_on(self, fork: Any) -> None:
        policy = WatchdogPolicy(signal=signal.SIGTERM, grace=2.0)
        assert LocalTimerServer(fork.Queue(), policy=policy).policy is policy

    def test_bad_max_interval_is_refused(self, fork: Any) -> None:
        with pytest.raises(ValueError, match="max_interval"):
            LocalTimerServer(fork.Queue(), max_interval=0)


class TestReaping:
    def test_hung_worker_is_killed(self, fork: Any, serve: Serve, start_worker: Start) -> None:
        queue = fork.Queue()
        server = serve(queue)
        assert finish(start_worker(fork, queue, "hang")) == -signal.SIGKILL
        stats = server.stats()
        assert (stats.armed, stats.expired, stats.signalled) == (1, 1, 1)

    @pytest.mark.parametrize("where", ["policy", "client", "client-enum"])
    def test_configured_signal_is_sent(
        self, fork: Any, serve: Serve, start_worker: Start, where: str
    ) -> None:
        queue = fork.Queue()
        if where == "policy":
            serve(queue, policy=WatchdogPolicy(signal=signal.SIGTERM))
            worker = start_worker(fork, queue, "hang")
        else:
            serve(queue)
            sig = signal.SIGTERM if where == "client-enum" else int(signal.SIGTERM)
            worker = start_worker(fork, queue, "hang", signal=sig)
        assert finish(worker) == -signal.SIGTERM

    def test_in_time_worker_is_untouched(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue, done = fork.Queue(), fork.Event()
        server = serve(queue)
        worker = start_worker(fork, queue, "in_time", finish=done)
        assert wait_for(lambda: server.stats().released == 1)
        done.set()
        assert finish(worker) == 0
        stats = server.stats()
        assert (stats.armed, stats.expired, stats.signalled, stats.timers) == (1, 0, 0, 0)

    def test_nested_scopes_are_each_released_then_outer_reaped(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue, report = fork.Queue(), fork.Queue()
        server = serve(queue)
        worker = start_worker(fork, queue, "nested", report)
        assert report.get(timeout=PATIENCE) == "released"
        assert finish(worker) == -signal.SIGKILL
        assert wait_for(lambda: server.stats().timers == 0)
        stats = server.stats()
        assert (stats.armed, stats.released, stats.expired) == (5, 4, 1)

    def test_recursive_scope_is_one_timer(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue, report, done = fork.Queue(), fork.Queue(), fork.Event()
        server = serve(queue)
        worker = start_worker(fork, queue, "recursive", report, finish=done)
        assert report.get(timeout=PATIENCE) == "released"
        assert wait_for(lambda: server.stats().received == 42)
        done.set()
        stats = server.stats()
        assert (stats.armed, stats.timers, stats.signalled) == (21, 0, 0)
        assert finish(worker) == 0

    def test_thread_that_overstays_gets_its_process_killed(
        self, fork: Any, serve: Serve, start_worker: Start
    ) -> None:
        queue = fork.Queue()
        serve(queue)
        assert finish(start_worker(fork, queue, "threads")) == -signal.SIGKILL

    def test_observe_only_reports_and_spares(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue = fork.Queue()
        server = serve(queue, policy=WatchdogPolicy(observe_only=True))
        events: list[Event] = []
        server.subscribe(events.append)
        worker = start_worker(fork, queue, "hang", after=0.1)
        try:
            assert wait_for(lambda: any(isinstance(e, Expired) for e in events))
            assert worker.is_alive()
            assert server.stats().signalled == 0
        finally:
            worker.kill()
            worker.join(PATIENCE)


class TestManyWorkers:
    def test_many_workers_at_once(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue, done = fork.Queue(), fork.Event()
        server = serve(queue)
        hung = [start_worker(fork, queue, "hang") for _ in range(6)]
        fine = [start_worker(fork, queue, "in_time", finish=done) for _ in range(6)]
        assert [finish(p) for p in hung] == [-signal.SIGKILL] * 6
        assert wait_for(lambda: server.stats().released == 6)
        done.set()
        assert [finish(p) for p in fine] == [0] * 6
        assert server.stats().signalled == 6

    def test_every_request_is_accounted_for(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue, report, done = fork.Queue(), fork.Queue(), fork.Event()
        server = serve(queue)
        workers = [
            start_worker(fork, queue, "pairs", report, pairs=2000, finish=done) for _ in range(8)
        ]
        try:
            assert [report.get(timeout=PATIENCE) for _ in workers] == ["sent"] * 8
            assert wait_for(lambda: server.stats().received == 32_000)
        finally:
            done.set()
        stats = server.stats()
        assert (stats.armed, stats.released, stats.rejected, stats.timers) == (
            16_000,
            16_000,
            0,
            0,
        )
        assert [finish(p) for p in workers] == [0] * 8


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork", "manager"])
def test_every_start_method(
    method: str, serve: Serve, start_worker: Start, wait_for: WaitFor
) -> None:
    ctx = multiprocessing.get_context("fork" if method == "manager" else method)
    with multiprocessing.Manager() if method == "manager" else _nothing() as manager:
        queue = manager.Queue() if manager is not None else ctx.Queue()
        done = manager.Event() if manager is not None else ctx.Event()
        server = serve(queue)
        hung = start_worker(ctx, queue, "hang")
        fine = start_worker(ctx, queue, "in_time", finish=done)
        assert finish(hung) == -signal.SIGKILL
        assert wait_for(lambda: server.stats().released == 1)
        done.set()
        assert finish(fine) == 0
        assert server.stats().signalled == 1


class _nothing:  # noqa: N801 - a stand-in for contextlib.nullcontext with a typed None
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class TestExitedWorkers:
    def test_worker_that_exits_holding_a_timer_is_forgotten(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue, done = fork.Queue(), fork.Event()
        server = serve(queue)
        worker = start_worker(fork, queue, "exit_holding", finish=done, after=0.5)
        assert wait_for(lambda: server.stats().armed == 1)
        done.set()
        assert finish(worker) == 0
        assert wait_for(lambda: server.stats().exited == 1)
        stats = server.stats()
        assert (stats.timers, stats.workers, stats.expired, stats.signalled) == (0, 0, 0, 0)

    def test_requests_a_worker_left_unflushed_never_signal(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue = fork.Queue()
        server = serve(queue)
        workers = [start_worker(fork, queue, "unflushed", after=0.2) for _ in range(5)]
        assert [finish(p) for p in workers] == [0] * 5
        time.sleep(0.5)  # past every deadline those requests carried
        assert wait_for(lambda: server.stats().timers == 0)
        assert server.stats().signalled == 0

    def test_request_naming_a_reused_pid_is_refused(
        self, fork: Any, serve: Serve, wait_for: WaitFor
    ) -> None:
        # What a dead worker's late request looks like once its pid names another
        # process: the pid is live, the start time is not that process's.
        queue = fork.Queue()
        server = serve(queue)
        events: list[Event] = []
        server.subscribe(events.append)
        victim = subprocess.Popen(["sleep", "60"])
        try:
            start_time = None
            assert wait_for(lambda: process_start_time(victim.pid) is not None)
            start_time = process_start_time(victim.pid)
            assert start_time is not None
            stale = TimerRequest(
                victim.pid, "stale", time.time(), 0, start_time - 1, time.monotonic(), 1
            )
            queue.put(encode_msgpack(stale))
            assert wait_for(lambda: server.stats().rejected == 1)
            # The counter and its event are one step: no waiting for the event.
            assert [e.reason for e in events if isinstance(e, Rejected)] == [
                RejectReason.PID_REUSED
            ]
            assert victim.poll() is None
            assert server.stats().signalled == 0
        finally:
            victim.kill()
            victim.wait(PATIENCE)


class TestBadRequests:
    def test_garbage_is_rejected_and_counted_while_valid_requests_are_served(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue = fork.Queue()
        server = serve(queue)
        events: list[Event] = []
        server.subscribe(events.append)
        garbage = [
            b"\xff\x00 not msgpack",
            msgspec.msgpack.encode({"pid": "7", "scope_id": "s", "expiration_time": 1.0}),
            {"pid": 5},
            42,
            "text",
            None,
            types.SimpleNamespace(worker_id=-3, scope_id="s", expiration_time=1.0),
            encode_msgpack(TimerRequest(1, "init", time.time())),
        ]
        for item in garbage[:5]:
            queue.put(item)
        hung = start_worker(fork, queue, "hang")
        for item in garbage[5:]:
            queue.put(item)
        done = fork.Event()
        fine = start_worker(fork, queue, "in_time", finish=done)
        assert finish(hung) == -signal.SIGKILL
        assert wait_for(lambda: server.stats().released == 1)
        done.set()
        assert finish(fine) == 0
        assert wait_for(lambda: server.stats().rejected == len(garbage))
        # The counter and its events are one step: the events are all there already.
        reasons = sorted(e.reason.value for e in events if isinstance(e, Rejected))
        assert reasons == sorted(
            [
                "malformed",
                "wrong_type",
                "wrong_object",
                "wrong_object",
                "wrong_object",
                "wrong_object",
                "bad_pid",
                "protected_pid",
            ]
        )
        stats = server.stats()
        assert (stats.received, stats.armed, stats.signalled) == (len(garbage) + 3, 2, 1)

    def test_torch_style_requests_are_served(
        self, fork: Any, serve: Serve, start_worker: Start, wait_for: WaitFor
    ) -> None:
        queue, done = fork.Queue(), fork.Event()
        server = serve(queue)
        worker = start_worker(fork, queue, "exit_holding", finish=done, after=60)
        try:
            assert wait_for(lambda: server.stats().armed == 1)
            assert worker.pid is not None
            for expiration in (time.time() + 60, -1):
                queue.put(
                    types.SimpleNamespace(
                        worker_id=worker.pid, scope_id="legacy", expiration_time=expiration
                    )
                )
            assert wait_for(lambda: server.stats().released == 1)
            stats = server.stats()
            assert (stats.armed, stats.rejected, stats.timers) == (2, 0, 1)
        finally:
            done.set()
            finish(worker)
