"""Kill exactly the hung worker: pid reuse, zombie main threads, time namespaces, the server itself.

The pid-reuse tests run a whole scenario (server and workers) as pid 1 of a new pid
namespace (``unshare -p -f --mount-proc``), where writing ``ns_last_pid`` makes the
next fork reuse a chosen pid without disturbing the rest of the machine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from timer_api import LineDecoder, TimerRequest, process_start_time
from timer_watchdog import (
    Armed,
    ClockSkew,
    Exited,
    Expired,
    Reaped,
    Rejected,
    Signalled,
)
from timer_watchdog._server import SWEEP_INTERVAL

PATIENCE = 60.0


def _can_unshare(*flags: str) -> str | None:
    """Return why ``unshare flags`` cannot run a program here, or ``None`` if it can."""
    try:
        done = subprocess.run(
            ["unshare", *flags, sys.executable, "-c", "pass"],
            capture_output=True,
            timeout=PATIENCE,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare {' '.join(flags)} unavailable: {exc}"
    if done.returncode != 0:
        return f"unshare {' '.join(flags)} refused: {done.stderr.decode(errors='replace').strip()}"
    return None


_NO_PIDNS = _can_unshare("-p", "-f", "--mount-proc")
_NO_TIMENS = _can_unshare("-T", "--monotonic", "100000")

#: Run as pid 1 of a new pid namespace: fork an ``old`` worker, arm its timer, kill it,
#: make the next fork reuse its pid, fork a ``new`` one; print what became of ``new``.
PID_REUSE_SCENARIO = r"""
import collections, json, os, signal, sys, threading, time
from timer_api import RequestQueue, TimerRequest, process_stat
from timer_watchdog import Exited, Reaped, Signalled, WatchdogServer

# "same_tick": new takes old's pid and start time; "same_tick_arms": and then arms a
# timer of its own, with that start time; "no_start_time": torch's client.
MODE = sys.argv[1]
SAME_TICK = MODE in ("same_tick", "same_tick_arms")


class Feed(RequestQueue):
    def __init__(self):
        self.items = collections.deque()
        self.cond = threading.Condition()

    def put(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def size(self):
        return len(self.items)

    def get(self, size, timeout):
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            return [self.items.popleft() for _ in range(min(size, len(self.items)))]

    def interrupt(self):
        with self.cond:
            self.cond.notify_all()


def fork_sleeper():
    pid = os.fork()
    if pid == 0:
        while True:
            signal.pause()
    return pid


def reuse_next(pid):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))


feed = Feed()
events = []
server = WatchdogServer(feed, max_interval=0.05)
server.subscribe(events.append)
for attempt in range(500):
    old = fork_sleeper()
    old_start = process_stat(old)[1]
    if SAME_TICK:
        # The old worker's timer, armed while it lives (the server pins it then).
        server.register_timers(
            [TimerRequest(old, "old", time.time() + 0.5, start_time=old_start)]
        )
    else:
        # torch's client sends no start time; the old worker is long done with it.
        server.register_timers([TimerRequest(old, "old", time.time() + 3600)])
        time.sleep(0.05)  # a later clock tick: the new worker's start time differs
    os.kill(old, signal.SIGKILL)
    os.waitpid(old, 0)
    reuse_next(old)
    new = fork_sleeper()
    if new == old and (process_stat(new)[1] == old_start) == SAME_TICK:
        break
    os.kill(new, signal.SIGKILL)
    os.waitpid(new, 0)
    server.clear_timers({old, new})
else:
    print(json.dumps({"skip": "no pid reused within one clock tick in 500 tries"}))
    sys.exit(0)
if MODE == "no_start_time":
    # The new worker, hung, arms its own timer the way torch's client does.
    feed.put(TimerRequest(new, "new", time.time() + 0.3))
server.start()
end = time.monotonic() + 20
while time.monotonic() < end:
    if MODE == "same_tick" and any(isinstance(e, (Exited, Signalled)) for e in events):
        break
    if MODE == "same_tick_arms" and any(isinstance(e, Exited) for e in events):
        # The old worker is forgotten as exited; the new one, hung, arms its timer
        # with the very identity the old one had: it must be watched all the same.
        feed.put(TimerRequest(new, "new", time.time() + 0.3, start_time=old_start))
        MODE = "no_start_time"  # now wait for its reap
    if MODE == "no_start_time" and any(isinstance(e, Reaped) for e in events):
        break
    time.sleep(0.01)
