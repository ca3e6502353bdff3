import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from timer_api import RejectReason, TimerRequest, encode_json_line
from timer_file import FileTimerRequest, FileTimerServer
from timer_watchdog import Event, Expired, Reaped, Rejected, WatchdogStats

#: A worker: arms ``scope`` for ``after`` seconds, says so, optionally waits for a
#: line on stdin and arms a second timer (``inner``), then works ``work`` seconds.
WORKER = """
import sys, time, timer_api
from timer_file import FileTimerClient
path, after, work, wait = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
timer_api.configure(FileTimerClient(path))
with timer_api.expires(after=after, scope="outer"):
    print("armed", flush=True)
    if wait == "wait":
        sys.stdin.readline()
        with timer_api.expires(after=60, scope="inner"):
            time.sleep(work)
    else:
        time.sleep(work)
print("done", flush=True)
"""

#: Sends acquire/release pairs as fast as it can, then stays alive (the server
#: refuses requests of a process that has exited) until stdin closes.
BURST = """
import sys, time, timer_api
from timer_file import FileTimerClient
client = FileTimerClient(sys.argv[1])
for i in range(int(sys.argv[2])):
    client.acquire("burst", time.time() + 60)
    client.release("burst")
print("done", flush=True)
sys.stdin.read()
"""


Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start worker processes (``spawn(path, after, work, wait=False)``); kill leftovers at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(path: str, after: float, work: float, wait: bool = False) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, path, str(after), str(work), "wait" if wait else "go"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == "armed\n"
        return process

    yield start
    for process in started:
        process.kill()
        process.communicate()


