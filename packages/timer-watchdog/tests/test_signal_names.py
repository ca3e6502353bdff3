"""The engine and the command name a signal the same way: timer_api.signal_name."""

from __future__ import annotations

import logging
import signal

from timer_watchdog import Signalled
from timer_watchdog._summary import describe

NOTICE = int(signal.SIGRTMIN) + 4

#: A child that counts the notices it gets, and sleeps on.
NOTICED = f"""
signal.signal({NOTICE}, lambda *_: None)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_the_engine_log_and_the_event_line_name_a_realtime_signal_alike(make_server, spawn, caplog):
    h = make_server()
    child = spawn(NOTICED)
    with caplog.at_level(logging.WARNING, logger="timer_watchdog.reaping"):
        h.put(child.request(after=0.1, signal=NOTICE))
        signalled = h.events.wait_for(Signalled, child.pid)[0]
    assert signalled.signal == NOTICE
    assert f"sent SIGRTMIN+4 to worker {child.pid}" in caplog.text
    assert describe(signalled) == (
        f"pid {child.pid}: sent SIGRTMIN+4 (a notice: the worker is not killed)"
    )
    assert child.alive()
