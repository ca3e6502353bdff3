"""Stack forensics: parse real faulthandler dumps; a reaped event names where the worker hung."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from timer_api import DEFAULT_STACK_SIGNAL, stack_dump_path
from timer_watchdog import (
    Frame,
    Reaped,
    Signalled,
    WatchdogPolicy,
)
from timer_watchdog._forensics import PySpy, parse_faulthandler, parse_py_spy

needs_py_spy = pytest.mark.skipif(shutil.which("py-spy") is None, reason="py-spy is not installed")

#: A child whose worker thread hangs in a function with a recognizable name; it prints
#: that thread's ident. With argv[1] (a directory) it registers faulthandler for dumps,
#: chained to the previous handler if argv[2] is "chain".
HUNG_WORKER = """
import faulthandler
from timer_api import DEFAULT_STACK_SIGNAL, process_start_time, stack_dump_path

if len(sys.argv) > 1:
    path = stack_dump_path(sys.argv[1], os.getpid(), process_start_time(os.getpid()))
    faulthandler.register(
        DEFAULT_STACK_SIGNAL,
        file=open(path, "w"),
        all_threads=True,
        chain=sys.argv[2:] == ["chain"],
    )

def stuck_in_recognizable_function():
    while True:
        time.sleep(0.05)

def main_thread_waits_elsewhere():
    while True:
        time.sleep(0.05)

worker = threading.Thread(target=stuck_in_recognizable_function, daemon=True)
worker.start()
print(worker.ident, flush=True)
main_thread_waits_elsewhere()
"""

DUMP_TWO_THREADS = """
import faulthandler

def helper_thread_hangs_here():
    time.sleep(30)

def dumping_here():
    faulthandler.dump_traceback(sys.stdout, all_threads=True)

thread = threading.Thread(target=helper_thread_hangs_here, daemon=True)
thread.start()
time.sleep(0.1)
print(thread.ident, flush=True)
dumping_here()
"""


@pytest.fixture(scope="module")
def real_dump() -> tuple[int, str]:
    """Return a helper thread's ident and a real all-threads faulthandler dump."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, threading, time\n" + textwrap.dedent(DUMP_TWO_THREADS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    ident, _, dump = out.partition("\n")
    return int(ident), dump


class TestParseFaulthandler:
    def test_finds_the_innermost_frame_of_the_given_thread(self, real_dump):
        ident, dump = real_dump
        frame = parse_faulthandler(dump, ident)
        assert frame is not None
        assert frame.function == "helper_thread_hangs_here"
        assert (frame.file, frame.line) == ("<string>", 6)

    def test_without_a_thread_uses_the_current_thread(self, real_dump):
        _, dump = real_dump
        frame = parse_faulthandler(dump, None)
        assert frame is not None
        assert frame.function == "dumping_here"

    @pytest.mark.parametrize(
        ("text", "thread_id"),
        [
            ("", None),
            ("", 5),
            ("garbage\nmore garbage\n", None),
            ("Thread 0x1 (most recent call first):\n", 1),
        ],
    )
    def test_returns_none_when_there_is_no_frame(self, text, thread_id):
        assert parse_faulthandler(text, thread_id) is None

    def test_unknown_thread_gives_none(self, real_dump):
        _, dump = real_dump
        assert parse_faulthandler(dump, 12345) is None

    def test_single_thread_dump(self):
        text = 'Stack (most recent call first):\n  File "/w.py", line 3 in spin\n  File "/w.py", line 9 in <module>\n'
        assert parse_faulthandler(text, None) == Frame("/w.py", 3, "spin")


