"""The codec: round trips, every rejection reason, torch's line format, LineDecoder."""

from __future__ import annotations

import json
import math
import pickle
import signal

import msgspec
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from timer_api import (
    MAX_REQUEST_BYTES,
    InvalidRequestError,
    LineDecoder,
    RejectReason,
    TimerRequest,
    decode_msgpack,
    encode_json_line,
    encode_msgpack,
)
from timer_api._codec import decode_json, encode_json

FEW = settings(max_examples=200, deadline=None)

#: Reasons only a server can decide (they need the process table), never the codec.
SERVER_REASONS = {
    RejectReason.PROTECTED_PID,
    RejectReason.NO_SUCH_PROCESS,
    RejectReason.PID_REUSED,
    RejectReason.OTHER_USER,
    RejectReason.TOO_MANY_TIMERS,
    RejectReason.NOT_IN_JOB,
}

VALID = {"pid": 7, "scope_id": "train.py#12", "expiration_time": 1700000000.5}


def as_json(**changes: object) -> bytes:
    """Return VALID with ``changes`` applied (a value of ``...`` drops the key) as JSON."""
    fields = {**VALID, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def as_msgpack(**changes: object) -> bytes:
    fields = {**VALID, **changes}
    return msgspec.msgpack.encode({k: v for k, v in fields.items() if v is not ...})


def reason_of(decode, data) -> RejectReason:
    with pytest.raises(InvalidRequestError) as info:
        decode(data)
    return info.value.reason


requests = st.builds(
    TimerRequest,
    st.integers(1, 2**31 - 1),
    st.text(max_size=40),
    st.floats(allow_nan=False, allow_infinity=False),
    signal=st.integers(0, 64),
    start_time=st.none() | st.integers(0, 2**63),
    deadline=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    thread_id=st.none() | st.integers(0, 2**64 - 1),
)

FIELD_NAMES = [field.encode_name for field in msgspec.structs.fields(TimerRequest)]

jsonish = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([0, -1, 2**31, 2**64, 1e999, "7", "", True]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(FIELD_NAMES) | st.text(max_size=8),
            children,
            max_size=8,
        )
    ),
    max_leaves=20,
)

#: Maps that look like requests, with each field valid, missing or replaced by junk.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "pid": st.integers(1, 2**22) | jsonish,
        "scope_id": st.text(max_size=20) | jsonish,
        "expiration_time": st.floats() | jsonish,
        "signal": st.integers(-2, 70) | jsonish,
        "start_time": st.none() | st.integers(-2, 2**64) | jsonish,
        "deadline": st.none() | st.floats() | jsonish,
        "thread_id": st.none() | st.integers(-2, 2**64) | jsonish,
        "version": st.integers(0, 3) | jsonish,
    },
)


def assert_sane(result: object) -> None:
    """Assert ``result`` is a rejection or a request that keeps every documented bound."""
    if isinstance(result, InvalidRequestError):
        assert isinstance(result.reason, RejectReason)
        assert len(result.raw) <= 256
        return
    assert isinstance(result, TimerRequest)
    assert type(result.worker_id) is int
    assert 0 < result.worker_id <= 2**31 - 1
    assert math.isfinite(result.expiration_time)
    assert result.deadline is None or math.isfinite(result.deadline)
    assert result.signal is None or -(2**31) <= result.signal <= 64
    assert result.version == 1


def decode_or_error(decode, data) -> TimerRequest | InvalidRequestError:
    try:
        return decode(data)
    except InvalidRequestError as error:
        return error


class TestRoundTrip:
    @FEW
    @given(requests)
    def test_json(self, request):
        assert decode_json(encode_json(request)) == request

    @FEW
    @given(requests)
    def test_json_text(self, request):
        assert decode_json(encode_json(request).decode()) == request

    @FEW
    @given(requests)
    def test_msgpack(self, request):
        assert decode_msgpack(encode_msgpack(request)) == request

    @FEW
    @given(requests)
    def test_json_line(self, request):
        line = encode_json_line(request)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert decode_json(line[:-1]) == request

    @pytest.mark.parametrize("buffer", [bytearray, memoryview])
    def test_decoders_take_buffers(self, buffer):
        request = TimerRequest(5, "s", 2.0)
        assert decode_json(buffer(encode_json(request))) == request
        assert decode_msgpack(buffer(encode_msgpack(request))) == request


