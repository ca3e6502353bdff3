"""The timer table: deadline order, lazy deletion, compaction, a read-only expiry query."""

from __future__ import annotations

import pytest

from timer_api import TimerRequest
from timer_watchdog._table import COMPACT_SLACK, TimerTable


def _arm(table: TimerTable, pid: int, scope: str, deadline: float) -> TimerRequest:
    worker = table.get(pid) or table.add_worker(pid, 100)
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