class TestParsePySpy:
    TEXT = (
        "Process 4242: python train.py\n"
        "Python v3.12.1 (/usr/bin/python3.12)\n\n"
        'Thread 0x7F00AA (idle): "MainThread"\n'
        "    wait (threading.py:331)\n"
        "    main (train.py:40)\n"
        'Thread 0x7F00BB (active): "loader"\n'
        "    read_shard (loader.py:12)\n"
        "    run (threading.py:1010)\n"
    )

    @pytest.mark.parametrize(
        ("thread_id", "expected"),
        [
            (0x7F00BB, Frame("loader.py", 12, "read_shard")),
            (0x7F00AA, Frame("threading.py", 331, "wait")),
            (None, Frame("threading.py", 331, "wait")),
            (0x1, None),
        ],
    )
    def test_innermost_frame_by_thread(self, thread_id, expected):
        assert parse_py_spy(self.TEXT, thread_id) == expected

    JSON = """[
      {"pid": 7, "thread_id": 11, "thread_name": "loader", "os_thread_id": 8, "active": true,
       "owns_gil": false, "frames": [
         {"name": "read_shard", "filename": "/src/loader.py", "line": 12, "module": null},
         {"name": "run", "filename": "/lib/threading.py", "line": 1010, "module": null}]},
      {"pid": 7, "thread_id": 22, "thread_name": "MainThread", "os_thread_id": 7,
       "active": false, "owns_gil": false, "frames": []}
    ]"""

    @pytest.mark.parametrize(
        ("thread_id", "expected"),
        [
            (11, Frame("/src/loader.py", 12, "read_shard")),
            (None, Frame("/src/loader.py", 12, "read_shard")),
            (22, None),  # a thread with no Python frames
            (8, None),  # a native id is not a Python ident
        ],
    )
    def test_json_output_by_python_ident(self, thread_id, expected):
        assert parse_py_spy(self.JSON, thread_id) == expected

    @pytest.mark.parametrize("text", ["[", "[{}]", '[{"thread_id": "x"}]', "[1, 2]"])
    def test_malformed_json_gives_none(self, text):
        assert parse_py_spy(text, None) is None