class TestTorchLineFormat:
    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            (
                {
                    "version": 1,
                    "pid": 1234,
                    "scope_id": "a.py#3",
                    "expiration_time": 1.7e9,
                    "signal": 9,
                },
                TimerRequest(1234, "a.py#3", 1.7e9, signal=9),
            ),
            (
                {
                    "version": 1,
                    "pid": 1234,
                    "scope_id": "a.py#3",
                    "expiration_time": -1,
                    "signal": 0,
                },
                TimerRequest(1234, "a.py#3", -1.0, signal=0),
            ),
            (
                {
                    "version": 1,
                    "pid": 1234,
                    "scope_id": "a.py#3",
                    "expiration_time": 1.7e9,
                    "signal": -1,
                },
                TimerRequest(1234, "a.py#3", 1.7e9, signal=-1),  # torch: observe only
            ),
            (
                {
                    "version": 1,
                    "pid": 1234,
                    "scope_id": "a.py#3",
                    "expiration_time": 1.7e9,
                    "signal": None,
                },
                TimerRequest(1234, "a.py#3", 1.7e9),  # the server's choice
            ),
        ],
    )
    def test_torch_file_timer_line_decodes(self, fields, expected):
        # FileTimerRequest.to_json() is json.dumps with these keys in this order.
        line = json.dumps(fields) + "\n"
        assert list(json.loads(line)) == ["version", "pid", "scope_id", "expiration_time", "signal"]
        assert LineDecoder().feed(line.encode()) == [expected]
        assert decode_json(line.strip()) == expected

    def test_our_line_is_readable_by_torchs_reader(self):
        # torch's FileTimerServer reads these four keys with json.loads.
        fields = json.loads(encode_json_line(TimerRequest(9, "s", 5.0, signal=15)))
        assert (fields["pid"], fields["scope_id"], fields["expiration_time"], fields["signal"]) == (
            9,
            "s",
            5.0,
            15,
        )

    @pytest.mark.parametrize("encode", [encode_json, encode_json_line])
    def test_servers_choice_is_a_number_for_torch_and_none_for_us(self, encode):
        # torch's server reads request["signal"] and compares it with 0: null would
        # raise in its loop. The arm says SIGKILL (torch's client default) for torch,
        # and signal_is_fallback tells our server that the choice is its own.
        request = TimerRequest(9, "s", 5.0, start_time=3)
        fields = json.loads(encode(request))
        assert fields["signal"] == signal.SIGKILL
        assert fields["signal_is_fallback"] is True
        assert decode_json(encode(request).strip()) == request
        assert LineDecoder().feed(encode_json_line(request)) == [request]
        assert decode_msgpack(encode_msgpack(request)).signal is None

    def test_a_release_needs_no_number(self):
        release = TimerRequest(9, "s", -1.0)
        assert json.loads(encode_json_line(release))["signal"] is None
        assert decode_json(encode_json(release)) == release

    def test_torch_line_without_the_flag_keeps_its_signal(self):
        line = b'{"pid":9,"scope_id":"s","expiration_time":5.0,"signal":9}'
        assert decode_json(line).signal == 9

    def test_unknown_fields_are_ignored(self):
        assert decode_json(as_json(future_field=[1, {"a": 2}])) == TimerRequest(**_valid_kwargs())


def _valid_kwargs() -> dict[str, object]:
    return {
        "worker_id": VALID["pid"],
        "scope_id": VALID["scope_id"],
        "expiration_time": VALID["expiration_time"],
    }


