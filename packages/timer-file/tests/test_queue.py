import os
import threading
import time

import pytest

from timer_api import InvalidRequestError, RejectReason, TimerRequest, encode_json_line
from timer_file import UnsafePipeError
from timer_file._queue import FileRequestQueue

VALID = TimerRequest(4242, "after", 5.0, 9)
VALID_LINE = encode_json_line(VALID)


@pytest.fixture
def queue(pipe_path: str) -> object:
    q = FileRequestQueue(pipe_path)
    yield q
    q.close()


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _get_all(queue: FileRequestQueue, count: int) -> list[TimerRequest | InvalidRequestError]:
    """Collect ``count`` items, waiting at most 10 s in all."""
    items: list[TimerRequest | InvalidRequestError] = []
    deadline = time.monotonic() + 10
    while len(items) < count and time.monotonic() < deadline:
        items += queue.get(count - len(items), 0.5)
    return items


HOSTILE = {
    "garbage": (b"\x00\xff garbage \x7f", RejectReason.MALFORMED),
    "invalid_json": (b'{"pid": 5, "scope_id": "s",', RejectReason.MALFORMED),
    "array": (b"[4242, 1, 2]", RejectReason.MALFORMED),
    "invalid_utf8": (
        b'{"pid":5,"scope_id":"\xc3\x28","expiration_time":1}',
        RejectReason.MALFORMED,
    ),
    "missing_pid": (b'{"scope_id":"s","expiration_time":1}', RejectReason.MISSING_FIELD),
    "missing_scope": (b'{"pid":5,"expiration_time":1}', RejectReason.MISSING_FIELD),
    "missing_expiration": (b'{"pid":5,"scope_id":"s"}', RejectReason.MISSING_FIELD),
    "pid_string": (b'{"pid":"5","scope_id":"s","expiration_time":1}', RejectReason.WRONG_TYPE),
    "pid_bool": (b'{"pid":true,"scope_id":"s","expiration_time":1}', RejectReason.WRONG_TYPE),
    "pid_float": (b'{"pid":5.5,"scope_id":"s","expiration_time":1}', RejectReason.WRONG_TYPE),
    "scope_number": (b'{"pid":5,"scope_id":7,"expiration_time":1}', RejectReason.WRONG_TYPE),
    "expiration_string": (
        b'{"pid":5,"scope_id":"s","expiration_time":"1"}',
        RejectReason.WRONG_TYPE,
    ),
    "nan": (b'{"pid":5,"scope_id":"s","expiration_time":NaN}', RejectReason.MALFORMED),
    "infinity": (b'{"pid":5,"scope_id":"s","expiration_time":Infinity}', RejectReason.MALFORMED),
    "overflow": (b'{"pid":5,"scope_id":"s","expiration_time":1e400}', RejectReason.NON_FINITE),
    "deadline_overflow": (
        b'{"pid":5,"scope_id":"s","expiration_time":1,"deadline":-1e999}',
        RejectReason.NON_FINITE,
    ),
    "pid_zero": (b'{"pid":0,"scope_id":"s","expiration_time":1}', RejectReason.BAD_PID),
    "pid_negative": (b'{"pid":-7,"scope_id":"s","expiration_time":1}', RejectReason.BAD_PID),
    "pid_huge": (b'{"pid":99999999999,"scope_id":"s","expiration_time":1}', RejectReason.BAD_PID),
    "signal_range": (
        b'{"pid":5,"scope_id":"s","expiration_time":1,"signal":99}',
        RejectReason.OUT_OF_RANGE,
    ),
    "version": (
        b'{"pid":5,"scope_id":"s","expiration_time":1,"version":2}',
        RejectReason.BAD_VERSION,
    ),
    "oversize": (
        b'{"pid":5,"scope_id":"' + b"x" * 5000 + b'","expiration_time":1}',
        RejectReason.OVERSIZE,
    ),
}


class TestHostileInput:
    @pytest.mark.parametrize("name", sorted(HOSTILE))
    def test_rejected_in_place_and_next_request_served(
        self, queue: FileRequestQueue, name: str
    ) -> None:
        raw, reason = HOSTILE[name]
        _write(queue.file_path, VALID_LINE + raw + b"\n" + VALID_LINE)
        items = _get_all(queue, 3)
        assert items[0] == VALID
        assert isinstance(items[1], InvalidRequestError)
        assert items[1].reason is reason
        assert items[2] == VALID

    def test_all_in_one_write_each_rejected_once(self, queue: FileRequestQueue) -> None:
        lines = [raw for raw, _ in HOSTILE.values() if len(raw) < 4000]
        _write(queue.file_path, b"".join(raw + b"\n" + VALID_LINE for raw in lines))
        items = _get_all(queue, 2 * len(lines))
        assert items[1::2] == [VALID] * len(lines)
        assert [item.reason for item in items[0::2]] == [  # type: ignore[union-attr]
            reason for raw, reason in HOSTILE.values() if len(raw) < 4000
        ]

    def test_oversize_line_over_many_writes_is_discarded_to_newline(
        self, queue: FileRequestQueue
    ) -> None:
        fd = os.open(queue.file_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b'{"pid":5,"scope_id":"')
            for _ in range(10):
                os.write(fd, b"y" * 3000)
                assert [type(i) for i in queue.get(10, 0.05)] in ([], [InvalidRequestError])
            os.write(fd, b'","expiration_time":1}\n' + VALID_LINE)
        finally:
            os.close(fd)
        assert _get_all(queue, 1) == [VALID]

    def test_partial_line_waits_for_its_end(self, queue: FileRequestQueue) -> None:
        fd = os.open(queue.file_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, VALID_LINE[:20])
            assert queue.get(10, 0.1) == []
            os.write(fd, VALID_LINE[20:])
        finally:
            os.close(fd)
        assert _get_all(queue, 1) == [VALID]

    def test_blank_lines_are_skipped(self, queue: FileRequestQueue) -> None:
        _write(queue.file_path, b"\n   \n\t\n" + VALID_LINE)
        assert _get_all(queue, 1) == [VALID]


