import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from unittest import mock

import pytest

from timer_api import RejectReason, TimerRequest, encode_json_line
from timer_file import FileTimerRequest, FileTimerServer, PipeInUseError
from timer_watchdog import (
    Armed,
    Event,
    Exited,
    Expired,
    Reaped,
    Rejected,
    Signalled,
    WatchdogStats,
)

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


#: Arms ``outer``; when told (a line on stdin), leaves the block, whose release then
#: fails (the server is down), and carries on; when told again, arms ``next`` and
#: works on, healthy, until killed.
LEAVES_WHILE_DOWN = """
import sys, time, timer_api
from timer_file import FileTimerClient, ServerUnavailableError
client = FileTimerClient(sys.argv[1])
timer_api.configure(client)
try:
    with timer_api.expires(after=float(sys.argv[2]), scope="outer"):
        print("armed", flush=True)
        sys.stdin.readline()
except ServerUnavailableError:
    print("release failed", flush=True)
sys.stdin.readline()
client.acquire("next", time.time() + 300)
print("next", flush=True)
time.sleep(300)
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

    @pytest.mark.slow
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

    @pytest.mark.slow
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


class TestNoFalseKill:
    def test_block_left_while_the_server_was_down_is_not_rearmed(self, pipe_path: str) -> None:
        first = FileTimerServer(pipe_path, "run", max_interval=0.5)
        first.start()
        worker = subprocess.Popen(
            [sys.executable, "-c", LEAVES_WHILE_DOWN, pipe_path, "1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        second: FileTimerServer | None = None
        try:
            assert worker.stdin is not None
            assert worker.stdout is not None
            assert worker.stdout.readline() == "armed\n"
            assert _until(lambda: first.stats().armed == 1)
            first.stop()
            worker.stdin.write("leave\n")
            worker.stdin.flush()
            assert worker.stdout.readline() == "release failed\n"
            second = FileTimerServer(pipe_path, "run", max_interval=0.5)
            events = Recorder(second)
            second.start()
            worker.stdin.write("go on\n")
            worker.stdin.flush()
            assert worker.stdout.readline() == "next\n"
            assert _until(lambda: second is not None and second.stats().armed >= 1)
            # A replayed "outer" would come before "next" and kill the worker in 1 s.
            armed = [e.scope_id for e in events.of(Armed)]  # type: ignore[attr-defined]
            assert armed == ["next"]
            assert second.stats().timers == 1
            assert worker.poll() is None
        finally:
            worker.kill()
            worker.communicate()
            if second is not None:
                second.stop()
            first.stop()


class TestPipeOwnership:
    def test_second_server_on_a_live_pipe_is_refused(
        self, server: FileTimerServer, spawn: Spawn
    ) -> None:
        path = server.file_path
        inode = os.stat(path).st_ino
        with pytest.raises(PipeInUseError, match=re.escape(repr(path))):
            FileTimerServer(path, "intruder")
        assert os.stat(path).st_ino == inode
        # The first server still gets the requests sent to the path.
        worker = spawn(path, after=30, work=0.1)
        assert worker.wait(timeout=20) == 0
        assert _until(lambda: server.stats().released == 1)

    def test_serve_command_on_a_live_pipe_is_refused(self, server: FileTimerServer) -> None:
        inode = os.stat(server.file_path).st_ino
        done = subprocess.run(
            [sys.executable, "-m", "timer_watchdog", "serve", "--path", server.file_path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert server.file_path in done.stderr
        assert "running timer server" in done.stderr
        assert os.stat(server.file_path).st_ino == inode

    def test_pipe_of_a_killed_server_is_taken_over(self, pipe_path: str) -> None:
        code = (
            "import sys; from timer_file import FileTimerServer; "
            "FileTimerServer(sys.argv[1]).start(); print('up', flush=True); sys.stdin.read()"
        )
        with subprocess.Popen(
            [sys.executable, "-c", code, pipe_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as old:
            assert old.stdout is not None
            assert old.stdout.readline() == "up\n"
            old.kill()
            old.communicate()
        assert os.path.exists(pipe_path)  # left behind, with no reader
        new = FileTimerServer(pipe_path, "run")
        new.stop()

    def test_pipe_of_a_killed_server_with_forked_children_is_taken_over(
        self, pipe_path: str
    ) -> None:
        # The children inherit the server's descriptors; they must not count as its reader.
        code = (
            "import os, sys, time; from timer_file import FileTimerServer; "
            "FileTimerServer(sys.argv[1]).start(); pid = os.fork(); "
            "pid or (os.write(1, b'child\\n'), sys.stdin.read(), os._exit(0)); "
            "os.write(1, b'%d\\n' % pid); sys.stdin.read()"
        )
        with subprocess.Popen(
            [sys.executable, "-c", code, pipe_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as old:
            assert old.stdout is not None
            # The child is past its fork handlers once it speaks.
            lines = sorted([old.stdout.readline(), old.stdout.readline()])
            assert lines[1] == "child\n", lines
            child = int(lines[0])
            old.kill()
            old.wait()
            try:
                assert os.path.exists(pipe_path)
                assert FileTimerServer.is_process_running(child)
                new = FileTimerServer(pipe_path, "run")
                new.stop()
            finally:
                os.kill(child, signal.SIGKILL)
                old.communicate()


class TestRestart:
    @pytest.mark.parametrize("where", ["default", "given"])
    def test_start_after_stop_serves_again(self, pipe_path: str, spawn: Spawn, where: str) -> None:
        server = FileTimerServer(None if where == "default" else pipe_path, "run", 0.5)
        path = server.file_path
        server.start()
        server.stop()
        assert not os.path.exists(path)
        server.start()
        try:
            assert server.file_path == path
            worker = spawn(path, after=0.5, work=120)
            assert worker.wait(timeout=20) == -signal.SIGKILL
        finally:
            server.stop()
        assert not os.path.exists(path)


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

    def test_writer_dying_mid_line_does_not_hide_the_next_workers_hang(
        self, server: FileTimerServer, spawn: Spawn
    ) -> None:
        code = (
            "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK); "
            'os.write(fd, b\'{"version": 1, "pid": 5, "scope_id":\'); os._exit(0)'
        )
        subprocess.run([sys.executable, "-c", code, server.file_path], check=True)
        events = Recorder(server)
        worker = spawn(server.file_path, after=0.5, work=120)
        assert worker.wait(timeout=20) == -signal.SIGKILL
        assert _until(lambda: server.stats().reaped == 1)
        assert server.stats().rejected == 1
        assert [e.reason for e in events.of(Rejected)] == [RejectReason.WRONG_TYPE]  # type: ignore[attr-defined]

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

    @pytest.mark.parametrize("started", [True, False])
    def test_run_once_processes_what_is_waiting_then_stops(
        self, pipe_path: str, started: bool
    ) -> None:
        logged: list[str] = []
        server = FileTimerServer(pipe_path, "run", 10, log_event=lambda n, r: logged.append(n))
        if started:
            server.start()
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", BURST, pipe_path, "10"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(5)
        ]
        try:
            assert [c.stdout.readline() for c in clients if c.stdout] == ["done\n"] * 5
            server.run_once()
            stats = server.stats()
            assert (stats.received, stats.armed, stats.released) == (100, 50, 50)
            assert not os.path.exists(pipe_path)
            server.stop()
        finally:
            for client in clients:
                client.communicate()
        assert logged == (["watchdog started", "watchdog stopped"] if started else [])

    def test_run_once_reaps_what_expired(self, pipe_path: str) -> None:
        server = FileTimerServer(pipe_path, "run", 10)
        server.start()
        victim = subprocess.Popen(["sleep", "300"])
        try:
            fd = os.open(pipe_path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                for scope, after in (("expired", -60), ("valid", 60)):
                    request = TimerRequest(victim.pid, scope, time.time() + after, 9)
                    os.write(fd, encode_json_line(request))
            finally:
                os.close(fd)
            server.run_once()
            assert server.stats().signalled == 1
            assert victim.wait(timeout=20) == -signal.SIGKILL
            assert _until(lambda: server.stats().timers == 0)
        finally:
            server.stop()
            victim.kill()
            victim.wait()

    def test_run_once_drops_the_timers_of_a_worker_that_exited(self, pipe_path: str) -> None:
        server = FileTimerServer(pipe_path, "run", 10)
        events = Recorder(server)
        server.start()
        try:
            code = (
                "import sys, time; from timer_file import FileTimerClient; "
                "FileTimerClient(sys.argv[1]).acquire('s', time.time() + 300)"
            )
            subprocess.run([sys.executable, "-c", code, pipe_path], check=True, timeout=60)
            server.run_once()
            stats = server.stats()
            assert (stats.timers, stats.signalled) == (0, 0)
            assert stats.armed + stats.rejected == 1
            assert stats.armed == len(events.of(Exited))
        finally:
            server.stop()

    def test_start_after_run_once_serves_again(self, pipe_path: str, spawn: Spawn) -> None:
        server = FileTimerServer(pipe_path, "run", 0.5)
        server.start()
        server.run_once()
        server.start()
        try:
            worker = spawn(pipe_path, after=0.5, work=120)
            assert worker.wait(timeout=20) == -signal.SIGKILL
        finally:
            server.stop()

    @pytest.mark.slow
    def test_last_progress_time_advances(self, server: FileTimerServer) -> None:
        before = int(time.time())
        assert _until(lambda: server.get_last_progress_time() >= before + 1, timeout=10)

    def test_is_process_running(self, sleeper: int) -> None:
        assert FileTimerServer.is_process_running(sleeper)
        assert not FileTimerServer.is_process_running(2**22 + 1)

    @pytest.mark.parametrize("how", ["subclass", "patch"])
    def test_is_process_running_is_consulted(self, pipe_path: str, how: str) -> None:
        class NotRunning(FileTimerServer):
            @staticmethod
            def is_process_running(pid: int) -> bool:
                return False

        victim = subprocess.Popen(["sleep", "300"])
        patch = mock.patch.object(FileTimerServer, "is_process_running", return_value=False)
        with patch if how == "patch" else contextlib.nullcontext():
            server = (NotRunning if how == "subclass" else FileTimerServer)(pipe_path, "run", 0.5)
            events = Recorder(server)
            server.start()
            try:
                fd = os.open(pipe_path, os.O_WRONLY | os.O_NONBLOCK)
                os.write(fd, encode_json_line(TimerRequest(victim.pid, "s", time.time() + 0.2, 9)))
                os.close(fd)

                # Torch's meaning: a worker that is not running has its timers dropped
                # (refused on arrival, or dropped as exited), and is never signalled.
                def dropped() -> bool:
                    stats = server.stats()
                    return (
                        stats.received == 1
                        and stats.timers == 0
                        and bool(stats.rejected or events.of(Exited))
                    )

                assert _until(dropped)
                assert server.stats().signalled == 0
            finally:
                server.stop()
                alive = victim.poll() is None
                victim.kill()
                victim.wait()
        assert alive

    def test_is_process_running_cannot_make_it_signal_an_exited_worker(
        self, pipe_path: str
    ) -> None:
        class AlwaysRunning(FileTimerServer):
            @staticmethod
            def is_process_running(pid: int) -> bool:
                return True

        server = AlwaysRunning(pipe_path, "run", 0.5)
        events = Recorder(server)
        server.start()
        hung = subprocess.Popen(["sleep", "300"])
        gone = subprocess.Popen(["sleep", "300"])
        try:
            fd = os.open(pipe_path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, encode_json_line(TimerRequest(gone.pid, "g", time.time() + 0.5, 9)))
            finally:
                os.close(fd)
            assert _until(lambda: server.stats().armed == 1)
            gone.terminate()
            gone.wait()
            fd = os.open(pipe_path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, encode_json_line(TimerRequest(hung.pid, "h", time.time() + 0.5, 9)))
            finally:
                os.close(fd)
            assert hung.wait(timeout=20) == -signal.SIGKILL
            assert _until(lambda: server.stats().timers == 0)
        finally:
            server.stop()
            hung.kill()
            hung.wait()
        assert [e.pid for e in events.of(Signalled)] == [hung.pid]  # type: ignore[attr-defined]

    def test_stats_is_the_engines(self, server: FileTimerServer) -> None:
        assert isinstance(server.stats(), WatchdogStats)
