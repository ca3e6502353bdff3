"""The timer table: deadline order, lazy deletion, compaction, rebuilt requests, bulk arming."""

from __future__ import annotations

import math
import sys

import pytest

from timer_api import TimerRequest
from timer_watchdog import _table
from timer_watchdog._table import COMPACT_SLACK, TimerTable, Worker


def _arm(table: TimerTable, pid: int, scope: str, deadline: float) -> TimerRequest:
    worker = table.get(pid)
    if worker is None:
        worker = table.add_worker(pid, 100)
    request = TimerRequest(pid, scope, deadline)
    table.arm(worker, scope, deadline, request)
    return request


class TestOrder:
    def test_pop_expired_returns_due_timers_in_deadline_order(self):
        table = TimerTable()
        for scope, deadline in [("c", 3.0), ("a", 1.0), ("d", 9.0), ("b", 2.0)]:
            _arm(table, 7, scope, deadline)
        popped = table.pop_expired(3.0)
        assert [entry[2].scope_id for entry in popped] == ["a", "b", "c"]
        assert (table.armed, table.timers) == (1, 4)
        assert table.next_deadline() == 9.0

    def test_rearm_moves_the_deadline(self):
        table = TimerTable()
        _arm(table, 7, "a", 1.0)
        _arm(table, 7, "a", 5.0)
        assert table.pop_expired(2.0) == []
        assert table.next_deadline() == 5.0
        assert table.armed == 1

    def test_equal_deadlines_do_not_compare_requests(self):
        table = TimerTable()
        for _ in range(3):
            _arm(table, 7, "same", 1.0)
        _arm(table, 8, "same", 1.0)
        assert len(table.pop_expired(1.0)) == 2

    @pytest.mark.parametrize("limit", [0.5, 2.0, 5.0, 100.0])
    def test_expired_by_matches_a_full_scan_and_changes_nothing(self, limit):
        table = TimerTable()
        requests = {}
        for i in range(50):
            deadline = float((i * 37) % 11)
            requests[(7 + i % 3, f"s{i}")] = (_arm(table, 7 + i % 3, f"s{i}", deadline), deadline)
        for i in range(0, 50, 4):  # some re-armed later, some released
            requests[(7 + i % 3, f"s{i}")] = (_arm(table, 7 + i % 3, f"s{i}", 50.0), 50.0)
        for i in range(1, 50, 5):
            worker = table.get(7 + i % 3)
            assert worker is not None
            assert table.release(worker, f"s{i}")
            del requests[(7 + i % 3, f"s{i}")]
        table.pop_expired(1.0)
        before = (table.armed, table.timers, table.heap_size)
        found = table.expired_by(limit)
        expected: dict[int, list[TimerRequest]] = {}
        for (pid, _), (request, deadline) in requests.items():
            if deadline <= limit:
                expected.setdefault(pid, []).append(request)
        key = lambda r: r.scope_id  # noqa: E731
        assert {p: sorted(v, key=key) for p, v in found.items()} == {
            p: sorted(v, key=key) for p, v in expected.items()
        }
        assert (table.armed, table.timers, table.heap_size) == before


class TestMemory:
    def test_release_keeps_the_proved_worker_until_dropped(self):
        table = TimerTable()
        _arm(table, 7, "a", 1.0)
        worker = table.get(7)
        assert worker is not None
        assert table.release(worker, "a")
        assert table.get(7) is worker
        assert (len(worker), table.timers) == (0, 0)
        assert not table.release(worker, "a")
        assert table.drop_worker(7) is worker
        assert table.get(7) is None
        assert len(table) == 0

    @pytest.mark.parametrize("churn", ["release", "rearm"])
    def test_stale_entries_are_compacted(self, churn):
        table = TimerTable()
        _arm(table, 7, "keep", 1e9)
        for i in range(5 * COMPACT_SLACK):
            _arm(table, 7, "churn", float(i))
            if churn == "release":
                worker = table.get(7)
                assert worker is not None
                table.release(worker, "churn")
        assert table.heap_size <= 2 * table.armed + COMPACT_SLACK + 1

    def test_drop_worker_forgets_its_timers(self):
        table = TimerTable()
        for scope in "abc":
            _arm(table, 7, scope, 1.0)
        _arm(table, 8, "x", 2.0)
        table.pop_expired(1.0)
        dropped = table.drop_worker(7)
        assert dropped is not None
        assert len(dropped) == 3
        assert (table.armed, table.timers, len(table)) == (1, 1, 1)
        assert table.drop_worker(7) is None
        assert table.pop_expired(10.0)[0][2].worker_id == 8


def _held(table: TimerTable, pid: int) -> int:
    """Return how many slots of worker ``pid`` are in use (armed or expired timers)."""
    worker = table.get(pid)
    assert worker is not None
    return len(worker.scopes) - len(worker.free)


