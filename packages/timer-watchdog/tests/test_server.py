"""WatchdogServer against real child processes, real signals and a real loop thread."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from timer_api import InvalidRequestError, LineDecoder, RejectReason, RequestQueue, TimerRequest
from timer_watchdog import (
    Armed,
    Exited,
    Expired,
    LoopHealth,
    Reaped,
    Rejected,
    Released,
    Signalled,
    Unkillable,
    WatchdogPolicy,
    WatchdogServer,
    WatchdogStats,
)
from timer_watchdog._process import Procfs

PATIENCE = 60.0


class TestReaping:
    @pytest.mark.parametrize("max_interval", [0.1, 60.0])
    def test_hung_child_is_killed_with_sigkill(self, make_server, spawn, max_interval):
        # With max_interval 60 the child can only die in time if the loop wakes at the deadline.
        h = make_server(max_interval=max_interval)
        child = spawn()
        h.put(child.request(after=0.2))
        assert child.wait() == -signal.SIGKILL
        reaped = h.events.wait_for(Reaped, child.pid)[0]
        assert (reaped.signal, reaped.scope_id) == (signal.SIGKILL, "scope")
        assert reaped.late >= 0
        wait_until_stats(h, lambda s: s.timers == 0 and s.workers == 0 and s.reaping == 0)
        stats = h.server.stats()
        assert (stats.armed, stats.expired, stats.signalled, stats.reaped) == (1, 1, 1, 1)

    def test_a_worker_whose_pidfd_is_above_1023_is_watched_and_reaped(self, make_server, spawn):
        # select() refuses a descriptor >= FD_SETSIZE (1024); a server that holds many
        # files (or watches many workers) gets its pidfds above it.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"the hard limit on open files ({hard}) is below 1200")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
        held: list[int] = []
        try:
            while not held or held[-1] < 1100:
                held.append(os.open(os.devnull, os.O_RDONLY))
            h = make_server()
            child = spawn()
            h.put(child.request(after=0.2))
            assert child.wait() == -signal.SIGKILL
            h.events.wait_for(Reaped, child.pid)
            assert h.server.stats().rejected == 0
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def test_child_that_releases_in_time_is_untouched(self, make_server, spawn):
        h = make_server()
        child = spawn("print('ready', flush=True); time.sleep(0.5)")
        h.put(child.request(after=60.0))
        h.events.wait_for(Armed, child.pid)
        h.put(child.request(after=-1))
        h.events.wait_for(Released, child.pid)
        assert child.wait() == 0
        assert h.events.of(Signalled) == []
        assert h.server.stats().timers == 0

    @pytest.mark.parametrize("after", [0.2, 60.0])
    def test_child_that_exits_holding_a_timer_is_never_signalled(self, make_server, spawn, after):
        # 0.2: noticed at expiry; 60: noticed by the periodic sweep over workers.
        h = make_server()
        child = spawn()
        h.put(child.request("a", after=after), child.request("b", after=after + 1))
        h.events.wait_for(Armed, child.pid, count=2)
        os.kill(child.pid, signal.SIGTERM)
        # Deliberately not waited for: a zombie is an exited worker too.
        exited = h.events.wait_for(Exited, child.pid)[0]
        assert exited.timers == 2
        assert h.events.of(Signalled) == []
        assert h.events.of(Expired) == []
        wait_until_stats(h, lambda s: s.timers == 0 and s.exited == 1)

    def test_several_workers_each_reaped_once(self, make_server, spawn):
        h = make_server()
        children = [spawn() for _ in range(3)]
        h.put(*[c.request(scope, after=0.1) for c in children for scope in ("x", "y")])
        for child in children:
            assert child.wait() == -signal.SIGKILL
            h.events.wait_for(Reaped, child.pid)
        assert len(h.events.of(Signalled)) == 3
        assert len(h.events.of(Expired)) == 6

    def test_per_timer_signal_is_honoured(self, make_server, spawn):
        h = make_server()
        child = spawn()
        h.put(child.request(after=0.1, signal=signal.SIGTERM))
        assert child.wait() == -signal.SIGTERM
        assert h.events.wait_for(Reaped, child.pid)[0].signal == signal.SIGTERM

    def test_torch_request_without_identity_is_pinned_on_receipt(self, make_server, spawn):
        h = make_server()
        child = spawn()
        h.put(child.request(after=0.1, start_time=False, deadline=False))
        assert child.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, child.pid)


class TestEscalation:
    def test_term_then_kill_after_grace_when_term_is_ignored(self, make_server, spawn):
        policy = WatchdogPolicy(signal=signal.SIGTERM, grace=0.3)
        h = make_server(policy=policy)
        child = spawn("term_ignorer")
        h.put(child.request(after=0.1))
        assert child.wait() == -signal.SIGKILL
        reaped = h.events.wait_for(Reaped, child.pid)[0]
        sent = [(e.signal, e.detail) for e in h.events.of(Signalled, child.pid)]
        assert sent == [(signal.SIGTERM, "first"), (signal.SIGKILL, "escalation")]
        assert reaped.signal == signal.SIGKILL

    def test_child_that_exits_on_term_within_grace_gets_no_kill(self, make_server, spawn):
        policy = WatchdogPolicy(signal=signal.SIGTERM, grace=PATIENCE)
        h = make_server(policy=policy)
        child = spawn("term_exiter")
        h.put(child.request(after=0.1))
        assert child.wait() == 0
        reaped = h.events.wait_for(Reaped, child.pid)[0]
        assert reaped.signal == signal.SIGTERM
        assert [e.signal for e in h.events.of(Signalled, child.pid)] == [signal.SIGTERM]

    @pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGCONT])
    def test_notify_only_signal_clears_only_the_expired_timer(self, make_server, spawn, signum):
        h = make_server(policy=WatchdogPolicy(grace=0.2))
        child = spawn(
            """
            told = threading.Semaphore(0)
            signal.signal(int(sys.argv[1]), lambda *_: told.release())
            print("ready", flush=True)
            while True:
                told.acquire()
                print("told", flush=True)
            """,
            str(int(signum)),
        )
        h.put(child.request("a", after=0.1, signal=signum), child.request("b", after=60))
        assert child.proc.stdout.readline().strip() == "told"
        wait_until_stats(h, lambda s: s.timers == 1 and s.reaping == 0)
        held = h.server.get_expired_timers(time.time() + 100)
        assert [r.scope_id for r in held[child.pid]] == ["b"]  # still armed
        h.put(child.request("b", after=0.1, signal=signum))  # re-armed: it expires too
        assert child.proc.stdout.readline().strip() == "told"
        wait_until_stats(h, lambda s: s.timers == 0 and s.reaping == 0)
        assert child.alive()
        sent = h.events.of(Signalled, child.pid)
        assert [(e.signal, e.detail, e.scope_id) for e in sent] == [
            (signum, "notify", "a"),
            (signum, "notify", "b"),
        ]
        assert h.events.of(Reaped) == []

    def test_unkillable_worker_is_reported_with_its_state_and_retried(self, make_server, spawn):
        class StuckInD(Procfs):
            """Report the worker alive in state D after it was signalled, until told the truth."""

            truth = threading.Event()

            def liveness(self, pid, start_time, pidfd=None):
                if pidfd is not None and not self.truth.is_set():
                    return "D"
                return super().liveness(pid, start_time, pidfd)

        stuck = StuckInD()
        h = make_server(policy=WatchdogPolicy(kill_timeout=0.1), procfs=stuck)
        child = spawn()
        h.put(child.request(after=0.1))
        unkillable = h.events.wait_for(Unkillable, child.pid, count=2)
        assert {(e.state, e.signal) for e in unkillable} == {("D", signal.SIGKILL)}
        assert h.events.of(Reaped) == []
        stuck.truth.set()
        h.events.wait_for(Reaped, child.pid)
        assert child.wait() == -signal.SIGKILL
        assert h.server.stats().unkillable >= 2

    def test_one_slow_reap_does_not_hold_up_another_worker(self, make_server, spawn):
        h = make_server(policy=WatchdogPolicy(signal=signal.SIGTERM, grace=PATIENCE))
        slow = spawn("term_ignorer")
        fast = spawn()
        h.put(slow.request(after=0.1))
        h.events.wait_for(Signalled, slow.pid)
        h.put(fast.request(after=0.1))
        assert fast.wait() == -signal.SIGTERM
        h.events.wait_for(Reaped, fast.pid)
        assert slow.alive()


class TestObserveOnly:
    def test_expiry_is_reported_nothing_signalled_timers_cleared(self, make_server, spawn):
        h = make_server(policy=WatchdogPolicy(observe_only=True))
        child = spawn()
        h.put(child.request("a", after=0.1), child.request("b", after=0.1))
        expired = h.events.wait_for(Expired, child.pid, count=2)
        assert {e.scope_id for e in expired} == {"a", "b"}
        wait_until_stats(h, lambda s: s.timers == 0 and s.reaping == 0)
        assert child.alive()
        assert h.events.of(Signalled) == []
        assert h.events.of(Reaped) == []


class TestWallClock:
    def test_wall_clock_steps_neither_spare_nor_kill_early(self, make_server, spawn):
        offset = [0.0]

        def wall() -> float:
            return time.time() + offset[0]

        h = make_server(wall_clock=wall)
        hung, healthy, sentinel = spawn(), spawn(), spawn()
        h.put(
            hung.request(after=0.3, deadline=False, wall=wall),
            healthy.request(after=120.0, deadline=False, wall=wall),
        )
        h.events.wait_for(Armed, count=2)
        offset[0] = -3600.0  # the clock steps back: a wall-clock server would spare `hung`
        assert hung.wait() == -signal.SIGKILL
        offset[0] = +3600.0  # the clock steps forward: one would now kill `healthy`
        h.put(sentinel.request(after=0.3, deadline=False, wall=wall))
        assert sentinel.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, sentinel.pid)
        assert healthy.alive()
        assert h.events.of(Signalled, healthy.pid) == []

    def test_get_expired_timers_converts_a_wall_deadline(self, make_server, spawn):
        h = make_server(start=False)
        child = spawn()
        soon, late = child.request("soon", after=5.0), child.request("late", after=50.0)
        h.server.register_timers([soon, late])
        assert h.server.get_expired_timers(time.time()) == {}
        assert h.server.get_expired_timers(time.time() + 10) == {child.pid: [soon]}
        everything = h.server.get_expired_timers(time.time() + 100)
        assert sorted(r.scope_id for r in everything[child.pid]) == ["late", "soon"]
        assert h.server.stats().timers == 2


class TestIdentity:
    def test_request_whose_start_time_does_not_match_is_rejected(self, make_server, spawn):
        h = make_server()
        child = spawn()
        forged = TimerRequest(child.pid, "s", time.time() + 0.1, start_time=child.start_time + 1)
        h.put(forged)
        rejected = h.events.wait_for(Rejected)[0]
        assert (rejected.reason, rejected.pid) == (RejectReason.PID_REUSED, child.pid)
        h.put(spawn().request(after=0.1))  # a sentinel reap shows the loop went past the deadline
        h.events.wait_for(Reaped)
        assert child.alive()
        assert h.events.of(Signalled, child.pid) == []

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a child of another user")
    @pytest.mark.parametrize("allowed", [False, True])
    def test_process_of_another_user(self, make_server, spawn, allowed):
        h = make_server(policy=WatchdogPolicy(allow_other_users=allowed))
        child = spawn("os.setuid(65534); print('ready', flush=True); time.sleep(60)")
        h.put(child.request(after=0.1))
        if allowed:
            assert child.wait() == -signal.SIGKILL
            return
        rejected = h.events.wait_for(Rejected)[0]
        assert rejected.reason == RejectReason.OTHER_USER
        assert "65534" in rejected.detail
        assert child.alive()
        assert h.server.stats().timers == 0


def _bad_requests(dead_pid: int, live_pid: int, live_start: int) -> list[tuple[object, str]]:
    now = time.time()
    return [
        (TimerRequest(1, "s", now), RejectReason.PROTECTED_PID),
        (TimerRequest(os.getpgrp(), "s", now), RejectReason.PROTECTED_PID),
        (TimerRequest(0, "s", now), RejectReason.BAD_PID),
        (TimerRequest(-4, "s", now), RejectReason.BAD_PID),
        (TimerRequest("7", "s", now), RejectReason.WRONG_TYPE),  # type: ignore[arg-type]
        (TimerRequest(True, "s", now), RejectReason.WRONG_TYPE),
        (TimerRequest(dead_pid, "s", now), RejectReason.NO_SUCH_PROCESS),
        (TimerRequest(live_pid, "s", math.nan), RejectReason.NON_FINITE),
        (TimerRequest(live_pid, "s", math.inf), RejectReason.NON_FINITE),
        (TimerRequest(live_pid, "s", now, deadline=math.nan), RejectReason.NON_FINITE),
        (TimerRequest(live_pid, "s", "soon"), RejectReason.WRONG_TYPE),  # type: ignore[arg-type]
        (TimerRequest(live_pid, 5, now), RejectReason.WRONG_TYPE),  # type: ignore[arg-type]
        (TimerRequest(live_pid, "s", now, signal=99), RejectReason.OUT_OF_RANGE),
        (TimerRequest(live_pid, "s" * 2049, now), RejectReason.OUT_OF_RANGE),
        (TimerRequest(live_pid, "s", now, start_time=live_start + 7), RejectReason.PID_REUSED),
        ("not a request", RejectReason.WRONG_OBJECT),
    ]


class TestBadInput:
    @pytest.mark.parametrize("index", range(16))
    def test_bad_request_is_rejected_and_the_batch_survives(self, make_server, spawn, index):
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        h = make_server(start=False)
        child = spawn()
        bad, reason = _bad_requests(gone.pid, child.pid, child.start_time)[index]
        h.server.register_timers([child.request("before", 60), bad, child.request("after", 60)])
        rejected = h.events.of(Rejected)
        assert [e.reason for e in rejected] == [reason]
        stats = h.server.stats()
        assert (stats.received, stats.armed, stats.rejected, stats.timers) == (3, 2, 1, 2)

    def test_invalid_items_from_the_queue_are_counted_and_reported(self, make_server, spawn):
        h = make_server()
        child = spawn()
        error = InvalidRequestError(RejectReason.MALFORMED, "not json", b"{oops")
        h.put(error, child.request(after=60))
        rejected = h.events.wait_for(Rejected)[0]
        h.events.wait_for(Armed)
        assert (rejected.reason, rejected.detail, rejected.pid) == (
            RejectReason.MALFORMED,
            "not json",
            None,
        )
        stats = h.server.stats()
        assert (stats.received, stats.rejected, stats.armed) == (2, 1, 1)

    def test_release_of_an_unknown_timer_changes_nothing(self, make_server, spawn):
        h = make_server(start=False)
        child = spawn()
        h.server.register_timers([child.request("nothing", after=-1)])
        assert h.server.stats() == WatchdogStats(received=1)


class TestRobustness:
    def test_callback_that_raises_does_not_stop_the_loop(self, make_server, spawn):
        h = make_server()

        def broken(event: object) -> None:
            raise RuntimeError("callback bug")

        h.server.subscribe(broken)
        child = spawn()
        h.put(child.request(after=0.1))
        assert child.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, child.pid)

    def test_loop_survives_a_queue_that_raises(self, make_server, spawn):
        h = make_server(start=False, max_interval=0.05)
        real_get = h.queue.get
        failures = [0]

        def flaky_get(size: int, timeout: float) -> list:
            if failures[0] < 3:
                failures[0] += 1
                raise OSError("transport hiccup")
            return real_get(size, timeout)

        h.queue.get = flaky_get
        h.server.start()
        child = spawn()
        h.put(child.request(after=0.1))
        assert child.wait() == -signal.SIGKILL
        assert failures[0] == 3

    def test_public_methods_from_other_threads_while_the_loop_runs(self, make_server, spawn):
        h = make_server(max_interval=0.01)
        child = spawn()
        errors: list[BaseException] = []

        def hammer(n: int) -> None:
            try:
                for i in range(300):
                    scope = f"t{n}-{i % 20}"
                    h.server.register_timers([child.request(scope, after=60)])
                    h.server.get_expired_timers(time.time() + 1e6)
                    h.server.stats()
                    if i % 3 == 0:
                        h.server.register_timers([child.request(scope, after=-1)])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE * 4)
        assert errors == []
        # Per thread, scope k was last touched at i = 280 + k, and released if i % 3 == 0.
        expected = 4 * sum(1 for k in range(20) if (280 + k) % 3 != 0)
        stats = h.server.stats()
        held = h.server.get_expired_timers(time.time() + 1e6)
        assert stats.timers == len(held[child.pid]) == expected
        assert child.alive()

    def test_unsubscribe_stops_delivery(self, make_server, spawn):
        h = make_server(start=False)
        seen: list[object] = []
        unsubscribe = h.server.subscribe(seen.append)
        child = spawn()
        h.server.register_timers([child.request("a", after=60)])
        unsubscribe()
        unsubscribe()
        h.server.register_timers([child.request("b", after=60)])
        assert [e.scope_id for e in seen] == ["a"]

    def test_a_request_that_meets_a_fault_loses_only_itself_not_its_batch(self, make_server, spawn):
        poisoned, hung = spawn(), spawn()

        class FaultyProcfs(Procfs):
            """Fail, as no request should make it, on one worker's /proc status."""

            def status(self, pid):
                if pid == poisoned.pid:
                    raise RuntimeError("a fault of the server's, not of the request")
                return super().status(pid)

        h = make_server(start=False, procfs=FaultyProcfs())
        h.put(poisoned.request("p", after=0.1), hung.request("h", after=0.2))
        h.server.start()  # both requests in one batch, the faulty one first
        assert hung.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, hung.pid)
        assert poisoned.alive()
        assert h.events.of(Armed, poisoned.pid) == []