done, status = os.waitpid(new, os.WNOHANG)
server.stop()
print(json.dumps({
    "pid": new,
    "attempts": attempt + 1,
    "new_alive": done == 0,
    "new_status": status,
    "events": [[type(e).__name__, getattr(e, "pid", None), getattr(e, "detail", "")]
               for e in events],
}))
if done == 0:
    os.kill(new, signal.SIGKILL)
"""


def _run_in_pid_namespace(mode: str) -> dict[str, object]:
    done = subprocess.run(
        ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", PID_REUSE_SCENARIO, mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    if "skip" in result:
        pytest.skip(str(result["skip"]))
    return result


@pytest.mark.skipif(_NO_PIDNS is not None, reason=str(_NO_PIDNS))
class TestPidReuse:
    def test_pid_reused_within_one_tick_is_never_signalled(self):
        # (pid, start_time) repeats: only the pidfd held since admission tells them apart.
        result = _run_in_pid_namespace("same_tick")
        kinds = [kind for kind, pid, _ in result["events"] if pid == result["pid"]]  # type: ignore[attr-defined,union-attr]
        assert result["new_alive"], result
        assert "Signalled" not in kinds, result
        assert "Exited" in kinds, result

    def test_new_process_with_the_same_pid_and_start_time_is_watched(self):
        # The old worker is remembered as gone; the new one's request is not late.
        result = _run_in_pid_namespace("same_tick_arms")
        assert not result["new_alive"], result
        assert os.WTERMSIG(result["new_status"]) == signal.SIGKILL, result  # type: ignore[arg-type]
        kinds = [kind for kind, pid, _ in result["events"] if pid == result["pid"]]  # type: ignore[attr-defined,union-attr]
        assert kinds[-2:] == ["Signalled", "Reaped"], result

    def test_new_process_on_a_reused_pid_without_start_time_is_reaped(self):
        # torch's client: the new process's request must not be filed under the dead one.
        result = _run_in_pid_namespace("no_start_time")
        assert not result["new_alive"], result
        assert os.WIFSIGNALED(result["new_status"]), result  # type: ignore[arg-type]
        assert os.WTERMSIG(result["new_status"]) == signal.SIGKILL, result  # type: ignore[arg-type]
        details = [detail for kind, _, detail in result["events"] if kind == "Exited"]  # type: ignore[attr-defined,union-attr]
        assert details == ["exited; a new request names its pid"], result


#: As pid 1 of a new pid namespace whose /proc hides other users' processes
#: (``hidepid=1``): a server that runs as ``nobody`` gets a request naming root's process.
HIDDEN_PROC_SCENARIO = r"""
import json, os, pwd, subprocess, time
from timer_api import TimerRequest
from timer_watchdog import Rejected, WatchdogServer

target = subprocess.Popen(["sleep", "60"])  # root's, ended with the namespace
events = []
server = WatchdogServer(None, max_interval=60.0)
server.subscribe(events.append)
nobody = pwd.getpwnam("nobody")
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)  # everything it needs is imported already
server.register_timers([TimerRequest(target.pid, "x", time.time() + 60)])
print(json.dumps([[e.reason, e.detail] for e in events if isinstance(e, Rejected)]))
"""


@pytest.mark.skipif(_NO_PIDNS is not None, reason=str(_NO_PIDNS))
def test_a_process_whose_proc_files_are_hidden_is_refused_as_another_users():
    done = subprocess.run(
        [
            "unshare",
            "-p",
            "-f",
            "--mount-proc",
            "sh",
            "-c",
            'mount -o remount,hidepid=1 /proc || exit 77; exec "$0" -c "$1"',
            sys.executable,
            HIDDEN_PROC_SCENARIO,
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    if done.returncode == 77:
        pytest.skip(f"cannot mount /proc with hidepid=1 here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    [[reason, detail]] = json.loads(done.stdout.splitlines()[-1])
    assert reason == "other_user"
    assert "cannot be read" in detail


#: A worker whose main thread exits (the leader turns zombie) while another thread hangs.
ZOMBIE_LEADER = """
import ctypes

