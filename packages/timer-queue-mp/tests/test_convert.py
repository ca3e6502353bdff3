"""to_request: every kind of queue item becomes a validated request or a reason."""

from __future__ import annotations

import math
import os
import types
from typing import Any

import msgspec
import pytest

from timer_api import (
    InvalidRequestError,
    RejectReason,
    TimerRequest,
    check_request,
    encode_msgpack,
)
from timer_queue_mp._convert import to_request

PID = os.getpid()
VALID = TimerRequest(PID, "scope", 123.5, 0, 77, 9.5, 3)


class Hostile:
    @property
    def worker_id(self) -> int:
        raise RuntimeError("boom")

    scope_id = "s"
    expiration_time = 1.0


class TestAccepted:
    @pytest.mark.parametrize(
        "item",
        [
            encode_msgpack(VALID),
            bytearray(encode_msgpack(VALID)),
            memoryview(encode_msgpack(VALID)),
        ],
        ids=["bytes", "bytearray", "memoryview"],
    )
    def test_encoded_request(self, item: Any) -> None:
        assert to_request(item) == VALID

    def test_request_object(self) -> None:
        assert to_request(VALID) == VALID

    @pytest.mark.parametrize("expiration", [1234.5, -1, 0])
    def test_torch_style_object(self, expiration: float) -> None:
        legacy = types.SimpleNamespace(worker_id=PID, scope_id="old", expiration_time=expiration)
        assert to_request(legacy) == TimerRequest(PID, "old", expiration)


class TestRejected:
    @pytest.mark.parametrize(
        ("item", "reason"),
        [
            (b"\xff\x00not msgpack", RejectReason.MALFORMED),
            (b"", RejectReason.MALFORMED),
            (
                msgspec.msgpack.encode({"pid": "7", "scope_id": "s", "expiration_time": 1.0}),
                RejectReason.WRONG_TYPE,
            ),
            (msgspec.msgpack.encode({"scope_id": "s"}), RejectReason.MISSING_FIELD),
            (b"\x81" + b"\xa1a" * 5000, RejectReason.OVERSIZE),
            ({"pid": PID}, RejectReason.WRONG_OBJECT),
            (42, RejectReason.WRONG_OBJECT),
            ("text", RejectReason.WRONG_OBJECT),
            (None, RejectReason.WRONG_OBJECT),
            (Hostile(), RejectReason.WRONG_OBJECT),
        ],
        ids=[
            "garbage",
            "empty",
            "wrong-type",
            "missing",
            "oversize",
            "dict",
            "int",
            "str",
            "none",
            "hostile",
        ],
    )
    def test_item(self, item: Any, reason: RejectReason) -> None:
        error = to_request(item)
        assert isinstance(error, InvalidRequestError)
        assert error.reason is reason

    @pytest.mark.parametrize(
        ("worker_id", "scope_id", "expiration"),
        [
            ("7", "s", 1.0),
            (True, "s", 1.0),
            (7.0, "s", 1.0),
            (object(), "s", 1.0),
            (PID, 5, 1.0),
            (PID, b"s", 1.0),
            (PID, "s", "1.0"),
            (PID, "s", None),
        ],
        ids=[
            "pid-str",
            "pid-bool",
            "pid-float",
            "pid-object",
            "scope-int",
            "scope-bytes",
            "expiration-str",
            "expiration-none",
        ],
    )
    def test_torch_style_object_of_wrong_types_is_the_servers_to_refuse(
        self, worker_id: Any, scope_id: Any, expiration: Any
    ) -> None:
        legacy = types.SimpleNamespace(
            worker_id=worker_id, scope_id=scope_id, expiration_time=expiration
        )
        request = to_request(legacy)
        assert request == TimerRequest(worker_id, scope_id, expiration)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError) as caught:
            check_request(request)  # what the server does with it: see test_server
        assert caught.value.reason is RejectReason.WRONG_TYPE


class TestValuesAreTheServersToCheck:
    """torch's queue returns what was put; the server checks it (see test_server)."""

    @pytest.mark.parametrize(
        "request_",
        [
            TimerRequest(0, "s", 0),
            TimerRequest(-5, "s", 1.0),
            TimerRequest(PID, "s", 1.0, signal=99),
            TimerRequest(PID, "s", math.nan),
            TimerRequest(PID, "s" * 3000, 1.0),
        ],
        ids=["pid-0", "pid-negative", "signal-99", "nan", "long-scope"],
    )
    def test_request_object_comes_back_as_it_was_put(self, request_: TimerRequest) -> None:
        assert to_request(request_) is request_

    @pytest.mark.parametrize(
        ("worker_id", "expiration"),
        [(0, 0), (-5, 1.0), (2**70, 1.0), (PID, math.inf), (PID, -1)],
        ids=["pid-0", "pid-negative", "pid-huge", "expiration-inf", "release"],
    )
    def test_torch_style_object_keeps_its_values(self, worker_id: int, expiration: float) -> None:
        legacy = types.SimpleNamespace(
            worker_id=worker_id, scope_id="s", expiration_time=expiration
        )
        assert to_request(legacy) == TimerRequest(worker_id, "s", expiration)
