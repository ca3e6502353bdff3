"""The watchdog of one command (``run`` or ``serve``): endpoint, server, events, metrics, summary.

Both commands go through the same steps, each a method of :class:`Session`::

    with Session(options, endpoint, policy) as session:   # endpoint and server built
        with session.running(address=...) as server:       # events, metrics, server started
            ...                                             # the command's own work
    return session.report(stopped=..., exit_status=...)   # the summary printed

Leaving :meth:`Session.running` stops the server and the metrics and takes the last
counts; leaving the session closes the endpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import msgspec

from ._events import WatchdogStats
from ._export import Exporter
from ._jobreport import JobReporter
from ._metrics import STALL_AFTER
from ._options import CommandError, Options
from ._policy import WatchdogPolicy
from ._server import WatchdogServer
from ._summary import format_summary
from ._transports import Transport, load

__all__ = ["DRAIN_STEP", "Session", "finish_reaps"]

#: Seconds between two looks at the reaps still under way.
DRAIN_STEP = 0.02


def finish_reaps(server: WatchdogServer, limit: float) -> None:
    """Give the workers being reaped up to ``limit`` seconds to be confirmed dead (or reported)."""
    end = time.monotonic() + limit
    while server.stats().reaping and time.monotonic() < end:
        time.sleep(DRAIN_STEP)


class Session:
    """Build the endpoint of ``options.args.transport`` and a server with ``policy`` on it.

    ``endpoint`` is where the endpoint is made (``None``: a new private one);
    ``endpoint_error`` begins the error message when it cannot be made. The server
    is built, not started: see :meth:`running`.
    """

    def __init__(
        self,
        options: Options,
        endpoint: str | None,
        policy: WatchdogPolicy,
        *,
        endpoint_error: str,
    ) -> None:
        self.options = options
        factory = load(options.args.transport)
        try:
            self.transport: Transport = factory(endpoint)
        except OSError as exc:
            raise CommandError(f"{endpoint_error}: {exc}") from None
        self.started = time.monotonic()
        self.stats: WatchdogStats | None = None
        #: Builds the job report from the server's snapshot (see ``WatchdogPolicy.job_snapshot``).
        self.job = JobReporter(host=options.args.host_label, stacks_dir=policy.stacks_dir)
        try:
            self.server = self.transport.server(
                max_interval=options.args.max_interval, policy=policy
            )
        except BaseException:
            self.transport.close()
            raise

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the endpoint; calling it again does nothing."""
        self.transport.close()

    @contextlib.contextmanager
    def running(
        self,
        *,
        address: tuple[str, int] | None = None,
        stall_after: float = STALL_AFTER,
        on_stop: Callable[[], None] | None = None,
    ) -> Iterator[WatchdogServer]:
        """Log the server's events, export its metrics and run it for the block.

        Metrics go to ``address`` (HTTP) and ``--metrics-file``; a loop busy for
        ``stall_after`` seconds counts as stalled. After the block ``on_stop`` is
        called, then the server and the metrics stop and the last counts are kept.
        """
        log = self.options.log
        unsubscribe = self.server.subscribe(log)
        unsubscribe_job = self.server.subscribe(self.job)
        try:
            exporter = Exporter(
                self.server,
                address=address,
                path=self.options.args.metrics_file,
                stall_after=stall_after,
            )
            try:
                self.server.start()
                exporter.start(log.note)
                try:
                    yield self.server
                finally:
                    if on_stop is not None:
                        on_stop()
                    self.server.stop()
            finally:
                exporter.close()
        finally:
            unsubscribe_job()
            unsubscribe()
        self.stats = self.server.stats()

    def report(self, *, stopped: str, exit_status: int, stalled: str | None = None) -> int:
        """Print the summary (a JSON object with ``--json``); return ``exit_status``."""
        assert self.stats is not None, "report() after running()"
        log = self.options.log
        summary = log.summary(
            stopped=stopped,
            exit_status=exit_status,
            seconds=time.monotonic() - self.started,
            stats=self.stats,
            stalled=stalled,
            job=self.job.report,
        )
        report_dir = self.options.args.report_dir
        if report_dir is not None:
            try:
                self.job.write_dir(report_dir)
            except OSError as exc:
                log.note(f"cannot write the job report into --report-dir {report_dir}: {exc}")
        if self.job.path is not None:
            log.note(f"job report: {self.job.path}")
        if self.options.args.json:
            log.write(msgspec.json.encode(summary).decode())
        else:
            log.write(format_summary(summary))
        return exit_status