def hang():
    while True:
        time.sleep(0.05)

threading.Thread(target=hang, daemon=True).start()
print("ready", flush=True)
if sys.argv[1] == "exit_now":
    ctypes.CDLL(None).pthread_exit(None)  # ctypes drops the GIL: the other thread runs on
sys.stdin.readline()
ctypes.CDLL(None).pthread_exit(None)
"""


def _wait_for_zombie_leader(pid: int) -> None:
    end = time.monotonic() + PATIENCE
    while time.monotonic() < end:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
        if state == b"Z" and len(os.listdir(f"/proc/{pid}/task")) > 1:
            return
        time.sleep(0.01)
    pytest.fail(f"pid {pid}'s main thread did not exit in {PATIENCE}s")


class TestZombieLeader:
    @pytest.mark.slow
    @pytest.mark.parametrize("armed", ["before_main_exits", "after_main_exits"])
    def test_live_threads_behind_a_zombie_main_thread_are_reaped(self, make_server, armed):
        h = make_server()
        exit_now = armed == "after_main_exits"
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, threading, time\n" + textwrap.dedent(ZOMBIE_LEADER),
                "exit_now" if exit_now else "wait",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert child.stdin is not None
            assert child.stdout.readline().strip() == b"ready"
            start = process_start_time(child.pid)
            if exit_now:
                _wait_for_zombie_leader(child.pid)
                h.put(TimerRequest(child.pid, "s", time.time() + 0.3, start_time=start))
            else:
                h.put(TimerRequest(child.pid, "s", time.time() + 1.5, start_time=start))
                h.events.wait_for(Armed, child.pid)
                child.stdin.write(b"exit\n")
                child.stdin.flush()
                _wait_for_zombie_leader(child.pid)
            assert child.wait(PATIENCE) == -signal.SIGKILL
            h.events.wait_for(Reaped, child.pid)
        finally:
            child.kill()
            child.wait(PATIENCE)
            child.stdin.close()
            child.stdout.close()


#: A worker that builds its request with its own clocks, prints it, then hangs.
CLOCK_WORKER = """
import os, sys, time
from timer_api import TimerRequest, encode_json_line, process_start_time
after = float(sys.argv[1])
pid = os.getpid()
request = TimerRequest(
    pid, "s", time.time() + after, start_time=process_start_time(pid),
    deadline=time.monotonic() + after,
)
print(encode_json_line(request).decode(), end="", flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(_NO_TIMENS is not None, reason=str(_NO_TIMENS))
class TestTimeNamespace:
    def _start(self, offset: int, after: float) -> subprocess.Popen[bytes]:
        command = ["unshare", "-T", "--monotonic", str(offset), sys.executable, "-c"]
        return subprocess.Popen(
            [*command, CLOCK_WORKER, str(after)],
            stdout=subprocess.PIPE,
        )

    def test_deadline_from_an_offset_monotonic_clock_is_not_trusted(self, make_server, spawn):
        h = make_server()
        ahead = self._start(100_000, 0.3)  # its deadline would be 100,000 s away
        behind = self._start(-1_000, 60.0)  # its healthy block would be killed at once
        try:
            requests = []
            for worker in (ahead, behind):
                assert worker.stdout is not None
                [request] = LineDecoder().feed(worker.stdout.readline())
                requests.append(request)
            assert requests[0].worker_id == ahead.pid  # no fork: unshare ran the worker itself
            h.put(*requests)
            assert ahead.wait(PATIENCE) == -signal.SIGKILL
            sentinel = spawn()
            h.put(sentinel.request(after=0.3))
            h.events.wait_for(Reaped, sentinel.pid)
            assert behind.poll() is None
            assert h.events.of(Signalled, behind.pid) == []
            skews = {e.pid: e.skew for e in h.events.of(ClockSkew)}
            assert set(skews) == {ahead.pid, behind.pid}
            assert 99_990 < skews[ahead.pid] < 100_010
            assert -1_010 < skews[behind.pid] < -990
            assert h.server.stats().clock_skew == 2
        finally:
            for worker in (ahead, behind):
                worker.kill()
                worker.wait(PATIENCE)
                assert worker.stdout is not None
                worker.stdout.close()

    def test_agreeing_clocks_raise_no_event(self, make_server, spawn):
        h = make_server()
        child = spawn()
        h.put(child.request(after=0.3))
        assert child.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, child.pid)
        assert h.events.of(ClockSkew) == []
        assert h.server.stats().clock_skew == 0


