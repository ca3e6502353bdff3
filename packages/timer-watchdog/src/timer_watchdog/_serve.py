"""``timer-watchdog serve``: a long-running foreground server on a named path."""

from __future__ import annotations

import os
import signal
from types import FrameType

from timer_api import signal_name

from ._fdlimit import raise_open_files_limit
from ._handlers import handling
from ._options import Options
from ._sdnotify import Notifier, Supervisor
from ._session import Session, finish_reaps
from ._wakeup import Wakeup

__all__ = ["EXIT_BROKEN", "EXIT_STOPPED", "STOP_SIGNALS", "serve"]

#: Signals that stop the server cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Exit status after a stop signal.
EXIT_STOPPED = 0
#: Exit status when the endpoint was removed or replaced, so that workers could no longer reach it.
EXIT_BROKEN = 1
#: Longest wait, once asked to stop, for reaps under way to be confirmed.
STOP_DRAIN = 1.0
#: Seconds between two checks that the endpoint is still in place.
CHECK_INTERVAL = 1.0


def serve(options: Options) -> int:
    """Serve ``options.args.path`` until a stop signal or a broken endpoint; return the status."""
    args = options.args
    raise_open_files_limit()  # one pidfd per worker
    stop = Wakeup()  # set by a signal handler: never a lock (see _wakeup)
    received: list[int] = []
    problem: str | None = None

    def on_stop_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    with (
        stop,
        Session(
            options, args.path, options.policy, endpoint_error=f"cannot serve --path {args.path}"
        ) as session,
    ):
        transport = session.transport
        # Metrics and systemd: from before the start to after the stop, with
        # one idea of a stalled loop for /healthz and the watchdog pings.
        supervisor = Supervisor(
            Notifier.from_environment(), session.server, lambda: f"serving {transport.path}"
        )
        with (
            handling(STOP_SIGNALS, on_stop_signal),
            session.running(
                address=args.metrics,
                stall_after=supervisor.stall_after,
                # Does nothing when STOPPING=1 was sent already.
                on_stop=lambda: supervisor.stopping("error"),
            ) as server,
        ):
            options.log.note(f"serving {transport.path} (pid {os.getpid()}); stop with SIGTERM")
            supervisor.ready()
            while not stop.wait(CHECK_INTERVAL):
                problem = transport.problem()
                if problem is not None:
                    break
            supervisor.stopping(problem or signal_name(received[0]))
            finish_reaps(server, STOP_DRAIN)
    if problem is not None:
        return session.report(stopped=problem, exit_status=EXIT_BROKEN)
    return session.report(
        stopped=f"stopped by {signal_name(received[0])}", exit_status=EXIT_STOPPED
    )
