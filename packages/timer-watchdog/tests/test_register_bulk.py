"""register_timers() arms a large batch like its first request at once: same outcome as one by one."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timer_api import MAX_SCOPE_LENGTH, TimerRequest
from timer_watchdog import Armed, Rejected, WatchdogPolicy, WatchdogServer
from timer_watchdog._server import BULK_MIN
from timer_watchdog._table import TimerTable

from .conftest import Child

N = BULK_MIN + 36


def _batch(child: Any, n: int = N, **fields: Any) -> list[TimerRequest]:
    return [child.request(f"s{i}", after=3600.0, **fields) for i in range(n)]


def _outcome(server: WatchdogServer, events: Any) -> tuple[Any, ...]:
    stats = server.stats()
    held = {
        pid: sorted(requests, key=lambda r: r.scope_id)
        for pid, requests in server.get_expired_timers(math.inf).items()
    }
    armed = sorted(e.scope_id for e in events.of(Armed))
    rejected = sorted(((e.reason, e.scope_id) for e in events.of(Rejected)), key=repr)
    counts = (stats.received, stats.armed, stats.released, stats.rejected, stats.timers)
    return counts, held, armed, rejected


@pytest.fixture(scope="module")
def spawn_once() -> Iterator[Child]:
    """One live child for every example of a hypothesis test (its timers are an hour ahead)."""
    code = 'import time\nprint("ready", flush=True)\ntime.sleep(600)'
    child = Child([sys.executable, "-c", code])
    yield child
    child.stop()


@pytest.fixture
def bulk_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every batch the table arms at once (the real method still runs)."""
    calls: list[int] = []
    arm_many = TimerTable.arm_many

    def recording(
        self: TimerTable, worker: Any, scopes: list[str], *args: Any, **kwargs: Any
    ) -> bool:
        done = arm_many(self, worker, scopes, *args, **kwargs)
        if done:
            calls.append(len(scopes))
        return done

    monkeypatch.setattr(TimerTable, "arm_many", recording)
    return calls


def _both(make_server: Callable[..., Any], batch: list[Any], **kwargs: Any) -> tuple[Any, Any]:
    """Register ``batch`` in one call on one server, one request per call on another."""
    whole, single = make_server(start=False, **kwargs), make_server(start=False, **kwargs)
    whole.server.register_timers(batch)
    for request in batch:
        single.server.register_timers([request])
    return _outcome(whole.server, whole.events), _outcome(single.server, single.events)


@pytest.mark.parametrize(
    "fields",
    [{}, {"signal": 15}, {"deadline": False}, {"start_time": False}, {"thread_id": 2**40}],
)
def test_a_uniform_batch_is_armed_at_once_as_if_one_by_one(make_server, spawn, bulk_calls, fields):
    batch = _batch(spawn(), **fields)
    whole, single = _both(make_server, batch)
    assert whole == single
    assert whole[0] == (N, N, 0, 0, N)
    assert bulk_calls == [N - 1]


def _odd(child: Any, kind: str) -> Any:
    """Return a request (or object) that keeps a batch from being armed at once."""
    request = child.request("odd", after=3600.0)
    if kind == "bad signal":
        request.signal = 99
    elif kind == "bool signal":  # equal to the others' signal 0, but not an int
        request.signal = False
    elif kind == "int scope":
        request.scope_id = 5
    elif kind == "long scope":
        request.scope_id = "x" * (MAX_SCOPE_LENGTH + 1)
    elif kind == "nan expiration":
        request.expiration_time = math.nan
    elif kind == "str expiration":
        request.expiration_time = "soon"
    elif kind == "no deadline":
        request.deadline = None
    elif kind == "infinite deadline":
        request.deadline = math.inf
    elif kind == "release":
        request = child.request("s3", after=-1)
    elif kind == "duplicate":
        request = child.request("s3", after=1800.0)
    elif kind == "other thread":
        request.thread_id = 12345
    elif kind == "wrong start time":
        request.start_time = child.start_time + 1
    elif kind == "unhashable thread":
        request.thread_id = []
    elif kind == "not a request":
        request = object()
    elif kind == "subclass":

        class Mine(TimerRequest):
            pass

        request = Mine(child.pid, "odd", time.time() + 3600, start_time=child.start_time)
    return request