def _sorted(found: dict[int, list[TimerRequest]]) -> dict[int, list[TimerRequest]]:
    return {pid: sorted(requests, key=lambda r: r.scope_id) for pid, requests in found.items()}


_SHAPES = [
    {},
    {"signal": 15},
    {"signal": None},
    {"signal": -1},
    {"start_time": 100},
    {"deadline": True},
    {"thread_id": 2**63 + 5},
    {"signal": 9, "start_time": 100, "deadline": True, "thread_id": 77},
]


def _request(pid: int, scope: str, deadline: float, fields: dict[str, object]) -> TimerRequest:
    extra = dict(fields)
    if extra.pop("deadline", False):
        extra["deadline"] = deadline
    return TimerRequest(pid, scope, deadline + 1000.0, **extra)  # type: ignore[arg-type]


class TestRequests:
    @pytest.mark.parametrize("fields", _SHAPES)
    def test_rebuilt_requests_equal_the_armed_ones(self, fields):
        table = TimerTable()
        worker = table.add_worker(7, 100)
        request = _request(7, "a", 3.0, fields)
        table.arm(worker, "a", 3.0, request)
        assert table.expired_by(3.0) == {7: [request]}
        assert table.expired_by(float("inf")) == {7: [request]}
        [(deadline, _, popped)] = table.pop_expired(3.0)
        assert (deadline, popped) == (3.0, request)
        assert table.expired_by(3.0) == {7: [request]}

    def test_the_shape_cache_starting_over_keeps_the_shape_of_the_timers_held(self, monkeypatch):
        monkeypatch.setattr(_table, "_INTERN_LIMIT", 2)
        table = TimerTable()
        worker = table.add_worker(7, 100)
        assert table.arm_many(worker, ["a"], [1.0], [1001.0], worker.shape(None, 100, None, False))
        worker.shape(9, None, None, True)
        worker.shape(15, None, None, True)  # the cache is full: it starts over
        assert not table.arm_many(
            worker, ["a"], [2.0], [1002.0], worker.shape(None, 100, None, False)
        )
        assert table.expired_by(float("inf")) == {7: [TimerRequest(7, "a", 1001.0, start_time=100)]}

    def test_the_table_keeps_no_reference_to_a_request(self):
        table = TimerTable()
        worker = table.add_worker(7, 100)
        request = TimerRequest(7, "a", 1e9, 9, 100, 5.0, 77)
        before = sys.getrefcount(request)
        table.arm(worker, "a", 5.0, request)
        assert sys.getrefcount(request) == before

    def test_mixed_shapes_and_released_slots_are_rebuilt_in_either_query(self):
        table = TimerTable()
        worker = table.add_worker(7, 100)
        armed = {}
        for i in range(40):
            request = _request(7, f"s{i}", float(i), _SHAPES[i % len(_SHAPES)])
            table.arm(worker, f"s{i}", float(i), request)
            armed[f"s{i}"] = request
        for i in range(0, 40, 3):
            assert table.release(worker, f"s{i}")
            del armed[f"s{i}"]
        table.pop_expired(10.0)
        key = lambda r: r.scope_id  # noqa: E731
        everything = sorted(armed.values(), key=key)
        assert sorted(table.expired_by(float("inf"))[7], key=key) == everything
        assert sorted(table.expired_by(39.0)[7], key=key) == everything
        assert sorted(table.expired_by(20.0)[7], key=key) == [
            r for r in everything if int(r.scope_id[1:]) <= 20
        ]

    def test_nan_deadline_finds_nothing(self):
        table = TimerTable()
        _arm(table, 7, "a", 1.0)
        assert table.expired_by(float("nan")) == {}