class TestOwnProcess:
    def test_timers_of_the_server_process_are_held_reported_never_signalled(
        self, make_server, spawn
    ):
        h = make_server(start=False)
        me = os.getpid()
        soon = TimerRequest(me, "soon", time.time() + 0.3)
        later = TimerRequest(me, "later", time.time() + 3600)
        h.server.register_timers([soon, later])
        assert h.server.get_expired_timers(time.time() + 10) == {me: [soon]}
        h.server.start()
        expired = h.events.wait_for(Expired, me)[0]
        assert (expired.scope_id, expired.action) == ("soon", 0)
        sentinel = spawn()  # a reap after the expiry shows the loop went past it
        h.put(sentinel.request(after=0.3))
        h.events.wait_for(Reaped, sentinel.pid)
        assert h.events.of(Signalled, me) == []
        assert h.server.get_expired_timers(time.time() + 7200) == {me: [later]}
        stats = h.server.stats()
        assert (stats.rejected, stats.timers) == (0, 1)

    def test_pid_1_is_still_refused(self, make_server):
        h = make_server(start=False)
        h.server.register_timers([TimerRequest(1, "s", time.time() + 60)])
        assert h.server.stats().rejected == 1


@contextlib.contextmanager
def no_file_descriptor_left() -> Iterator[None]:
    """Leave this process no file descriptor to open for the block (a lowered soft limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(map(int, os.listdir("/proc/self/fd")))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    held: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while len(held) < 4096:
                held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class TestWithoutPidfd:
    def test_hung_worker_is_still_reaped_and_the_fallback_is_logged(
        self, make_server, spawn, monkeypatch, caplog
    ):
        import timer_watchdog._process as process

        monkeypatch.setattr(process, "_pidfd_open", None)
        monkeypatch.setattr(process, "_warned_no_pidfd", set())
        h = make_server()
        child = spawn()
        h.put(child.request(after=0.3))
        assert child.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, child.pid)
        assert "identifying workers by /proc start time" in caplog.text

    @pytest.mark.slow
    def test_a_worker_is_not_forgotten_while_proc_cannot_be_read(
        self, make_server, spawn, monkeypatch, caplog
    ):
        import timer_watchdog._process as process

        monkeypatch.setattr(process, "_pidfd_open", None)
        monkeypatch.setattr(process, "_warned_unreadable", set(), raising=False)
        h = make_server()
        child = spawn()
        h.put(child.request(after=3.0))
        h.events.wait_for(Armed, child.pid)
        with no_file_descriptor_left():
            time.sleep(2.5 * SWEEP_INTERVAL)  # the loop sweeps the workers meanwhile
        assert child.wait() == -signal.SIGKILL
        h.events.wait_for(Reaped, child.pid)
        assert h.events.of(Exited) == []
        assert "the worker is taken to be alive" in caplog.text

    def test_a_request_is_not_refused_as_from_a_gone_process_when_proc_cannot_be_read(
        self, make_server, spawn, monkeypatch
    ):
        import timer_watchdog._process as process

        monkeypatch.setattr(process, "_warned_no_pidfd", set())
        h = make_server(start=False)
        child = spawn()
        with (
            no_file_descriptor_left(),
            pytest.raises(OSError, match="Too many open files") as raised,
        ):
            h.server.register_timers([child.request(after=60.0)])
        assert raised.value.errno == errno.EMFILE
        assert h.events.of(Rejected) == []
        h.server.register_timers([child.request(after=60.0)])  # /proc is readable again
        assert h.server.stats().timers == 1
