"""The timer table against a model of what it promises: two dicts, armed and expired.

Hypothesis drives one table and the model with the same calls (arming one timer or a
batch, releasing, expiring, querying, dropping workers), on a few workers and scopes
and on deadlines that share a microsecond, so that re-arms, slot reuse, stale heap
keys, runs and compaction all meet. After every step the counts must agree, and the
earliest deadline the table reports must not be later than the earliest one armed:
a later one would let a hung worker's deadline pass unseen. The table orders by
whole microseconds, so both orders are compared at that grain. The table's
thresholds (heap compaction, giving columns back, interning) are lowered for the
run, so that a few dozen steps cross them.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from timer_api import TimerRequest
from timer_watchdog import _table
from timer_watchdog._table import TimerTable, _quantum

PIDS = (7, 8, 9)
SCOPES = ("a", "b", "c", "d", "e")
#: Deadlines that collide: equal, within one microsecond, negative, far.
DEADLINES = st.one_of(
    st.sampled_from([0.0, 1.0, 1.0000001, 1.0000004, 1.000001, 2.0, -1.5, 1e9]),
    st.floats(min_value=-5.0, max_value=5.0, allow_nan=False),
)
#: How a request carries its own deadline: none, the table's, or another (skewed).
OWN_DEADLINE = st.sampled_from(["none", "same", "skewed"])

#: Lowered thresholds of the table, for the run of the machine.
SMALL_LIMITS = {"COMPACT_SLACK": 3, "_SHRINK_FROM": 2, "_INTERN_LIMIT": 2}

Key = tuple[int, str]
Held = dict[Key, tuple[float, TimerRequest]]


def _start_time(pid: int) -> int:
    return 1000 + pid


def _grouped(held: list[tuple[Key, tuple[float, TimerRequest]]]) -> dict[int, list[Any]]:
    """Group the requests by pid, each list in a canonical order."""
    out: dict[int, list[Any]] = {}
    for (pid, _), (_, request) in held:
        out.setdefault(pid, []).append(request)
    return {pid: sorted(requests, key=repr) for pid, requests in out.items()}


class TableModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.limits = {name: getattr(_table, name) for name in SMALL_LIMITS}
        for name, value in SMALL_LIMITS.items():
            setattr(_table, name, value)
        self.table = TimerTable()
        self.armed: Held = {}
        self.expired: Held = {}

    def teardown(self) -> None:
        for name, value in self.limits.items():
            setattr(_table, name, value)

    def _worker(self, pid: int) -> Any:
        worker = self.table.get(pid)
        if worker is None:
            worker = self.table.add_worker(pid, _start_time(pid))
        return worker

    @rule(
        pid=st.sampled_from(PIDS),
        scope=st.sampled_from(SCOPES),
        deadline=DEADLINES,
        own=OWN_DEADLINE,
        signal=st.sampled_from([None, 9, 15]),
        pinned=st.booleans(),
        thread_id=st.sampled_from([None, 5, 2**40]),
    )
    def arm(self, pid, scope, deadline, own, signal, pinned, thread_id):
        own_deadline = {"none": None, "same": deadline, "skewed": deadline + 7.0}[own]
        request = TimerRequest(
            pid,
            scope,
            abs(deadline) + 1000.0,
            signal,
            _start_time(pid) if pinned else None,
            own_deadline,
            thread_id,
        )
        self.table.arm(self._worker(pid), scope, deadline, request)
        self.armed[(pid, scope)] = (deadline, request)

    @rule(
        pid=st.sampled_from(PIDS),
        batch=st.lists(st.tuples(st.sampled_from(SCOPES), DEADLINES), max_size=4),
        has_deadline=st.booleans(),
        signal=st.sampled_from([None, 9]),
    )
    def arm_many(self, pid, batch, has_deadline, signal):
        worker = self._worker(pid)
        scopes = [scope for scope, _ in batch]
        deadlines = [deadline for _, deadline in batch]
        expirations = [abs(deadline) + 1000.0 for deadline in deadlines]
        start_time = _start_time(pid)
        shape = worker.shape(signal, start_time, None, has_deadline)
        new = len(set(scopes)) == len(scopes) and not any(
            (pid, scope) in self.armed or (pid, scope) in self.expired for scope in scopes
        )
        assert self.table.arm_many(worker, scopes, deadlines, expirations, shape) is new
        if new:
            for scope, deadline, expiration in zip(scopes, deadlines, expirations, strict=True):
                request = TimerRequest(
                    pid,
                    scope,
                    expiration,
                    signal,
                    start_time,
                    deadline if has_deadline else None,
                )
                self.armed[(pid, scope)] = (deadline, request)

    @rule(pid=st.sampled_from(PIDS), scope=st.sampled_from(SCOPES))
    def release(self, pid, scope):
        worker = self.table.get(pid)
        key = (pid, scope)
        expected = key in self.armed or key in self.expired
        if worker is None:
            assert not expected
            return
        assert self.table.release(worker, scope) is expected
        if self.armed.pop(key, None) is None:
            self.expired.pop(key, None)

    @rule(now=DEADLINES)
    def pop_expired(self, now):
        entries = self.table.pop_expired(now)
        quanta = [_quantum(entry[0]) for entry in entries]
        assert quanta == sorted(quanta)
        got = sorted(
            ((entry[2].worker_id, entry[2].scope_id), entry[0], repr(entry[2])) for entry in entries
        )
        due = {key: held for key, held in self.armed.items() if held[0] <= now}
        assert got == sorted((key, held[0], repr(held[1])) for key, held in due.items())
        for key, held in due.items():
            del self.armed[key]
            self.expired[key] = held

    @rule(limit=st.one_of(DEADLINES, st.just(math.inf), st.just(math.nan)))
    def expired_by(self, limit):
        held = [*self.armed.items(), *self.expired.items()]
        expected = _grouped([(key, value) for key, value in held if value[0] <= limit])
        answer = self.table.expired_by(limit)
        assert {pid: sorted(requests, key=repr) for pid, requests in answer.items()} == expected

    @rule(pid=st.sampled_from(PIDS))
    def drop_expired(self, pid):
        worker = self.table.get(pid)
        if worker is None:
            return
        mine = [key for key in self.expired if key[0] == pid]
        assert self.table.drop_expired(worker) == len(mine)
        for key in mine:
            del self.expired[key]

    @rule(pid=st.sampled_from(PIDS))
    def drop_worker(self, pid):
        known = self.table.get(pid)
        assert self.table.drop_worker(pid) is known
        assert self.table.get(pid) is None
        for held in (self.armed, self.expired):
            for key in [key for key in held if key[0] == pid]:
                del held[key]

    @precondition(lambda self: bool(self.armed))
    @rule()
    def held_requests_are_rebuilt_as_armed(self):
        for pid in {pid for pid, _ in self.armed}:
            worker = self.table.get(pid)
            assert worker is not None
            armed = sorted(repr(entry[2]) for entry in self.table.armed_entries(worker))
            assert armed == sorted(
                repr(request) for (owner, _), (_, request) in self.armed.items() if owner == pid
            )

    @invariant()
    def counts_agree(self):
        assert self.table.armed == len(self.armed)
        assert self.table.timers == len(self.armed) + len(self.expired)

    @invariant()
    def no_armed_deadline_is_missed(self):
        earliest = self.table.next_deadline()
        if self.armed:
            assert earliest is not None
            first = min(deadline for deadline, _ in self.armed.values())
            assert _quantum(earliest) <= _quantum(first)


TableModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, database=None, derandomize=True
)
test_table_model = TableModel.TestCase