class TestSlots:
    def test_a_released_slot_reused_at_the_same_deadline_expires_once(self):
        table = TimerTable()
        _arm(table, 7, "a", 1.0)
        worker = table.get(7)
        assert worker is not None
        assert table.release(worker, "a")
        _arm(table, 7, "b", 1.0)
        assert [entry[2].scope_id for entry in table.pop_expired(1.0)] == ["b"]
        assert table.pop_expired(1.0) == []
        assert list(table.expired_by(1.0)) == [7]
        assert len(table.expired_by(1.0)[7]) == 1

    def test_a_timer_rearmed_after_expiry_frees_the_old_slot_when_it_expires_again(self):
        table = TimerTable()
        for round_ in range(5):
            _arm(table, 7, "a", float(round_))
            assert len(table.pop_expired(float(round_))) == 1
        assert _held(table, 7) == 1
        assert table.timers == 1

    def test_drop_expired_keeps_armed_timers_and_frees_the_slots(self):
        table = TimerTable()
        for scope, deadline in [("a", 1.0), ("b", 2.0), ("c", 9.0)]:
            _arm(table, 7, scope, deadline)
        table.pop_expired(5.0)
        worker = table.get(7)
        assert worker is not None
        assert table.drop_expired(worker) == 2
        assert (table.timers, table.armed, _held(table, 7)) == (1, 1, 1)
        assert [r.scope_id for r in table.expired_by(10.0)[7]] == ["c"]

    @pytest.mark.parametrize("deadline", [1e305, -1e305, 1.7976931348623157e308])
    def test_far_deadlines_are_armed_and_ordered(self, deadline):
        table = TimerTable()
        _arm(table, 7, "far", deadline)
        _arm(table, 7, "near", 0.5)
        assert table.next_deadline() == min(deadline, 0.5)
        due = [entry[2].scope_id for entry in table.pop_expired(1.0)]
        assert due == (["far", "near"] if deadline < 0 else ["near"])


class TestArmMany:
    @staticmethod
    def _batch(n: int, first: int = 0) -> tuple[list[str], list[float], list[float]]:
        scopes = [f"s{first + i}" for i in range(n)]
        deadlines = [float((first + i) * 37 % 101) for i in range(n)]
        expirations = [d + 1000.0 for d in deadlines]
        return scopes, deadlines, expirations

    def test_arm_many_is_arm_one_by_one(self):
        bulk, single = TimerTable(), TimerTable()
        for table in (bulk, single):
            table.add_worker(7, 100)
        _arm(bulk, 7, "before", 50.0)
        _arm(single, 7, "before", 50.0)
        worker = bulk.get(7)
        assert worker is not None
        for first in (0, 300):  # the second batch lands on a non-empty table
            scopes, deadlines, expirations = self._batch(300, first)
            shape = worker.shape(9, None, None, True)
            assert bulk.arm_many(worker, scopes, deadlines, expirations, shape)
            other = single.get(7)
            assert other is not None
            for scope, deadline, expiration in zip(scopes, deadlines, expirations, strict=True):
                request = TimerRequest(7, scope, expiration, 9, deadline=deadline)
                single.arm(other, scope, deadline, request)
        assert bulk.expired_by(float("inf")) == single.expired_by(float("inf"))
        assert _sorted(bulk.expired_by(40.0)) == _sorted(single.expired_by(40.0))
        assert bulk.next_deadline() == single.next_deadline() == 0.0
        popped = [(d, r) for d, _, r in bulk.pop_expired(60.0)]
        assert popped == [(d, r) for d, _, r in single.pop_expired(60.0)]
        assert (bulk.armed, bulk.timers) == (single.armed, single.timers)

    @pytest.mark.parametrize("clash", ["duplicate", "armed", "expired"])
    def test_arm_many_refuses_scopes_that_are_not_new_and_changes_nothing(self, clash):
        table = TimerTable()
        _arm(table, 7, "s1", 1.0)
        if clash == "expired":
            table.pop_expired(1.0)
        worker = table.get(7)
        assert worker is not None
        scopes, deadlines, expirations = self._batch(3)
        if clash == "duplicate":
            table.release(worker, "s1")
            scopes[2] = scopes[0]
        before = (table.armed, table.timers, table.heap_size, len(worker.scopes))
        shape = worker.shape(None, None, None, False)
        assert not table.arm_many(worker, scopes, deadlines, expirations, shape)
        assert (table.armed, table.timers, table.heap_size, len(worker.scopes)) == before

    def test_arm_many_with_a_deadline_too_far_for_microseconds_is_ordered_last(self):
        table = TimerTable()
        worker = table.add_worker(7, 100)
        scopes, deadlines, expirations = self._batch(2)
        deadlines[1] = 1.7e308
        shape = worker.shape(None, None, None, True)
        assert table.arm_many(worker, scopes, deadlines, expirations, shape)
        assert table.armed == 2
        assert [entry[2].scope_id for entry in table.pop_expired(math.inf)] == ["s0", "s1"]

    def test_a_run_orders_only_the_timers_still_armed_as_it_armed_them(self):
        table = TimerTable()
        worker = table.add_worker(7, 100)
        scopes, deadlines, expirations = self._batch(4)
        assert table.arm_many(
            worker, scopes, deadlines, expirations, worker.shape(9, None, None, True)
        )
        assert table.heap_size == 0  # no keys until a deadline is reached or asked about
        table.release(worker, "s1")
        _arm(table, 7, "s2", 500.0)  # re-armed by itself: keyed now, not by the run
        assert table.next_deadline() == 0.0
        due = [(entry[0], entry[2].scope_id) for entry in table.pop_expired(1000.0)]
        assert due == [(0.0, "s0"), (10.0, "s3"), (500.0, "s2")]
        assert (table.armed, table.timers, table.next_deadline()) == (0, 3, None)


