import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

import timer_api
from timer_api import LineDecoder, TimerRequest
from timer_file import (
    FileTimerClient,
    PipeFullError,
    ServerUnavailableError,
    configure_from_env,
)
from timer_file._client import TIMER_FILE_ENV
from timer_file._queue import FileRequestQueue

T = TypeVar("T")


def decode_line(line: bytes | str) -> TimerRequest:
    """Decode one request line (newline or not) as a server reads it from the pipe."""
    data = line.encode() if isinstance(line, str) else line
    [request] = LineDecoder().feed(data.rstrip(b"\n") + b"\n")
    assert isinstance(request, TimerRequest), request
    return request


@pytest.fixture
def queue(pipe_path: str) -> object:
    q = FileRequestQueue(pipe_path)
    yield q
    q.close()


def _drain(queue: FileRequestQueue, count: int) -> list[TimerRequest]:
    items: list[TimerRequest] = []
    deadline = time.monotonic() + 10
    while len(items) < count and time.monotonic() < deadline:
        for item in queue.get(count - len(items), 0.5):
            assert isinstance(item, TimerRequest), item
            items.append(item)
    return items


class PlainFifo:
    """A FIFO read like torch's server does: default pipe size, read on demand."""

    def __init__(self, path: str, size: int | None = None) -> None:
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if size is not None:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, size)

    def lines(self) -> list[bytes]:
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        return data.splitlines()

    def close(self) -> None:
        os.close(self.fd)


class TestRequests:
    def test_acquire_fills_identity_and_deadlines(self, queue: FileRequestQueue) -> None:
        client = FileTimerClient(queue.file_path, signal.SIGTERM)
        expiration = time.time() + 30
        client.acquire("scope", expiration)
        client.release("scope")
        arm, release = _drain(queue, 2)
        assert (arm.worker_id, arm.scope_id, arm.expiration_time) == (
            os.getpid(),
            "scope",
            expiration,
        )
        assert arm.signal == signal.SIGTERM
        assert arm.start_time == timer_api.process_start_time(os.getpid())
        assert arm.thread_id == threading.get_ident()
        assert arm.deadline is not None
        assert 20 < arm.deadline - time.monotonic() <= 30
        assert release.is_release
        assert (release.scope_id, release.start_time) == ("scope", arm.start_time)
        assert client.armed == frozenset()

    def test_tracks_armed_scopes(self, queue: FileRequestQueue) -> None:
        client = FileTimerClient(queue.file_path)
        client.acquire("a", time.time() + 30)
        client.acquire("b", time.time() + 30)
        client.release("a")
        assert client.armed == {"b"}
        assert len(_drain(queue, 3)) == 3

    @pytest.mark.parametrize("bad", [65, 1000, True, 1.5])
    def test_bad_signal_refused(self, pipe_path: str, bad: int) -> None:
        with pytest.raises(ValueError, match="signal"):
            FileTimerClient(pipe_path, bad)

    def test_bad_send_timeout_refused(self, pipe_path: str) -> None:
        with pytest.raises(ValueError, match="send_timeout"):
            FileTimerClient(pipe_path, send_timeout=float("nan"))

    def test_oversize_scope_refused_before_sending(self, queue: FileRequestQueue) -> None:
        client = FileTimerClient(queue.file_path)
        with pytest.raises(timer_api.InvalidRequestError):
            client.acquire("x" * 2000 + "é" * 1000, time.time() + 30)
        assert client.armed == frozenset()


class TestNoServer:
    def test_missing_pipe(self, pipe_path: str) -> None:
        client = FileTimerClient(pipe_path)
        with pytest.raises(ServerUnavailableError, match="does not exist"):
            client.acquire("s", time.time() + 30)
        assert client.armed == frozenset()

    def test_pipe_without_reader(self, pipe_path: str) -> None:
        os.mkfifo(pipe_path, 0o600)
        client = FileTimerClient(pipe_path)
        with pytest.raises(BrokenPipeError, match="has no reader"):
            client.release("s")

    def test_failed_release_is_never_replayed_as_an_arm(self, pipe_path: str) -> None:
        first = FileRequestQueue(pipe_path)
        client = FileTimerClient(pipe_path)
        client.acquire("left", time.time() + 30)
        client.acquire("inside", time.time() + 30)
        assert len(_drain(first, 2)) == 2
        first.close()
        with pytest.raises(ServerUnavailableError):
            client.release("left")  # the block is left although the server is down
        assert client.armed == {"inside"}
        second = FileRequestQueue(pipe_path)
        try:
            client.acquire("next", time.time() + 30)
            got = _drain(second, 3)
        finally:
            second.close()
        # The release that failed may be told (a no-op to a new server); never an arm.
        arms = [r.scope_id for r in got if not r.is_release]
        assert arms == ["inside", "next"], got
        assert {r.scope_id for r in got if r.is_release} <= {"left"}

    @pytest.mark.parametrize("then", ["next_request", "nothing"])
    def test_release_that_failed_on_a_full_pipe_is_sent_later(
        self, pipe_path: str, then: str
    ) -> None:
        fifo = PlainFifo(pipe_path, size=4096)
        client = FileTimerClient(pipe_path, keep_open=True, send_timeout=0)
        try:
            client.acquire("s", time.time() + 30)
            filler = os.open(pipe_path, os.O_WRONLY | os.O_NONBLOCK)
            for size in (512, 1):  # fill it to the last byte
                with contextlib.suppress(BlockingIOError):
                    while True:
                        os.write(filler, b" " * size)
            os.close(filler)
            with pytest.raises(PipeFullError):
                client.release("s")  # the server is alive but not reading
            assert client.armed == frozenset()
            fifo.lines()  # the server reads again
            if then == "next_request":
                client.acquire("t", time.time() + 30)
            # Otherwise the worker sends nothing more: the background check tells the server.
            lines: list[bytes] = []
            deadline = time.monotonic() + 20
            while not lines and time.monotonic() < deadline:
                lines = [line for line in fifo.lines() if line.strip()]
                time.sleep(0.02)
        finally:
            client.close()
            fifo.close()
        got = [(r.scope_id, r.is_release) for r in map(decode_line, lines)]
        assert got == [("s", True), ("t", False)] if then == "next_request" else [("s", True)]