JSON_REJECTIONS = [
    # wrong type
    (as_json(scope_id=5), RejectReason.WRONG_TYPE),
    (as_json(pid="7"), RejectReason.WRONG_TYPE),
    (as_json(pid=True), RejectReason.WRONG_TYPE),
    (as_json(pid=7.0), RejectReason.WRONG_TYPE),
    (as_json(pid=None), RejectReason.WRONG_TYPE),
    (as_json(expiration_time="1"), RejectReason.WRONG_TYPE),
    (as_json(expiration_time=True), RejectReason.WRONG_TYPE),
    (as_json(thread_id="x"), RejectReason.WRONG_TYPE),
    (as_json(version="1"), RejectReason.WRONG_TYPE),
    # missing field
    (as_json(pid=...), RejectReason.MISSING_FIELD),
    (as_json(scope_id=...), RejectReason.MISSING_FIELD),
    (as_json(expiration_time=...), RejectReason.MISSING_FIELD),
    (b"{}", RejectReason.MISSING_FIELD),
    # non-finite: JSON has no inf, but 1e999 overflows a double
    (b'{"pid": 7, "scope_id": "s", "expiration_time": 1e999}', RejectReason.NON_FINITE),
    (b'{"pid": 7, "scope_id": "s", "expiration_time": -1e999}', RejectReason.NON_FINITE),
    (
        b'{"pid": 7, "scope_id": "s", "expiration_time": 1, "deadline": 1e999}',
        RejectReason.NON_FINITE,
    ),
    # pid not a positive int (that fits pid_t)
    (as_json(pid=0), RejectReason.BAD_PID),
    (as_json(pid=-1), RejectReason.BAD_PID),
    (as_json(pid=2**31), RejectReason.BAD_PID),
    (as_json(pid=10**30), RejectReason.BAD_PID),
    # out of range
    (as_json(signal=65), RejectReason.OUT_OF_RANGE),
    (as_json(signal=-(2**31) - 1), RejectReason.OUT_OF_RANGE),
    (as_json(start_time=-1), RejectReason.OUT_OF_RANGE),
    (as_json(thread_id=-1), RejectReason.OUT_OF_RANGE),
    (as_json(scope_id="s" * 2049), RejectReason.OUT_OF_RANGE),
    # bad version
    (as_json(version=0), RejectReason.BAD_VERSION),
    (as_json(version=2), RejectReason.BAD_VERSION),
    # not an object
    (b"[7, 1, 2]", RejectReason.MALFORMED),
    (b"7", RejectReason.MALFORMED),
    (b'"pid"', RejectReason.MALFORMED),
    (b"null", RejectReason.MALFORMED),
    # garbage
    (b"", RejectReason.MALFORMED),
    (b"\xff\xfe{", RejectReason.MALFORMED),
    (b'{"pid": 7', RejectReason.MALFORMED),
    (as_json() + b" trailing", RejectReason.MALFORMED),
    (b'{"pid": 7, "scope_id": "s", "expiration_time": NaN}', RejectReason.MALFORMED),
    (b'{"pid": 7, "scope_id": "\xff", "expiration_time": 1}', RejectReason.MALFORMED),
    # oversize
    (b" " * (MAX_REQUEST_BYTES + 1), RejectReason.OVERSIZE),
    (as_json(pad="x" * MAX_REQUEST_BYTES), RejectReason.OVERSIZE),
]

MSGPACK_REJECTIONS = [
    (as_msgpack(expiration_time=math.nan), RejectReason.NON_FINITE),
    (as_msgpack(expiration_time=math.inf), RejectReason.NON_FINITE),
    (as_msgpack(expiration_time=-math.inf), RejectReason.NON_FINITE),
    (as_msgpack(deadline=math.nan), RejectReason.NON_FINITE),
    (as_msgpack(deadline=math.inf), RejectReason.NON_FINITE),
    (as_msgpack(pid=True), RejectReason.WRONG_TYPE),
    (as_msgpack(pid="7"), RejectReason.WRONG_TYPE),
    (as_msgpack(scope_id=b"s"), RejectReason.WRONG_TYPE),
    (as_msgpack(pid=...), RejectReason.MISSING_FIELD),
    (as_msgpack(pid=0), RejectReason.BAD_PID),
    (as_msgpack(pid=-1), RejectReason.BAD_PID),
    (as_msgpack(pid=2**63), RejectReason.BAD_PID),
    (as_msgpack(signal=99), RejectReason.OUT_OF_RANGE),
    (as_msgpack(version=2), RejectReason.BAD_VERSION),
    (msgspec.msgpack.encode([7, "s", 1.0]), RejectReason.MALFORMED),
    (msgspec.msgpack.encode("text"), RejectReason.MALFORMED),
    (b"\xc1", RejectReason.MALFORMED),
    (b"", RejectReason.MALFORMED),
    (as_msgpack(pad=b"x" * MAX_REQUEST_BYTES), RejectReason.OVERSIZE),
]