#: The kinds of request (or object) :func:`_odd` makes.
ODD_KINDS = [
    "bad signal",
    "bool signal",
    "int scope",
    "long scope",
    "nan expiration",
    "str expiration",
    "no deadline",
    "infinite deadline",
    "release",
    "duplicate",
    "other thread",
    "wrong start time",
    "unhashable thread",
    "not a request",
    "subclass",
]


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_a_batch_with_one_odd_request_is_taken_one_by_one(make_server, spawn, bulk_calls, kind):
    child = spawn()
    batch = _batch(child)
    batch.insert(N // 3, _odd(child, kind))  # not where may_arm_like samples
    whole, single = _both(make_server, batch)
    assert whole == single
    if kind != "subclass":  # a subclass instance may be armed at once: same outcome
        assert bulk_calls == []


def test_a_batch_like_a_rejected_first_request_is_rejected_whole(make_server, spawn, bulk_calls):
    child = spawn()
    h = make_server(start=False)
    h.server.register_timers([child.request("s0", after=3600.0, signal=9)])
    batch = _batch(child, signal=9)
    for request in batch:  # s0 stays armed with signal 9; its new request is not valid
        request.signal = 99
    h.server.register_timers(batch)
    stats = h.server.stats()
    assert (stats.armed, stats.rejected, stats.timers) == (1, N, 1)
    assert [r.signal for r in h.server.get_expired_timers(math.inf)[child.pid]] == [9]
    assert bulk_calls == []


def test_a_batch_of_a_worker_that_holds_some_of_its_scopes_is_taken_one_by_one(
    make_server, spawn, bulk_calls
):
    child = spawn()
    batch = _batch(child)
    whole, single = make_server(start=False), make_server(start=False)
    for h in (whole, single):
        h.server.register_timers([child.request("s7", after=60.0)])
    whole.server.register_timers(batch)
    for request in batch:
        single.server.register_timers([request])
    assert _outcome(whole.server, whole.events) == _outcome(single.server, single.events)
    assert bulk_calls == []


@pytest.mark.parametrize("cap", [N // 2, N, N + 10])
def test_a_batch_beyond_the_workers_cap_is_taken_one_by_one(make_server, spawn, bulk_calls, cap):
    batch = _batch(spawn())
    policy = WatchdogPolicy(max_timers_per_worker=cap)
    whole, single = _both(make_server, batch, policy=policy)
    assert whole == single
    assert whole[0][1] == min(cap, N)  # armed
    assert bulk_calls == ([] if cap < N else [N - 1])


def test_a_batch_with_a_deadline_off_its_expiration_time_is_taken_one_by_one(
    make_server, spawn, bulk_calls
):
    batch = _batch(spawn())
    batch[N // 3].deadline -= 3600.0  # a worker in another time namespace
    whole, single = _both(make_server, batch)
    assert whole == single
    assert bulk_calls == []


def test_a_batch_of_invalid_requests_alike_is_rejected_one_by_one(make_server, spawn, bulk_calls):
    child = spawn()
    pid = [child.pid]  # the same unhashable "pid" in every request: alike, and not valid
    batch = [TimerRequest(pid, f"s{i}", time.time() + 3600) for i in range(N)]  # type: ignore[arg-type]
    whole, single = _both(make_server, batch)
    assert whole == single
    assert whole[0] == (N, 0, 0, N, 0)
    assert bulk_calls == []


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    size=st.integers(BULK_MIN - 2, BULK_MIN + 20),
    odd=st.lists(st.tuples(st.integers(0, BULK_MIN + 20), st.sampled_from(ODD_KINDS)), max_size=3),
    held=st.lists(st.sampled_from(["s0", "s1", "s5", "s40", "s70", "odd"]), max_size=2),
    released=st.booleans(),
)
def test_any_batch_has_the_outcome_of_its_requests_one_by_one(
    make_server, spawn_once, size, odd, held, released
):
    child = spawn_once
    batch = _batch(child, size)
    for position, kind in odd:
        batch.insert(position % (len(batch) + 1), _odd(child, kind))
    # Timers the worker holds before the batch (some released again): the same requests
    # on both servers.
    before = [child.request(scope, after=60.0) for scope in held]
    if released:
        before += [child.request(scope, after=-1) for scope in held]
    whole, single = make_server(start=False), make_server(start=False)
    for h in (whole, single):
        h.server.register_timers(before)
    whole.server.register_timers(batch)
    for request in batch:
        single.server.register_timers([request])
    assert _outcome(whole.server, whole.events) == _outcome(single.server, single.events)
