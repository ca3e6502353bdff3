"""process_start_time and process_stat: read from /proc for real processes, None once gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from timer_api import process_start_time, process_stat

#: A child that prints "up", renames itself to the name it reads, prints "named", then waits.
CHILD = """
import sys
print("up", flush=True)
name = sys.stdin.readline().rstrip("\\n")
with open("/proc/self/comm", "w") as comm:
    comm.write(name)
print("named", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    yield proc
    proc.kill()
    proc.communicate(timeout=20)


def uptime_ticks() -> float:
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) * os.sysconf("SC_CLK_TCK")


class TestLiveProcess:
    def test_self_is_a_tick_count_since_boot(self):
        start = process_start_time(os.getpid())
        assert isinstance(start, int)
        assert 0 < start <= uptime_ticks()

    def test_self_is_stable(self):
        assert process_start_time(os.getpid()) == process_start_time(os.getpid())

    def test_child_started_after_us(self, child):
        mine = process_start_time(os.getpid())
        theirs = process_start_time(child.pid)
        assert mine is not None
        assert theirs is not None
        assert mine <= theirs <= uptime_ticks()

    def test_parent_started_before_us(self):
        parent = process_start_time(os.getppid())
        mine = process_start_time(os.getpid())
        assert parent is not None
        assert mine is not None
        assert parent <= mine

    @pytest.mark.parametrize(
        "name", ["a) b) c", ") 1 2 3 4 5 ", "((( ", "x)", "many words here", "paren ) (x) "]
    )
    def test_name_with_parens_and_spaces_still_parses(self, child, name):
        before = process_start_time(child.pid)
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(name + "\n")
        child.stdin.flush()
        assert child.stdout.readline() == "named\n"
        with open(f"/proc/{child.pid}/comm") as comm:
            assert comm.read().rstrip("\n") == name[:15]
        assert process_start_time(child.pid) == before


class TestGoneProcess:
    def test_exited_and_reaped_child(self):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        assert proc.wait(timeout=20) == 0
        assert process_start_time(proc.pid) is None

    @pytest.mark.parametrize(
        "pid",
        [0, -1, -os.getpid(), 2**22 + 1, 2**31 - 1],
        ids=["zero", "minus_one", "minus_own_pid", "above_pid_max", "int_max"],
    )
    def test_pid_that_names_no_process(self, pid):
        assert process_start_time(pid) is None


class TestProcessStat:
    def test_self_is_running_with_its_start_time(self):
        assert process_stat(os.getpid()) == (
            "R",
            process_start_time(os.getpid()),
            os.getppid(),
            os.getpgrp(),
        )

    def test_sleeping_child(self, child):
        # After printing "up" the child still runs for a moment before it blocks reading its
        # stdin, so wait (bounded) for it to be seen asleep.
        deadline = time.monotonic() + 20
        while process_stat(child.pid)[0] != "S" and time.monotonic() < deadline:
            time.sleep(0.01)
        stat = process_stat(child.pid)
        assert stat.state == "S"
        assert stat.start_time == process_start_time(child.pid)
        assert (stat.ppid, stat.pgid) == (os.getpid(), os.getpgid(child.pid))

    def test_unreaped_child_is_a_zombie(self):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        try:
            deadline = time.monotonic() + 20
            while process_stat(proc.pid)[0] != "Z" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert process_stat(proc.pid)[0] == "Z"
        finally:
            proc.wait(timeout=20)
        assert process_stat(proc.pid) is None

    @pytest.mark.parametrize("pid", [0, -1, 2**31 - 1])
    def test_pid_that_names_no_process(self, pid):
        assert process_stat(pid) is None
