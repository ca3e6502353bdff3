"""``timer-watchdog serve``: a long-running foreground server on a named path."""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

import msgspec

from ._cli import CommandError, Options
from ._handlers import handling
from ._metrics import Exporter
from ._run import finish_reaps
from ._sdnotify import Notifier, Supervisor
from ._summary import format_summary, signal_name
from ._transports import load
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
    factory = load(args.transport)
    try:
        transport = factory(args.path)
    except OSError as exc:
        raise CommandError(f"cannot serve --path {args.path}: {exc}") from None
    started = time.monotonic()
    stop = Wakeup()  # set by a signal handler: never a lock (see _wakeup)
    received: list[int] = []
    problem: str | None = None
    try:
        server = transport.server(max_interval=args.max_interval, policy=options.policy)
        unsubscribe = server.subscribe(options.log)
        # Metrics and systemd: from before the start to after the stop, with
        # one idea of a stalled loop for /healthz and the watchdog pings.
        supervisor = Supervisor(
            Notifier.from_environment(), server, lambda: f"serving {transport.path}"
        )
        exporter = Exporter(
            server,
            address=args.metrics,
            path=args.metrics_file,
            stall_after=supervisor.stall_after,
        )

        def on_stop_signal(signum: int, frame: FrameType | None) -> None:
            received.append(signum)
            stop.set()

        with handling(STOP_SIGNALS, on_stop_signal):
            server.start()
            exporter.start(options.log.note)
            options.log.note(f"serving {transport.path} (pid {os.getpid()}); stop with SIGTERM")
            supervisor.ready()
            try:
                while not stop.wait(CHECK_INTERVAL):
                    problem = transport.problem()
                    if problem is not None:
                        break
                supervisor.stopping(problem or signal_name(received[0]))
                finish_reaps(server, STOP_DRAIN)
            finally:
                supervisor.stopping("error")  # does nothing when STOPPING=1 was sent above
                server.stop()
                unsubscribe()
                exporter.close()
        stats = server.stats()
    finally:
        stop.close()
        transport.close()
    if problem is not None:
        status, stopped = EXIT_BROKEN, problem
    else:
        status, stopped = EXIT_STOPPED, f"stopped by {signal_name(received[0])}"
    summary = options.log.summary(
        stopped=stopped, exit_status=status, seconds=time.monotonic() - started, stats=stats
    )
    if args.json:
        options.log.write(msgspec.json.encode(summary).decode())
    else:
        options.log.write(format_summary(summary))
    return status