class TestKeepOpen:
    def test_kept_open_for_our_server(self, queue: FileRequestQueue) -> None:
        client = FileTimerClient(queue.file_path)
        client.acquire("s", time.time() + 30)
        assert client._fd >= 0
        client.close()
        assert client._fd == -1
        client.release("s")
        assert len(_drain(queue, 2)) == 2

    @pytest.mark.parametrize("keep_open", [None, False])
    def test_closed_after_each_request_for_a_plain_pipe(
        self, pipe_path: str, keep_open: bool | None
    ) -> None:
        fifo = PlainFifo(pipe_path)
        try:
            client = FileTimerClient(pipe_path, keep_open=keep_open)
            client.acquire("s", time.time() + 30)
            assert client._fd == -1
            client.release("s")
            lines = fifo.lines()
        finally:
            fifo.close()
        assert [decode_line(line).scope_id for line in lines] == ["s", "s"]

    def test_forced_open_for_a_plain_pipe(self, pipe_path: str) -> None:
        fifo = PlainFifo(pipe_path)
        try:
            client = FileTimerClient(pipe_path, keep_open=True)
            client.acquire("s", time.time() + 30)
            assert client._fd >= 0
            client.close()
        finally:
            fifo.close()


class TestFullPipe:
    def test_waits_for_room_then_succeeds(self, pipe_path: str) -> None:
        fifo = PlainFifo(pipe_path, size=4096)
        client = FileTimerClient(pipe_path, keep_open=True, send_timeout=20)
        got: list[bytes] = []
        stop = threading.Event()

        def slow_reader() -> None:
            while not stop.is_set():
                time.sleep(0.01)
                got.extend(fifo.lines())

        thread = threading.Thread(target=slow_reader)
        thread.start()
        try:
            for i in range(300):
                client.acquire(f"s{i % 7}", time.time() + 30)
        finally:
            stop.set()
            thread.join(20)
            got.extend(fifo.lines())
            client.close()
            fifo.close()
        assert len(got) == 300

    def test_raises_clear_error_after_send_timeout(self, pipe_path: str) -> None:
        fifo = PlainFifo(pipe_path, size=4096)
        client = FileTimerClient(pipe_path, keep_open=True, send_timeout=0.2)
        try:
            with pytest.raises(PipeFullError, match="send_timeout"):  # noqa: PT012
                for i in range(1000):
                    client.acquire(f"s{i}", time.time() + 30)
            assert isinstance(PipeFullError(), TimeoutError)
            assert not isinstance(PipeFullError(), BlockingIOError)
        finally:
            client.close()
            fifo.close()


class TestServerRestart:
    def test_replays_armed_timers_into_new_pipe(self, pipe_path: str) -> None:
        first = FileRequestQueue(pipe_path)
        client = FileTimerClient(pipe_path)
        client.acquire("kept", time.time() + 30)
        client.acquire("dropped", time.time() + 30)
        client.release("dropped")
        assert len(_drain(first, 3)) == 3
        first.close()
        second = FileRequestQueue(pipe_path)
        try:
            client.acquire("new", time.time() + 30)
            got = _drain(second, 2)
        finally:
            second.close()
        assert [(r.scope_id, r.is_release) for r in got] == [("kept", False), ("new", False)]

    def test_replays_after_a_failed_request(self, pipe_path: str) -> None:
        first = FileRequestQueue(pipe_path)
        client = FileTimerClient(pipe_path)
        client.acquire("kept", time.time() + 30)
        first.close()
        with pytest.raises(ServerUnavailableError):
            client.acquire("lost", time.time() + 30)
        second = FileRequestQueue(pipe_path)
        try:
            client.release("other")
            got = _drain(second, 2)
        finally:
            second.close()
        assert [(r.scope_id, r.is_release) for r in got] == [("kept", False), ("other", True)]

    def test_notices_a_path_replaced_while_the_old_reader_lives(self, pipe_path: str) -> None:
        first = FileRequestQueue(pipe_path)
        client = FileTimerClient(pipe_path)
        client.acquire("kept", time.time() + 30)
        os.unlink(pipe_path)  # first keeps reading its own, now nameless, pipe
        second = FileRequestQueue(pipe_path)
        try:
            time.sleep(0.2)  # past the client's re-check interval
            client.release("other")
            got = _drain(second, 2)
        finally:
            second.close()
            first.close()
        assert [(r.scope_id, r.is_release) for r in got] == [("kept", False), ("other", True)]