def _until(condition: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Recorder:
    def __init__(self, server: FileTimerServer) -> None:
        self.events: list[Event] = []
        server.subscribe(self.events.append)

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def server(pipe_path: str) -> Iterator[FileTimerServer]:
    s = FileTimerServer(pipe_path, "test-run", max_interval=0.5)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sleeper() -> Iterator[int]:
    """Return the pid of a live process of ours that nothing should kill."""
    process = subprocess.Popen(["sleep", "300"])
    yield process.pid
    process.kill()
    process.wait()


class TestReaping:
    def test_hung_worker_reaped(self, server: FileTimerServer, spawn: Spawn) -> None:
        events = Recorder(server)
        worker = spawn(server.file_path, after=0.5, work=120)
        assert worker.wait(timeout=20) == -signal.SIGKILL
        assert _until(lambda: server.stats().reaped == 1)
        reaped = events.of(Reaped)
        assert [(e.pid, e.scope_id) for e in reaped] == [(worker.pid, "outer")]  # type: ignore[union-attr]
        # Reaching this line proves the server did not kill its own process.

    def test_in_time_worker_untouched(self, server: FileTimerServer, spawn: Spawn) -> None:
        worker = spawn(server.file_path, after=30, work=0.1)
        out, _ = worker.communicate(timeout=20)
        assert (worker.returncode, out) == (0, "done\n")
        assert _until(lambda: server.stats().released == 1)
        stats = server.stats()
        assert (stats.armed, stats.expired, stats.signalled, stats.timers) == (1, 0, 0, 0)

    def test_burst_without_error(self, server: FileTimerServer) -> None:
        pairs = 10_000
        with subprocess.Popen(
            [sys.executable, "-c", BURST, server.file_path, str(pairs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as burst:
            assert burst.stdout is not None
            assert burst.stdout.readline() == "done\n"
            assert _until(lambda: server.stats().received == 2 * pairs)
            _, err = burst.communicate(timeout=20)
        assert (burst.returncode, err) == (0, "")
        stats = server.stats()
        assert (stats.armed, stats.released, stats.rejected, stats.timers) == (
            pairs,
            pairs,
            0,
            0,
        )

    @pytest.mark.parametrize("restart", ["same_server", "new_server"])
    def test_server_restarted_mid_run_still_reaps(
        self, pipe_path: str, spawn: Spawn, restart: str
    ) -> None:
        first = FileTimerServer(pipe_path, "run", max_interval=0.5)
        first.start()
        worker = spawn(pipe_path, after=3, work=120, wait=True)
        assert _until(lambda: first.stats().armed == 1)
        first.stop()
        second = first if restart == "same_server" else FileTimerServer(pipe_path, "run", 0.5)
        events = Recorder(second)
        second.start()
        try:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
            assert worker.wait(timeout=20) == -signal.SIGKILL
            assert _until(lambda: bool(events.of(Reaped)))
            expired = events.of(Expired)
            assert [e.scope_id for e in expired][:1] == ["outer"]  # type: ignore[union-attr]
        finally:
            second.stop()

    @pytest.mark.parametrize("restart", ["same_server", "new_server"])
    def test_worker_that_sends_nothing_after_a_restart_is_still_reaped(
        self, pipe_path: str, spawn: Spawn, restart: str
    ) -> None:
        # The worker arms its only timer, then hangs: it never writes again, so only the
        # client's background check can hand the armed timer to the restarted server.
        first = FileTimerServer(pipe_path, "run", max_interval=0.5)
        first.start()
        worker = spawn(pipe_path, after=3, work=120)
        assert _until(lambda: first.stats().armed == 1)
        first.stop()
        second = first if restart == "same_server" else FileTimerServer(pipe_path, "run", 0.5)
        events = Recorder(second)
        second.start()
        try:
            assert worker.wait(timeout=30) == -signal.SIGKILL
            assert _until(lambda: bool(events.of(Reaped)))
            assert [e.scope_id for e in events.of(Expired)] == ["outer"]  # type: ignore[union-attr]
        finally:
            second.stop()


def _arm(pid: int, scope: str = "valid") -> bytes:
    return encode_json_line(TimerRequest(pid, scope, time.time() + 300, 9))


HOSTILE = {
    "garbage": (b"\x00\xff\xfe garbage", RejectReason.MALFORMED),
    "invalid_json": (b'{"pid": 5, "scope_id":', RejectReason.MALFORMED),
    "oversize": (b'{"pid":5,"scope_id":"' + b"z" * 9000 + b'"}', RejectReason.OVERSIZE),
    "missing_field": (b'{"pid":5,"expiration_time":1}', RejectReason.MISSING_FIELD),
    "wrong_type": (b'{"pid":"5","scope_id":"s","expiration_time":1}', RejectReason.WRONG_TYPE),
    "nan": (b'{"pid":5,"scope_id":"s","expiration_time":NaN}', RejectReason.MALFORMED),
    "inf": (b'{"pid":5,"scope_id":"s","expiration_time":1e999}', RejectReason.NON_FINITE),
    "pid_zero": (b'{"pid":0,"scope_id":"s","expiration_time":1}', RejectReason.BAD_PID),
    "pid_negative": (b'{"pid":-1,"scope_id":"s","expiration_time":1}', RejectReason.BAD_PID),
    "pid_one": (b'{"pid":1,"scope_id":"s","expiration_time":1}', RejectReason.PROTECTED_PID),
    "signal_too_big": (
        b'{"pid":5,"scope_id":"s","expiration_time":1,"signal":65}',
        RejectReason.OUT_OF_RANGE,
    ),
}


class TestHostileInput:
    @pytest.mark.parametrize("name", sorted(HOSTILE))
    def test_rejected_counted_reported_and_neighbours_served(
        self, server: FileTimerServer, sleeper: int, name: str
    ) -> None:
        raw, reason = HOSTILE[name]
        events = Recorder(server)
        fd = os.open(server.file_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, _arm(sleeper, "before") + raw + b"\n" + _arm(sleeper, "after"))
        finally:
            os.close(fd)
        assert _until(lambda: server.stats().received == 3)
        stats = server.stats()
        assert (stats.rejected, stats.armed, stats.timers) == (1, 2, 2)
        assert [e.reason for e in events.of(Rejected)] == [reason]  # type: ignore[union-attr]
        server.register_timers([TimerRequest(sleeper, s, -1) for s in ("before", "after")])

    def test_valid_request_after_hostile_input_still_reaps(self, server: FileTimerServer) -> None:
        victims = [subprocess.Popen(["sleep", "300"]) for _ in HOSTILE]
        try:
            data = b"".join(
                raw + b"\n" + encode_json_line(TimerRequest(v.pid, "v", time.time() + 0.3, 9))
                for (raw, _), v in zip(HOSTILE.values(), victims, strict=True)
            )
            fd = os.open(server.file_path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            codes = [v.wait(timeout=20) for v in victims]
        finally:
            for v in victims:
                v.kill()
                v.wait()
        assert codes == [-signal.SIGKILL] * len(HOSTILE)
        assert server.stats().rejected == len(HOSTILE)


class TestTorchSurface:
    def test_log_event_names(self, pipe_path: str, spawn: Spawn) -> None:
        logged: list[tuple[str, FileTimerRequest | None]] = []
        server = FileTimerServer(pipe_path, "run", 0.5, True, lambda n, r: logged.append((n, r)))
        server.start()
        try:
            worker = spawn(pipe_path, after=0.3, work=120)
            assert worker.wait(timeout=20) == -signal.SIGKILL
            assert _until(lambda: server.stats().reaped == 1)
        finally:
            server.stop()
        names = [name for name, _ in logged]
        assert names[0] == "watchdog started"
        assert names[-1] == "watchdog stopped"
        assert "timer expired" in names
        assert "kill worker process" in names
        expired = next(r for n, r in logged if n == "timer expired")
        assert expired is not None
        assert (expired.worker_pid, expired.scope_id, expired.signal) == (
            worker.pid,
            "outer",
            signal.SIGKILL,
        )

    def test_log_event_that_raises_is_ignored(self, pipe_path: str) -> None:
        def broken(name: str, request: FileTimerRequest | None) -> None:
            raise RuntimeError(name)

        server = FileTimerServer(pipe_path, "run", 0.5, log_event=broken)
        server.start()
        server.stop()
        assert not os.path.exists(pipe_path)

    def test_pipe_exists_after_construction_and_removed_on_stop(self, pipe_path: str) -> None:
        server = FileTimerServer(pipe_path, "run")
        assert os.path.exists(pipe_path)
        assert server.run_id == "run"
        server.stop()
        server.stop()
        assert not os.path.exists(pipe_path)

    def test_default_path(self) -> None:
        server = FileTimerServer(None, "run", 0.5)
        directory = os.path.dirname(server.file_path)
        assert os.stat(directory).st_mode & 0o777 == 0o700
        server.start()
        server.stop()
        assert not os.path.exists(directory)

    def test_last_progress_time_advances(self, server: FileTimerServer) -> None:
        before = int(time.time())
        assert _until(lambda: server.get_last_progress_time() >= before + 1, timeout=10)

    def test_is_process_running(self, sleeper: int) -> None:
        assert FileTimerServer.is_process_running(sleeper)
        assert not FileTimerServer.is_process_running(2**22 + 1)

    def test_stats_is_the_engines(self, server: FileTimerServer) -> None:
        assert isinstance(server.stats(), WatchdogStats)