@needs_py_spy
class TestRealPySpy:
    def test_json_dump_finds_the_thread_by_its_python_ident(self, spawn):
        child = spawn(HUNG_WORKER)
        ident = int(child.ready)
        out = subprocess.run(
            ["py-spy", "dump", "--json", "--pid", str(child.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        frame = parse_py_spy(out, ident)
        assert frame is not None
        assert (frame.file, frame.function) == ("<string>", "stuck_in_recognizable_function")

    def test_reap_with_py_spy_alone_names_the_hung_function(self, make_server, spawn, tmp_path):
        # The worker installs no dump handler: only py-spy can say where it is.
        h = make_server(
            policy=WatchdogPolicy(stacks_dir=str(tmp_path), py_spy=True, stack_wait=30.0)
        )
        child = spawn(HUNG_WORKER)
        ident = int(child.ready)
        h.put(child.request(after=0.1, thread_id=ident))
        assert child.wait() == -signal.SIGKILL
        reaped = h.events.wait_for(Reaped, child.pid)[0]
        expected = stack_dump_path(str(tmp_path), child.pid, child.start_time) + ".py-spy"
        assert reaped.stack_path == expected
        assert reaped.frame is not None
        assert reaped.frame.function == "stuck_in_recognizable_function"
        with open(expected) as dump:
            text = dump.read()
        assert f"Thread 0x{ident:016x} (native " in text
        assert "main_thread_waits_elsewhere (<string>:" in text
        assert parse_py_spy(text, ident) == reaped.frame
        assert os.listdir(tmp_path) == [os.path.basename(expected)]

    def test_unwritable_dump_path_is_logged_and_leaves_nothing(self, spawn, tmp_path, caplog):
        caplog.set_level(logging.WARNING, logger="timer_watchdog")
        child = spawn(HUNG_WORKER)
        # A directory in the way: the dump is written, then cannot replace it.
        (tmp_path / "dump.py-spy").mkdir()
        (tmp_path / "dump.py-spy" / "keep").touch()
        thread = PySpy().dump(child.pid, str(tmp_path / "dump.py-spy"), timeout=60)
        assert thread is not None
        thread.join(90)
        assert not thread.is_alive()
        assert os.listdir(tmp_path) == ["dump.py-spy"]
        failures = [
            r.getMessage() for r in caplog.records if "py-spy dump of pid" in r.getMessage()
        ]
        assert len(failures) == 1

    def test_failed_dump_is_logged_and_writes_no_file(self, tmp_path, caplog):
        caplog.set_level(logging.WARNING, logger="timer_watchdog")
        not_python = subprocess.Popen(["sleep", "60"])
        try:
            out_path = str(tmp_path / "dump.py-spy")
            thread = PySpy().dump(not_python.pid, out_path, timeout=60)
            assert thread is not None
            thread.join(90)
            assert not thread.is_alive()
        finally:
            not_python.kill()
            not_python.wait(20)
        assert os.listdir(tmp_path) == []
        failures = [
            r.getMessage() for r in caplog.records if "py-spy dump of pid" in r.getMessage()
        ]
        assert len(failures) == 1
        assert failures[0].startswith(f"py-spy dump of pid {not_python.pid} failed: ")


class TestStackBeforeKill:
    def test_reaped_event_names_the_hung_function_and_the_dump(self, make_server, spawn, tmp_path):
        h = make_server(policy=WatchdogPolicy(stacks_dir=str(tmp_path), stack_wait=10.0))
        child = spawn(HUNG_WORKER, str(tmp_path))
        thread_id = int(child.ready)
        h.put(child.request(after=0.1, thread_id=thread_id))
        assert child.wait() == -signal.SIGKILL
        reaped = h.events.wait_for(Reaped, child.pid)[0]
        expected = stack_dump_path(str(tmp_path), child.pid, child.start_time)
        assert reaped.stack_path == expected
        assert reaped.frame is not None
        assert reaped.frame.function == "stuck_in_recognizable_function"
        with open(expected) as dump:
            text = dump.read()
        assert "main_thread_waits_elsewhere" in text

    def test_dump_chained_to_the_default_action_ends_the_worker_and_is_reported(
        self, make_server, spawn, tmp_path
    ):
        # chain=True with no earlier handler runs SIG_DFL after the dump: the worker dies.
        h = make_server(policy=WatchdogPolicy(stacks_dir=str(tmp_path), stack_wait=10.0))
        child = spawn(HUNG_WORKER, str(tmp_path), "chain")
        h.put(child.request(after=0.1, thread_id=int(child.ready)))
        assert child.wait() == -DEFAULT_STACK_SIGNAL
        reaped = h.events.wait_for(Reaped, child.pid)[0]
        assert (reaped.signal, reaped.detail) == (
            DEFAULT_STACK_SIGNAL,
            "died on the stack-dump signal",
        )
        assert reaped.frame is not None
        assert reaped.frame.function == "stuck_in_recognizable_function"
        assert h.events.of(Signalled) == []

    def test_worker_that_does_not_catch_the_stack_signal_is_not_sent_it(
        self, make_server, spawn, tmp_path
    ):
        # The default action of the real-time dump signal would kill the worker with it.
        h = make_server(policy=WatchdogPolicy(stacks_dir=str(tmp_path), stack_wait=10.0))
        child = spawn(HUNG_WORKER)
        h.put(child.request(after=0.1))
        assert child.wait() == -signal.SIGKILL
        reaped = h.events.wait_for(Reaped, child.pid)[0]
        assert (reaped.stack_path, reaped.frame) == (None, None)

    def test_absent_py_spy_is_reported_once_and_the_reap_goes_on(
        self, make_server, spawn, tmp_path, monkeypatch, caplog
    ):
        monkeypatch.setenv("PATH", str(tmp_path))
        caplog.set_level(logging.WARNING, logger="timer_watchdog")
        h = make_server(policy=WatchdogPolicy(py_spy=True, stack_wait=10.0))
        children = [spawn(HUNG_WORKER), spawn(HUNG_WORKER)]
        for child in children:
            h.put(child.request(after=0.1))
            assert child.wait() == -signal.SIGKILL
            h.events.wait_for(Reaped, child.pid)
        notes = [r for r in caplog.records if "py-spy is not installed" in r.getMessage()]
        assert len(notes) == 1