def cases(table: list[tuple[bytes, RejectReason]]) -> list[object]:
    """Give each (data, reason) row a short readable test id."""
    return [
        pytest.param(data, reason, id=f"{reason.value}-{i}")
        for i, (data, reason) in enumerate(table)
    ]


WRONG_OBJECTS = [None, 7, 1.5, ["pid"], {"pid": 7}, TimerRequest(1, "s", 1.0)]


class TestRejections:
    @pytest.mark.parametrize(("data", "reason"), cases(JSON_REJECTIONS))
    def test_json(self, data, reason):
        assert reason_of(decode_json, data) is reason

    @pytest.mark.parametrize(("data", "reason"), cases(MSGPACK_REJECTIONS))
    def test_msgpack(self, data, reason):
        assert reason_of(decode_msgpack, data) is reason

    @pytest.mark.parametrize(
        ("data", "reason"), cases([(d, r) for d, r in JSON_REJECTIONS if d.strip()])
    )
    def test_json_line_decoder_agrees(self, data, reason):
        [result] = LineDecoder().feed(data + b"\n")
        assert isinstance(result, InvalidRequestError)
        assert result.reason is reason

    @pytest.mark.parametrize("obj", WRONG_OBJECTS)
    @pytest.mark.parametrize("decode", [decode_json, decode_msgpack])
    def test_not_bytes(self, decode, obj):
        assert reason_of(decode, obj) is RejectReason.WRONG_OBJECT

    @pytest.mark.parametrize(
        ("decode", "data"),
        [
            (decode_json, b'{"pid": 7, "scope_id": "s", "expiration_time": 1, "x": '),
            (decode_msgpack, b"\x84\xa3pid\x07\xa8scope_id\xa1s\xafexpiration_time\x01\xa1x"),
        ],
        ids=["json", "msgpack"],
    )
    @pytest.mark.parametrize("depth", [100, 1000, 1900])
    def test_deep_nesting(self, decode, data, depth):
        # Too deep for the decoder's recursion limit (which depends on the Python
        # version) is malformed; within it, the unknown field is skipped.
        if decode is decode_json:
            data += b"[" * depth + b"]" * depth + b"}"
        else:
            data += b"\x91" * depth + b"\xc0"
        result = decode_or_error(decode, data)
        if isinstance(result, InvalidRequestError):
            assert result.reason is RejectReason.MALFORMED
        else:
            assert result == TimerRequest(7, "s", 1.0)

    def test_unencodable_text(self):
        assert reason_of(decode_json, '{"pid": 7, "scope_id": "\ud800"}') is RejectReason.MALFORMED

    def test_every_codec_reason_is_exercised(self):
        seen = {reason for _, reason in JSON_REJECTIONS + MSGPACK_REJECTIONS}
        seen.add(RejectReason.WRONG_OBJECT)
        assert seen == set(RejectReason) - SERVER_REASONS

    def test_error_carries_reason_detail_and_raw_prefix(self):
        data = as_json(pid=0, pad="p" * 1000)
        with pytest.raises(InvalidRequestError) as info:
            decode_json(data)
        error = info.value
        assert isinstance(error, ValueError)
        assert "pid" in error.detail
        assert str(error).startswith("bad_pid: ")
        assert error.raw == data[:256]

    def test_error_pickles(self):
        # Queues hand errors across processes.
        error = InvalidRequestError(RejectReason.OVERSIZE, "too big", b"x" * 300)
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.reason, copy.detail, copy.raw, str(copy)) == (
            error.reason,
            error.detail,
            error.raw,
            str(error),
        )