class TestLateRequests:
    """Requests a worker sent before it exited, read after: dropped, never rejected."""

    @pytest.mark.parametrize("pinned", [True, False])
    def test_arms_of_an_exited_worker_are_late_not_rejected(self, make_server, spawn, pinned):
        h = make_server(start=False)
        child = spawn()
        h.server.register_timers([child.request("a", after=60.0)])
        late = [
            child.request("b", after=60.0, start_time=pinned),
            child.request("b", after=-1),
            child.request("c", after=60.0, start_time=pinned),
        ]
        child.proc.kill()
        child.wait()
        h.server.register_timers(late)  # read after the worker exited
        stats = h.server.stats()
        assert (stats.rejected, stats.late, stats.armed, stats.timers) == (0, 2, 1, 0)
        assert h.events.of(Rejected) == []
        assert [e.detail for e in h.events.of(Exited)] == ["exited; a new request names its pid"]

    def test_a_worker_cleared_alive_has_its_next_timers_armed(self, make_server, spawn):
        h = make_server(start=False)
        child = spawn()
        h.server.register_timers([child.request("first", after=60.0)])
        h.server.clear_timers({child.pid})  # forgotten, but alive
        h.server.register_timers([child.request("second", after=60.0)])
        stats = h.server.stats()
        assert (stats.armed, stats.timers, stats.late, stats.rejected) == (2, 1, 0, 0)

    def test_a_request_of_a_pid_never_seen_is_still_rejected(self, make_server, spawn):
        h = make_server(start=False)
        child = spawn()
        request = child.request("a", after=60.0, start_time=False)
        child.proc.kill()
        child.wait()
        h.server.register_timers([request])
        assert [e.reason for e in h.events.of(Rejected)] == [RejectReason.NO_SUCH_PROCESS]
        assert h.server.stats().late == 0

    def test_late_requests_of_a_reaped_worker_are_dropped(self, make_server, spawn):
        h = make_server()
        child = spawn()
        h.put(child.request("hung", after=0.1))
        assert child.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, child.pid)
        wait_until_stats(h, lambda s: s.workers == 0)
        h.put(child.request("sent before the kill", after=60.0))
        wait_until_stats(h, lambda s: s.late == 1)
        assert h.events.of(Rejected) == []


