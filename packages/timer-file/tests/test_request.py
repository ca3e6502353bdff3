import json

import pytest

from timer_api import LineDecoder, TimerRequest
from timer_file import FileTimerRequest


def decode_line(line: bytes | str) -> TimerRequest:
    """Decode one request line (newline or not) as a server reads it from the pipe."""
    data = line.encode() if isinstance(line, str) else line
    [request] = LineDecoder().feed(data.rstrip(b"\n") + b"\n")
    assert isinstance(request, TimerRequest), request
    return request


class TestToJson:
    def test_has_torchs_keys_in_torchs_order(self) -> None:
        line = FileTimerRequest(42, "scope", 12.5, 9).to_json()
        assert line == json.dumps(
            {"version": 1, "pid": 42, "scope_id": "scope", "expiration_time": 12.5, "signal": 9}
        )
        assert list(json.loads(line)) == ["version", "pid", "scope_id", "expiration_time", "signal"]

    @pytest.mark.parametrize(
        ("pid", "scope", "expiration", "signal"),
        [(7, "a", 1.0, 0), (123456, "train.py#87", -1, 0), (2, 'é\n"x', 1e9, 15)],
    )
    def test_decodes_with_our_codec(
        self, pid: int, scope: str, expiration: float, signal: int
    ) -> None:
        decoded = decode_line(FileTimerRequest(pid, scope, expiration, signal).to_json())
        assert decoded == TimerRequest(pid, scope, expiration, signal)


class TestConversions:
    def test_to_timer_request(self) -> None:
        request = FileTimerRequest(5, "s", 3.0, 15).to_timer_request()
        assert request == TimerRequest(5, "s", 3.0, 15)

    def test_from_timer_request_drops_optional_fields(self) -> None:
        original = TimerRequest(5, "s", 3.0, 9, start_time=11, deadline=4.0, thread_id=3)
        assert FileTimerRequest.from_timer_request(original) == FileTimerRequest(5, "s", 3.0, 9)


class TestValueObject:
    def test_worker_pid_is_worker_id(self) -> None:
        request = FileTimerRequest(5, "s", 3.0)
        assert (request.worker_pid, request.worker_id, request.signal, request.version) == (
            5,
            5,
            0,
            1,
        )

    @pytest.mark.parametrize(
        "other",
        [
            FileTimerRequest(6, "s", 3.0),
            FileTimerRequest(5, "t", 3.0),
            FileTimerRequest(5, "s", 4.0),
            FileTimerRequest(5, "s", 3.0, 9),
            "FileTimerRequest(5, 's', 3.0)",
        ],
    )
    def test_differs(self, other: object) -> None:
        assert FileTimerRequest(5, "s", 3.0) != other

    def test_equal_and_repr(self) -> None:
        request = FileTimerRequest(5, "s", 3.0)
        assert request == FileTimerRequest(5, "s", 3.0)
        assert repr(request) == (
            "FileTimerRequest(worker_pid=5, scope_id='s', expiration_time=3.0, signal=0)"
        )