def _recreate_with_inode(
    path: str, inode: int, make: Callable[[], T], close: Callable[[T], None]
) -> T:
    """Make a new pipe at ``path`` with ``make()``, trying to get inode number ``inode`` back.

    On ext4 an inode number freed is usually handed out again at once; where that
    cannot happen (tmpfs, or a client pinning the old inode) the last pipe made is kept.
    """
    made = make()
    for _ in range(50):
        if os.stat(path).st_ino == inode:
            break
        close(made)
        made = make()
    return made


class TestSameInodeRestart:
    """A pipe re-created at the path may get the old inode number back (seen on ext4)."""

    @pytest.mark.slow
    def test_hung_worker_replays_into_our_restarted_server(self, pipe_path: str) -> None:
        first = FileRequestQueue(pipe_path)
        client = FileTimerClient(pipe_path)
        client.acquire("kept", time.time() + 30)
        assert len(_drain(first, 1)) == 1
        inode = os.stat(pipe_path).st_ino
        first.close()
        # The worker hangs: only its background check notices the server went away.
        deadline = time.monotonic() + 20
        while client._fd >= 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client._fd < 0, "the client never noticed that the server went away"
        second = _recreate_with_inode(
            pipe_path, inode, lambda: FileRequestQueue(pipe_path), FileRequestQueue.close
        )
        try:
            got = _drain(second, 1)
        finally:
            second.close()
        assert [(r.scope_id, r.is_release) for r in got] == [("kept", False)]

    def test_replays_into_a_recreated_plain_pipe(self, pipe_path: str) -> None:
        fifo = PlainFifo(pipe_path)
        client = FileTimerClient(pipe_path)  # opens and closes the pipe per request
        client.acquire("kept", time.time() + 30)
        assert len(fifo.lines()) == 1
        inode = os.stat(pipe_path).st_ino

        def make() -> PlainFifo:
            return PlainFifo(pipe_path)

        def close(old: PlainFifo) -> None:
            old.close()
            os.unlink(pipe_path)

        close(fifo)  # a torch-like server stops; another starts at once
        second = _recreate_with_inode(pipe_path, inode, make, close)
        try:
            deadline = time.monotonic() + 20
            lines: list[bytes] = []
            while not lines and time.monotonic() < deadline:
                time.sleep(0.05)
                lines = second.lines()
        finally:
            second.close()
        assert [decode_line(line).scope_id for line in lines] == ["kept"]


class TestFork:
    def test_child_does_not_inherit_timers(self, queue: FileRequestQueue) -> None:
        client = FileTimerClient(queue.file_path)
        client.acquire("parent", time.time() + 30)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report what it sees, send one request, exit
            try:
                inherited = client.armed
                client.release("child")
                os.write(write_end, b"ok" if inherited == frozenset() else b"bad")
            finally:
                os._exit(0)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        report = os.read(read_end, 10)
        os.close(read_end)
        assert os.waitstatus_to_exitcode(status) == 0
        assert report == b"ok"
        got = _drain(queue, 2)
        assert [(r.worker_id, r.scope_id) for r in got] == [
            (os.getpid(), "parent"),
            (pid, "child"),
        ]
        assert got[1].start_time == timer_api.process_start_time(pid) or got[1].start_time
        assert got[1].start_time != got[0].start_time
        assert client.armed == {"parent"}
        client.release("parent")


class TestConfigureFromEnv:
    def test_configures_default_client(
        self, queue: FileRequestQueue, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(TIMER_FILE_ENV, queue.file_path)
        client = configure_from_env(signal.SIGTERM)
        assert isinstance(client, FileTimerClient)
        assert (client.file_path, client.signal) == (queue.file_path, signal.SIGTERM)
        with timer_api.expires(after=30):
            pass
        got = _drain(queue, 2)
        assert [r.is_release for r in got] == [False, True]

    def test_unset(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(TIMER_FILE_ENV, raising=False)
        with pytest.raises(RuntimeError, match=TIMER_FILE_ENV):
            configure_from_env()
        assert configure_from_env(required=False) is None
