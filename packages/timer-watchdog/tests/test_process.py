"""Reading /proc and signalling only a proven worker, against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from timer_watchdog._process import ProcessGone, Procfs, ProtectedProcess, Target, is_protected

HANDLES_USR1 = """
signal.signal(signal.SIGUSR1, lambda *_: None)
print("ready", flush=True)
time.sleep(60)
"""


class TestProcfs:
    def test_stat_of_a_live_child(self, spawn):
        child = spawn()
        state, start_time = Procfs().stat(child.pid)
        assert start_time == child.start_time
        assert state in "RS"

    def test_stat_of_a_missing_pid_is_none(self):
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        assert Procfs().stat(gone.pid) is None
        assert Procfs().status(gone.pid) is None

    def test_status_reports_uids_and_caught_signals(self, spawn):
        child = spawn(HANDLES_USR1)
        status = Procfs().status(child.pid)
        assert status is not None
        assert status.uids[:2] == (os.getuid(), os.geteuid())
        assert Procfs().same_user(status)
        assert Procfs().catches(child.pid, signal.SIGUSR1)
        assert not Procfs().catches(child.pid, signal.SIGUSR2)

    def test_zombie_is_dead(self, spawn, wait_until):
        child = spawn()
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: Procfs().stat(child.pid)[0] == "Z")
        assert Procfs().liveness(child.pid, child.start_time) is None

    def test_other_start_time_is_dead(self, spawn):
        child = spawn()
        assert Procfs().liveness(child.pid, child.start_time) in ("R", "S")
        assert Procfs().liveness(child.pid, child.start_time + 1) is None


class TestTarget:
    @pytest.mark.parametrize(
        "pid",
        [1, 0, -1, os.getpid(), os.getpgrp()],
        ids=["init", "zero", "minus_one", "own_pid", "own_group"],
    )
    def test_protected_pids_are_refused(self, pid):
        assert is_protected(pid)
        with pytest.raises(ProtectedProcess):
            Target(Procfs(), pid, 0)

    def test_sends_through_a_pidfd_and_sees_death(self, spawn, wait_until):
        child = spawn()
        target = Target(Procfs(), child.pid, child.start_time)
        try:
            assert target.pidfd is not None
            assert target.state() in ("R", "S")
            target.send(signal.SIGKILL)
            wait_until(lambda: target.state() is None)
            assert child.wait() == -signal.SIGKILL
            with pytest.raises(ProcessGone):
                target.send(signal.SIGKILL)
        finally:
            target.close()
            target.close()

    def test_wrong_start_time_is_never_opened(self, spawn):
        child = spawn()
        with pytest.raises(ProcessGone, match="another process"):
            Target(Procfs(), child.pid, child.start_time + 1)
        assert child.alive()

    def test_missing_pid_is_gone(self):
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        with pytest.raises(ProcessGone):
            Target(Procfs(), gone.pid, 1)

    def test_fallback_without_pidfd_checks_the_start_time_before_kill(
        self, spawn, monkeypatch, wait_until
    ):
        import timer_watchdog._process as process

        monkeypatch.setattr(process, "_pidfd_open", None)
        child = spawn()
        target = Target(Procfs(), child.pid, child.start_time)
        assert target.pidfd is None
        target.start_time += 1  # as if the pid had been recycled since it was opened
        with pytest.raises(ProcessGone):
            target.send(signal.SIGKILL)
        assert child.alive()
        target.start_time -= 1
        target.send(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