class TestServing:
    def test_writers_come_and_go(self, queue: FileRequestQueue) -> None:
        for _ in range(5):
            _write(queue.file_path, VALID_LINE)
            assert _get_all(queue, 1) == [VALID]
            assert queue.get(10, 0.05) == []

    def test_get_returns_at_most_size(self, queue: FileRequestQueue) -> None:
        _write(queue.file_path, VALID_LINE * 10)
        assert queue.get(3, 5) == [VALID] * 3
        assert queue.size() >= 7
        assert _get_all(queue, 7) == [VALID] * 7
        assert queue.get(10, 0) == []

    def test_size_estimates_unread_bytes(self, queue: FileRequestQueue) -> None:
        assert queue.size() == 0
        _write(queue.file_path, VALID_LINE * 100)
        assert queue.size() >= 100

    def test_interrupt_wakes_a_waiting_get(self, queue: FileRequestQueue) -> None:
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(queue.get(1, 60)))
        thread.start()
        time.sleep(0.1)
        queue.interrupt()
        thread.join(20)
        assert not thread.is_alive()
        assert result == [[]]


class TestLifecycle:
    def test_close_removes_pipe_and_is_idempotent(self, pipe_path: str) -> None:
        queue = FileRequestQueue(pipe_path)
        assert os.path.exists(pipe_path)
        queue.close()
        queue.close()
        assert not os.path.exists(pipe_path)
        assert queue.get(1, 0.01) == []
        assert queue.problem() is not None

    def test_reopen_serves_again(self, pipe_path: str) -> None:
        queue = FileRequestQueue(pipe_path)
        queue.close()
        queue.open()
        queue.open()
        try:
            _write(pipe_path, VALID_LINE)
            assert _get_all(queue, 1) == [VALID]
        finally:
            queue.close()

    def test_default_path_directory_removed(self) -> None:
        queue = FileRequestQueue()
        directory = os.path.dirname(queue.file_path)
        assert os.path.isdir(directory)
        queue.close()
        assert not os.path.exists(directory)

    def test_default_path_reopens_after_close(self) -> None:
        queue = FileRequestQueue()
        path = queue.file_path
        queue.close()
        queue.open()
        try:
            assert queue.file_path == path
            assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
            _write(path, VALID_LINE)
            assert _get_all(queue, 1) == [VALID]
        finally:
            queue.close()
        assert not os.path.exists(os.path.dirname(path))

    def test_default_path_directory_taken_by_someone_else_is_refused(self) -> None:
        queue = FileRequestQueue()
        directory = os.path.dirname(queue.file_path)
        queue.close()
        os.mkdir(directory, 0o777)
        os.chmod(directory, 0o777)
        try:
            with pytest.raises(UnsafePipeError, match="private directory"):
                queue.open()
        finally:
            os.rmdir(directory)

    @pytest.mark.parametrize("how", ["removed", "replaced"])
    def test_problem_reports_a_lost_path(self, queue: FileRequestQueue, how: str) -> None:
        assert queue.problem() is None
        os.unlink(queue.file_path)
        if how == "replaced":
            os.mkfifo(queue.file_path)
        assert how in (queue.problem() or "")


#: A writer that dies mid-line: it writes part of a request and exits at once.
DIES_MID_LINE = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)
os.write(fd, sys.argv[2].encode())
os._exit(0)
"""


class TestResynchronisation:
    @pytest.mark.parametrize(
        "fragment",
        [
            b'{"pid": 5, "scope_id":',  # glued: the next request becomes a field's value
            b'{"pid": 5, "scope_id": "ab',  # glued: the next request ends an open string
            b'{"version": 1, "pid": 5, "sc',
            b"x" * 4050 + b'{"pid":',  # long: fragment and request exceed the size limit
        ],
    )
    def test_request_after_a_dead_writers_fragment_is_recovered(
        self, queue: FileRequestQueue, fragment: bytes
    ) -> None:
        import subprocess
        import sys

        writer = subprocess.run(
            [sys.executable, "-c", DIES_MID_LINE, queue.file_path, fragment.decode()], check=True
        )
        assert writer.returncode == 0
        _write(queue.file_path, VALID_LINE)
        items = _get_all(queue, 2)
        assert len(items) == 2, items
        error, request = items
        assert isinstance(error, InvalidRequestError)
        assert error.raw.startswith(fragment[:256])
        assert request == VALID

    def test_scope_with_braces_is_recovered_whole(self, queue: FileRequestQueue) -> None:
        braced = TimerRequest(4242, "step{1}{x", 5.0, 9)
        _write(queue.file_path, b'{"pid": 5, "scope_id":' + encode_json_line(braced))
        items = _get_all(queue, 2)
        assert isinstance(items[0], InvalidRequestError)
        assert items[1] == braced

    def test_line_with_nothing_to_recover_is_one_rejection(self, queue: FileRequestQueue) -> None:
        _write(queue.file_path, b'{"pid": 5, {"scope_id": {"a": {\n' + VALID_LINE)
        items = _get_all(queue, 2)
        assert [type(item) for item in items] == [InvalidRequestError, TimerRequest]
        assert items[1] == VALID