class TestOnlyInvalidRequestErrorEscapes:
    @FEW
    @given(st.binary(max_size=MAX_REQUEST_BYTES + 64))
    def test_bytes_into_decode_json(self, data):
        assert_sane(decode_or_error(decode_json, data))

    @FEW
    @given(st.text(max_size=200))
    def test_text_into_decode_json(self, text):
        assert_sane(decode_or_error(decode_json, text))

    @FEW
    @given(st.binary(max_size=MAX_REQUEST_BYTES + 64))
    def test_bytes_into_decode_msgpack(self, data):
        assert_sane(decode_or_error(decode_msgpack, data))

    @pytest.mark.slow
    @FEW
    @given(jsonish | request_like)
    def test_json_objects(self, obj):
        assert_sane(decode_or_error(decode_json, json.dumps(obj).encode()))

    @FEW
    @given(jsonish | request_like)
    def test_msgpack_objects(self, obj):
        try:
            data = msgspec.msgpack.encode(obj)
        except OverflowError:  # an int MessagePack cannot carry
            reject()
        assert_sane(decode_or_error(decode_msgpack, data))

    @FEW
    @given(st.lists(st.binary(max_size=1500), max_size=8))
    def test_bytes_into_line_decoder(self, chunks):
        decoder = LineDecoder()
        for chunk in chunks:
            for item in decoder.feed(chunk):
                assert_sane(item)
            assert decoder.pending < MAX_REQUEST_BYTES

    @pytest.mark.slow
    @FEW
    @given(st.lists(jsonish | request_like, max_size=6), st.data())
    def test_json_lines_into_line_decoder(self, objects, data):
        stream = b"".join(json.dumps(obj).encode() + b"\n" for obj in objects)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
        decoder = LineDecoder()
        results = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            results += decoder.feed(stream[start:end])
        assert len(results) == len(objects)
        for result in results:
            assert_sane(result)