class TestAdmissionLimits:
    def test_timers_beyond_the_cap_are_rejected_and_none_evicted(self, make_server, spawn):
        h = make_server(start=False, policy=WatchdogPolicy(max_timers_per_worker=3))
        child = spawn()
        h.server.register_timers([child.request(f"s{i}", after=60) for i in range(5)])
        assert [e.reason for e in h.events.of(Rejected)] == [RejectReason.TOO_MANY_TIMERS] * 2
        h.server.register_timers([child.request("s0", after=30)])  # a re-arm is not a new timer
        held = h.server.get_expired_timers(time.time() + 100)[child.pid]
        assert sorted(r.scope_id for r in held) == ["s0", "s1", "s2"]
        stats = h.server.stats()
        assert (stats.armed, stats.rejected, stats.timers) == (4, 2, 3)

    def test_only_descendants_of_the_job_are_admitted(self, make_server, spawn):
        outsider = spawn()
        h = make_server(start=False, policy=WatchdogPolicy(descendants_of=outsider.pid))
        mine = spawn()  # a child of this test process, not of `outsider`
        h.server.register_timers([mine.request(after=60)])
        rejected = h.events.of(Rejected)
        assert [(e.reason, e.pid) for e in rejected] == [(RejectReason.NOT_IN_JOB, mine.pid)]
        h.server.register_timers([outsider.request(after=60)])  # the root itself is in the job
        assert h.server.stats().timers == 1

    def test_a_grandchild_of_the_job_is_admitted(self, make_server):
        job = subprocess.Popen(
            [sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '60'])"]
        )
        grandchild = 0
        try:
            h = make_server(start=False, policy=WatchdogPolicy(descendants_of=job.pid))
            grandchild = _wait_for_child_of(job.pid)
            request = TimerRequest(grandchild, "s", time.time() + 60)
            h.server.register_timers([request])
            assert h.events.of(Rejected) == []
            assert h.server.stats().timers == 1
        finally:
            if grandchild:
                os.kill(grandchild, signal.SIGKILL)
            job.kill()
            job.wait(PATIENCE)


