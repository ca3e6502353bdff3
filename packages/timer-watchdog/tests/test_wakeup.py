"""Wakeup: a flag that signal handlers set, under a storm of real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from timer_watchdog._wakeup import Wakeup

#: Bound on the storm script; only reached if the waiter wedged.
BOUND = 60.0

STORM = textwrap.dedent(
    """
    import os, signal, sys
    from timer_watchdog._wakeup import Wakeup

    wake = Wakeup()
    handled = 0

    def on_signal(signum, frame):
        global handled
        handled += 1
        wake.set()

    signal.signal(signal.SIGUSR1, on_signal)
    me = os.getpid()
    sender = os.fork()
    if sender == 0:
        for _ in range(200_000):
            os.kill(me, signal.SIGUSR1)
        os._exit(0)
    # The waiter's loop, as tight as it gets: the handler lands everywhere in it.
    done = False
    while not done:
        for _ in range(1000):
            wake.clear()
            wake.wait(0.0001)
        done = os.waitpid(sender, os.WNOHANG) != (0, 0)
    wake.close()
    print(handled)
    """
)


@pytest.mark.slow
def test_a_storm_of_signals_setting_it_never_wedges_the_waiter():
    # With threading.Event in its place, this script wedged or died in about one run
    # of four on this machine (the handler, re-entered, waits for the lock it holds).
    result = subprocess.run(
        [sys.executable, "-c", STORM], capture_output=True, text=True, timeout=BOUND, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0


def test_set_wait_clear():
    wake = Wakeup()
    try:
        assert not wake.is_set()
        assert not wake.wait(0)
        wake.set()
        wake.set()
        assert wake.is_set()
        assert wake.wait(5.0)
        wake.clear()
        assert not wake.is_set()
    finally:
        wake.close()


def test_many_sets_never_block():
    wake = Wakeup()
    try:
        for _ in range(200_000):  # far more than a pipe holds
            wake.set()
        assert wake.is_set()
        wake.clear()
        assert not wake.is_set()
    finally:
        wake.close()


def test_set_after_close_writes_nowhere():
    wake = Wakeup()
    wake.close()
    read, write = os.pipe()  # may reuse the closed fds' numbers
    try:
        wake.set()
        os.set_blocking(read, False)
        try:
            data = os.read(read, 1)
        except BlockingIOError:
            data = b""
        assert data == b""
    finally:
        os.close(read)
        os.close(write)


def test_handler_and_waiter_in_this_process():
    wake = Wakeup()
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: wake.set())
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert wake.wait(30.0)
    finally:
        signal.signal(signal.SIGUSR2, previous)
        wake.close()