def line_of_size(size: int) -> tuple[TimerRequest, bytes]:
    """Return a request whose JSON line (newline included) is exactly ``size`` bytes."""
    base = len(encode_json_line(TimerRequest(1, "", 1.0)))
    pad = size - base
    scope = "é" * (pad // 2) + "a" * (pad % 2)  # two bytes a char: stays under 2048 chars
    request = TimerRequest(1, scope, 1.0)
    line = encode_json(request) + b"\n"
    assert len(line) == size
    return request, line


class TestSizeLimit:
    def test_line_of_exactly_the_limit_is_encoded_and_decoded(self):
        request, line = line_of_size(MAX_REQUEST_BYTES)
        assert encode_json_line(request) == line
        assert LineDecoder().feed(line) == [request]
        assert decode_json(line[:-1]) == request

    def test_one_byte_more_is_refused_by_both_sides(self):
        request, line = line_of_size(MAX_REQUEST_BYTES + 1)
        with pytest.raises(InvalidRequestError) as info:
            encode_json_line(request)
        assert info.value.reason is RejectReason.OVERSIZE
        [result] = LineDecoder().feed(line)
        assert isinstance(result, InvalidRequestError)
        assert result.reason is RejectReason.OVERSIZE

    @pytest.mark.parametrize("scope", ["s" * 5000, "€" * 2000, "\x00" * 1000])
    def test_encode_refuses_long_requests(self, scope):
        with pytest.raises(InvalidRequestError) as info:
            encode_json_line(TimerRequest(1, scope, 1.0))
        assert info.value.reason is RejectReason.OVERSIZE

    @FEW
    @given(requests, st.text(max_size=2048))
    def test_encoded_line_is_within_limit_or_refused(self, request, scope):
        request.scope_id = scope
        if len(encode_json(request)) + 1 > MAX_REQUEST_BYTES:
            with pytest.raises(InvalidRequestError) as info:
                encode_json_line(request)
            assert info.value.reason is RejectReason.OVERSIZE
        else:
            line = encode_json_line(request)
            assert len(line) <= MAX_REQUEST_BYTES
            assert decode_json(line[:-1]) == request


A = TimerRequest(11, "a", 1.0)
B = TimerRequest(22, "b", -1.0)
C = TimerRequest(33, "c", 3.5, signal=15, start_time=4, deadline=2.0, thread_id=9)


def lines(*requests: TimerRequest) -> bytes:
    return b"".join(encode_json_line(r) for r in requests)


def feed_all(decoder: LineDecoder, chunks: list[bytes]) -> list[TimerRequest | InvalidRequestError]:
    out: list[TimerRequest | InvalidRequestError] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def reasons(results: list[TimerRequest | InvalidRequestError]) -> list[object]:
    return [r.reason if isinstance(r, InvalidRequestError) else r for r in results]


class TestLineDecoder:
    @pytest.mark.parametrize("cut", [0, 1, 5, 20, -2, -1])
    def test_line_split_across_two_chunks(self, cut):
        stream = lines(A)
        decoder = LineDecoder()
        assert decoder.feed(stream[:cut]) == []
        assert decoder.pending == len(stream[:cut])
        assert decoder.feed(stream[cut:]) == [A]
        assert decoder.pending == 0

    def test_one_byte_at_a_time(self):
        stream = lines(A, B, C)
        assert feed_all(LineDecoder(), [stream[i : i + 1] for i in range(len(stream))]) == [A, B, C]

    @pytest.mark.slow
    @FEW
    @given(st.lists(requests, max_size=5), st.data())
    def test_any_chunking_gives_the_same_requests(self, batch, data):
        stream = lines(*batch)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        chunks = [stream[s:e] for s, e in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert feed_all(LineDecoder(), chunks) == batch

    def test_many_lines_in_one_chunk(self):
        batch = [TimerRequest(pid, f"s{pid}", float(pid)) for pid in range(1, 201)]
        assert LineDecoder().feed(lines(*batch)) == batch

    @pytest.mark.parametrize("blank", [b"\n", b"\n\n\n", b"   \n", b"\t \r\n"])
    def test_blank_lines_are_skipped(self, blank):
        assert LineDecoder().feed(blank + lines(A) + blank + lines(B) + blank) == [A, B]

    def test_unfinished_line_is_held_not_decoded(self):
        decoder = LineDecoder()
        assert decoder.feed(encode_json(A)) == []
        assert decoder.pending == len(encode_json(A))

    def test_bad_line_between_good_ones(self):
        results = LineDecoder().feed(lines(A) + b'{"pid": 5}\n' + b"garbage\n" + lines(B))
        assert reasons(results) == [A, RejectReason.MISSING_FIELD, RejectReason.MALFORMED, B]

    def test_oversize_in_one_chunk_keeps_neighbours(self):
        stream = lines(A) + b"x" * (3 * MAX_REQUEST_BYTES) + b"\n" + lines(B)
        assert reasons(LineDecoder().feed(stream)) == [A, RejectReason.OVERSIZE, B]

    @pytest.mark.parametrize("chunk_size", [1000, MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES, 5000])
    def test_oversize_across_chunks_reported_once_and_discarded(self, chunk_size):
        stream = lines(A) + b'{"pid": 7, "scope_id": "' + b"y" * 10000 + b'"}\n' + lines(B, C)
        decoder = LineDecoder()
        chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
        results = []
        for chunk in chunks:
            results += decoder.feed(chunk)
            assert decoder.pending < MAX_REQUEST_BYTES
        assert reasons(results) == [A, RejectReason.OVERSIZE, B, C]

    def test_oversize_unfinished_line_is_reported_before_its_newline(self):
        decoder = LineDecoder()
        [error] = decoder.feed(b"z" * (MAX_REQUEST_BYTES + 10))
        assert error.reason is RejectReason.OVERSIZE
        assert decoder.pending == 0
        assert decoder.feed(b"z" * 100) == []
        assert decoder.feed(b"zzz\n" + lines(A)) == [A]

    def test_decoders_are_independent(self):
        first, second = LineDecoder(), LineDecoder()
        first.feed(encode_json(A)[:10])
        assert second.feed(lines(B)) == [B]
        assert first.feed(encode_json(A)[10:] + b"\n") == [A]