def _wait_for_child_of(parent: int) -> int:
    end = time.monotonic() + PATIENCE
    while time.monotonic() < end:
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as file:
                children = file.read().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    pytest.fail(f"pid {parent} started no child in {PATIENCE}s")


class TestLoopHealth:
    def test_health_follows_the_loop(self, make_server, wait_until):
        h = make_server(start=False, max_interval=0.05)
        assert h.server.loop_health() == LoopHealth(running=False, busy_for=0.0, loops=0)
        h.server.start()
        wait_until(lambda: h.server.loop_health().loops >= 3)
        health = h.server.loop_health()
        assert health.running
        assert health.busy_for >= 0.0
        assert h.server.stats().loops >= health.loops
        h.server.stop()
        assert not h.server.loop_health().running


class TestLifecycle:
    def test_stop_returns_while_a_long_wait_is_in_progress(self, make_server):
        h = make_server(max_interval=60.0)
        time.sleep(0.1)  # let the loop enter its 60 s wait
        thread = h.server._watchdog_thread
        assert thread is not None
        assert thread.is_alive()
        h.server.stop()
        assert not thread.is_alive()
        h.server.stop()

    def test_concurrent_starts_make_one_loop(self, make_server, spawn):
        h = make_server(start=False)
        starters = [threading.Thread(target=h.server.start) for _ in range(8)]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join(PATIENCE)
        loops = [t for t in threading.enumerate() if t.name == "WatchdogServer-watchdog"]
        assert len(loops) == 1
        child = spawn()
        h.put(child.request(after=0.1))
        assert child.wait() == -signal.SIGKILL

    def test_restart_after_stop_keeps_the_timers(self, make_server, spawn):
        h = make_server()
        child = spawn()
        h.put(child.request(after=1.0))
        h.events.wait_for(Armed)
        h.server.stop()
        h.server.start()
        assert child.wait() == -signal.SIGKILL

    @pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "60"])
    def test_bad_max_interval_is_refused(self, value):
        with pytest.raises(ValueError, match="max_interval"):
            WatchdogServer(_NullQueue(), max_interval=value)