class TestDue:
    @pytest.mark.parametrize("limit", [5.0, float("inf")])
    def test_the_answer_is_the_state_when_asked_not_when_built(self, limit):
        table = TimerTable()
        armed = [_arm(table, 7, scope, 1.0) for scope in "abc"]
        build = table.due(limit)
        worker = table.get(7)
        assert worker is not None
        table.release(worker, "a")
        _arm(table, 7, "b", 2.0)
        _arm(table, 7, "d", 1.0)
        assert _sorted(build()) == {7: armed}

    def test_a_slot_reused_at_deadline_zero_is_found_once(self):
        table = TimerTable()
        _arm(table, 7, "a", 0.0)
        worker = table.get(7)
        assert worker is not None
        table.release(worker, "a")
        _arm(table, 7, "b", 0.0)
        _arm(table, 8, "later", 9.0)  # so the query walks the heap
        assert table.expired_by(0.5) == {7: [TimerRequest(7, "b", 0.0)]}
        assert [entry[2].scope_id for entry in table.pop_expired(0.5)] == ["b"]


class TestArmLike:
    @staticmethod
    def _head_and_rest(skew: float) -> tuple[TimerTable, Worker, TimerRequest, list[TimerRequest]]:
        table = TimerTable()
        worker = table.add_worker(7, 100)
        head = TimerRequest(7, "head", 1000.0, 9, 100, 10.0, 77)
        table.arm(worker, "head", 10.0, head)
        rest = [TimerRequest(7, f"s{i}", 1000.0 + i, 9, 100, 10.0 + i, 77) for i in range(5)]
        rest[3].deadline = 10.0 + 3 + skew
        return table, worker, head, rest

    @pytest.mark.parametrize(("skew", "tolerance", "armed"), [(0.5, 1.0, True), (5.0, 1.0, False)])
    def test_deadlines_off_their_expiration_time_by_more_than_the_tolerance_are_refused(
        self, skew, tolerance, armed
    ):
        table, worker, head, rest = self._head_and_rest(skew)
        done = table.arm_like(worker, head, rest, offset=-990.0, tolerance=tolerance)
        assert (done is not None) is armed
        assert table.armed == (6 if armed else 1)
        if armed:
            assert _sorted(table.expired_by(float("inf"))) == {
                7: sorted([head, *rest], key=lambda r: r.scope_id)
            }

    def test_a_request_unlike_the_armed_head_is_refused(self):
        table, worker, head, rest = self._head_and_rest(0.0)
        rest[2].thread_id = 78
        assert table.arm_like(worker, head, rest, offset=-990.0) is None
        assert table.armed == 1

    @pytest.mark.parametrize("count", [1, 5])
    def test_a_request_without_the_heads_deadline_is_refused(self, count):
        table, worker, head, rest = self._head_and_rest(0.0)
        rest = rest[:count]
        rest[-1].deadline = None
        assert table.arm_like(worker, head, rest, offset=-990.0) is None
        assert table.armed == 1


class TestSkew:
    def test_a_timer_armed_by_another_deadline_is_rebuilt_with_its_own(self):
        table = TimerTable()
        worker = table.add_worker(7, 100)
        request = TimerRequest(7, "ns", 1000.0, deadline=500.0)  # another time namespace
        table.arm(worker, "ns", 2.0, request)
        _arm(table, 8, "later", 9.0)
        assert table.next_deadline() == 2.0
        assert table.expired_by(2.5) == {7: [request]}
        assert table.expired_by(float("inf"))[7] == [request]
        [(deadline, _, popped)] = table.pop_expired(2.5)
        assert (deadline, popped) == (2.0, request)

    def test_rearmed_on_time_it_forgets_the_other_deadline(self):
        table = TimerTable()
        worker = table.add_worker(7, 100)
        table.arm(worker, "ns", 2.0, TimerRequest(7, "ns", 1000.0, deadline=500.0))
        again = TimerRequest(7, "ns", 1000.0, deadline=3.0)
        table.arm(worker, "ns", 3.0, again)
        assert table.expired_by(float("inf")) == {7: [again]}
        assert worker.skewed == {}


@pytest.mark.parametrize("bad", [float("nan"), "soon"])
def test_a_bad_deadline_raises_before_the_table_changes(bad):
    table = TimerTable()
    worker = table.add_worker(7, 100)
    with pytest.raises((ValueError, TypeError)):
        table.arm(worker, "a", bad, TimerRequest(7, "a", 1.0))
    assert (table.armed, len(worker.scopes), worker.timers) == (0, 0, {})
