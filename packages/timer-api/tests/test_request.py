"""TimerRequest: torch's field names and order, value semantics, extensions."""

from __future__ import annotations

import msgspec
import pytest

from timer_api import TimerRequest


class TestTorchShape:
    def test_first_fields_are_torchs_in_order(self):
        assert TimerRequest.__struct_fields__[:3] == ("worker_id", "scope_id", "expiration_time")

    def test_worker_id_is_pid_on_the_wire(self):
        assert TimerRequest.__struct_encode_fields__[0] == "pid"

    def test_positional_construction(self):
        request = TimerRequest(42, "train.py#7", 1700000000.5)
        assert (request.worker_id, request.scope_id, request.expiration_time) == (
            42,
            "train.py#7",
            1700000000.5,
        )

    def test_keyword_construction_with_torch_names(self):
        request = TimerRequest(worker_id=42, scope_id="s", expiration_time=3.0)
        assert request == TimerRequest(42, "s", 3.0)


class TestValueSemantics:
    @pytest.mark.parametrize(
        ("left", "right", "equal"),
        [
            (TimerRequest(1, "a", 2.0), TimerRequest(1, "a", 2.0), True),
            (TimerRequest(1, "a", 2.0), TimerRequest(2, "a", 2.0), False),
            (TimerRequest(1, "a", 2.0), TimerRequest(1, "b", 2.0), False),
            (TimerRequest(1, "a", 2.0), TimerRequest(1, "a", 3.0), False),
            (TimerRequest(1, "a", 2.0), TimerRequest(1, "a", 2.0, signal=9), False),
            (TimerRequest(1, "a", 2.0), TimerRequest(1, "a", 2.0, start_time=5), False),
            (TimerRequest(1, "a", 2.0, thread_id=3), TimerRequest(1, "a", 2.0, thread_id=3), True),
        ],
    )
    def test_compared_by_value(self, left, right, equal):
        assert (left == right) is equal

    def test_not_equal_to_other_types(self):
        assert TimerRequest(1, "a", 2.0) != (1, "a", 2.0)


class TestRelease:
    @pytest.mark.parametrize(
        ("expiration_time", "is_release"),
        [(-1.0, True), (-1e-9, True), (-1e300, True), (0.0, False), (1.0, False), (1e12, False)],
    )
    def test_negative_expiration_releases(self, expiration_time, is_release):
        assert TimerRequest(1, "a", expiration_time).is_release is is_release


class TestExtensions:
    @pytest.mark.parametrize(
        ("field", "default"),
        [
            ("signal", None),
            ("start_time", None),
            ("deadline", None),
            ("thread_id", None),
            ("version", 1),
        ],
    )
    def test_extension_defaults(self, field, default):
        assert getattr(TimerRequest(1, "a", 2.0), field) == default

    def test_extensions_are_keyword_settable(self):
        request = TimerRequest(1, "a", 2.0, signal=15, start_time=99, deadline=5.5, thread_id=7)
        assert (request.signal, request.start_time, request.deadline, request.thread_id) == (
            15,
            99,
            5.5,
            7,
        )


class TestRoundTrip:
    @pytest.mark.parametrize(
        "request_",
        [
            TimerRequest(1, "a", 2.0),
            TimerRequest(123456, "x.py#10@thread-5", -1.0),
            TimerRequest(7, "ünïcode ✓", 1e9, signal=9, start_time=0, deadline=12.25, thread_id=1),
        ],
    )
    @pytest.mark.parametrize("module", [msgspec.json, msgspec.msgpack])
    def test_msgspec_round_trip(self, module, request_):
        assert module.decode(module.encode(request_), type=TimerRequest) == request_

    def test_to_builtins_uses_wire_names(self):
        assert msgspec.to_builtins(TimerRequest(3, "s", 1.5)) == {
            "pid": 3,
            "scope_id": "s",
            "expiration_time": 1.5,
            "signal": None,
            "start_time": None,
            "deadline": None,
            "thread_id": None,
            "version": 1,
        }