EXIT_ON_REAP_SERVER = """
import collections, signal, subprocess, sys, time
from timer_api import RequestQueue, TimerRequest, process_start_time
from timer_watchdog import WatchdogPolicy, WatchdogServer

class Once(RequestQueue):
    def __init__(self, items):
        self.items = collections.deque(items)
    def size(self):
        return len(self.items)
    def get(self, size, timeout):
        if not self.items:
            time.sleep(timeout)
        return [self.items.popleft() for _ in range(min(size, len(self.items)))]

worker = subprocess.Popen(["sleep", "60"])
start = process_start_time(worker.pid)
print(worker.pid, start, flush=True)
request = TimerRequest(worker.pid, "s", time.time() + 0.1, start_time=start)
server = WatchdogServer(Once([request]), max_interval=0.05,
                        policy=WatchdogPolicy(exit_on_reap=bool(int(sys.argv[1]))))
server.start()
worker.wait()
time.sleep(0.5)
print("still here", flush=True)
"""


class TestExitOnReap:
    @pytest.mark.parametrize("exit_on_reap", [True, False])
    def test_server_process_kills_itself_only_when_asked(self, exit_on_reap):
        server = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(EXIT_ON_REAP_SERVER), str(int(exit_on_reap))],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            out, _ = server.communicate(timeout=PATIENCE)
        finally:
            server.kill()
        pid, start = (int(part) for part in out.split()[:2])
        assert Procfs().liveness(pid, start) is None  # the worker was killed either way
        if exit_on_reap:
            assert server.returncode == -signal.SIGKILL
            assert "still here" not in out
        else:
            assert server.returncode == 0
            assert "still here" in out


class _NullQueue(RequestQueue):
    def size(self) -> int:
        return 0

    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        return []


def wait_until_stats(h, condition, timeout: float = PATIENCE) -> None:
    end = time.monotonic() + timeout
    while not condition(h.server.stats()):
        if time.monotonic() > end:
            pytest.fail(f"stats never matched: {h.server.stats()}")
        time.sleep(0.005)


def _sentinel_reaped(h, spawn) -> None:
    """Have another worker reaped: proof that the loop went on past earlier deadlines."""
    sentinel = spawn()
    h.put(sentinel.request(after=0.2))
    h.events.wait_for(Reaped, sentinel.pid)


class TestSignalPrecedence:
    @pytest.mark.parametrize(
        ("policy", "asked", "sent"),
        [
            ({}, None, signal.SIGKILL),
            ({"signal": signal.SIGTERM}, None, signal.SIGTERM),
            ({"signal": signal.SIGTERM}, signal.SIGKILL, signal.SIGKILL),
            ({"signal": signal.SIGTERM}, signal.SIGINT, signal.SIGINT),
            ({"signal": signal.SIGTERM, "force_signal": True}, signal.SIGKILL, signal.SIGTERM),
            ({"signal": signal.SIGTERM, "force_signal": True}, 0, signal.SIGTERM),
            ({"signal": signal.SIGTERM, "force_signal": True}, -1, signal.SIGTERM),
        ],
    )
    def test_signal_sent(self, make_server, spawn, policy, asked, sent):
        h = make_server(policy=WatchdogPolicy(**policy))
        child = spawn()
        h.put(child.request(after=0.1, signal=asked))
        assert child.wait() == -sent
        assert [e.signal for e in h.events.of(Signalled, child.pid)] == [sent]

    @pytest.mark.parametrize(
        ("policy", "asked"),
        [
            ({}, 0),
            ({}, -1),
            ({"signal": signal.SIGTERM}, 0),
            ({"observe_only": True}, signal.SIGKILL),
            ({"observe_only": True, "force_signal": True}, None),
        ],
    )
    def test_observed_not_signalled(self, make_server, spawn, policy, asked):
        h = make_server(policy=WatchdogPolicy(**policy))
        child = spawn()
        h.put(child.request("a", after=0.1, signal=asked), child.request("b", after=0.4))
        if policy.get("observe_only"):
            expired = h.events.wait_for(Expired, child.pid, count=2)
        else:
            # b is the server's choice: it kills the child, once a was only reported.
            assert child.wait() == -policy.get("signal", signal.SIGKILL)
            expired = h.events.wait_for(Expired, child.pid, count=2)
            assert [e.scope_id for e in h.events.of(Signalled, child.pid)] == ["b"]
        first = expired[0]
        assert (first.scope_id, first.signal, first.action) == ("a", asked, 0)
        if policy.get("observe_only"):
            assert child.alive()
            assert h.events.of(Signalled, child.pid) == []

    @pytest.mark.parametrize("signum", [0, -1])
    def test_torch_line_with_signal_zero_or_negative_observes(self, make_server, spawn, signum):
        h = make_server()
        child = spawn()
        line = json.dumps(
            {
                "version": 1,
                "pid": child.pid,
                "scope_id": "torch",
                "expiration_time": time.time() + 0.1,
                "signal": signum,
            }
        )
        h.put(*LineDecoder().feed(line.encode() + b"\n"))
        expired = h.events.wait_for(Expired, child.pid)[0]
        assert (expired.signal, expired.action) == (signum, 0)
        _sentinel_reaped(h, spawn)
        assert child.alive()
        assert h.events.of(Signalled, child.pid) == []
        wait_until_stats(h, lambda s: s.timers == 0 and s.workers == 1)

    def test_sigterm_reaches_a_checkpointing_handler_then_sigkill_after_grace(
        self, make_server, spawn, tmp_path
    ):
        h = make_server(policy=WatchdogPolicy(signal=signal.SIGTERM, grace=0.5))
        checkpoint = tmp_path / "checkpoint"
        child = spawn(
            """
            def on_term(*_):
                with open(sys.argv[1], "w") as f:
                    f.write("saved")
                # and stays hung

            signal.signal(signal.SIGTERM, on_term)
            print("ready", flush=True)
            while True:
                time.sleep(0.05)
            """,
            str(checkpoint),
        )
        h.put(child.request(after=0.1))  # the server's choice, as both clients send by default
        assert child.wait() == -signal.SIGKILL
        assert checkpoint.read_text() == "saved"
        sent = [(e.signal, e.detail) for e in h.events.of(Signalled, child.pid)]
        assert sent == [(signal.SIGTERM, "first"), (signal.SIGKILL, "escalation")]


class TestObserveOnlyKeepsTimers:
    def test_every_expiry_is_reported_and_the_rest_stay_armed(self, make_server, spawn):
        h = make_server(policy=WatchdogPolicy(observe_only=True))
        child = spawn()
        h.put(
            child.request("a", after=0.1),
            child.request("b", after=0.5),
            child.request("c", after=3600),
        )
        expired = h.events.wait_for(Expired, child.pid, count=2)
        assert [e.scope_id for e in expired] == ["a", "b"]
        wait_until_stats(h, lambda s: s.timers == 1 and s.reaping == 0)
        held = h.server.get_expired_timers(time.time() + 7200)
        assert [r.scope_id for r in held[child.pid]] == ["c"]
        assert child.alive()
        assert h.events.of(Signalled) == []


class _Gate:
    """A subscriber that holds the first event's delivery until told to let it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, event) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(PATIENCE)


class TestStatsAgreeWithEvents:
    @pytest.mark.slow
    def test_a_counted_rejection_has_been_delivered(self, make_server):
        h = make_server(start=False)
        gate = _Gate()
        h.server.subscribe(gate)  # delivered after the harness's recorder, before this one
        seen: list[tuple[int, int]] = []
        recorder: list[object] = []
        h.server.subscribe(recorder.append)
        bad = InvalidRequestError(RejectReason.MALFORMED, "not json", b"{")
        feeder = threading.Thread(target=h.server._reject, args=(bad,))
        feeder.start()
        assert gate.entered.wait(PATIENCE)

        def read() -> None:
            stats = h.server.stats()
            seen.append((stats.rejected, len(recorder)))

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(2.0)  # the old engine answered at once, mid-delivery
        gate.release.set()
        reader.join(PATIENCE)
        feeder.join(PATIENCE)
        assert seen == [(1, 1)]

    def test_counters_never_run_ahead_of_events_under_load(self, make_server, spawn):
        h = make_server()
        child = spawn()
        rejected: list[object] = []
        h.server.subscribe(lambda e: rejected.append(e) if isinstance(e, Rejected) else None)
        stop = threading.Event()
        behind: list[tuple[int, int]] = []

        def poll() -> None:
            while not stop.is_set():
                stats = h.server.stats()
                if stats.rejected > len(rejected):
                    behind.append((stats.rejected, len(rejected)))

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            for i in range(200):
                h.put(TimerRequest(1, f"s{i}", time.time()), child.request(f"ok{i}", after=60))
            wait_until_stats(h, lambda s: s.rejected == 200 and s.armed == 200)
        finally:
            stop.set()
            poller.join(PATIENCE)
        assert behind == []
