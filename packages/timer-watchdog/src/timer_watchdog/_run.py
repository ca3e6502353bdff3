"""``timer-watchdog run``: run a job under a private watchdog and report what it did."""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from types import FrameType

import msgspec

from timer_api import STACK_SIGNAL_ENV, STACKS_DIR_ENV

from ._cli import CommandError, Options
from ._handlers import handling
from ._progress import Watch, progress_options, stall_requests
from ._server import WatchdogServer
from ._summary import EventLog, format_summary
from ._transports import load

__all__ = ["FORWARDED_SIGNALS", "exit_status", "finish_reaps", "run"]

logger = logging.getLogger("timer_watchdog")

#: Signals that ``run`` passes on to the job's process group.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Seconds between two looks at the reaps still under way when the job has ended.
DRAIN_STEP = 0.02

#: Exit statuses of a COMMAND that could not be started, as shells use them.
NOT_FOUND, NOT_EXECUTABLE = 127, 126


def exit_status(returncode: int) -> int:
    """Return a shell's exit status for a child's return code: ``128 + N`` for signal N."""
    return 128 - returncode if returncode < 0 else returncode


class _Forwarder:
    """Pass SIGINT and SIGTERM on to the job's process group while it runs."""

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.pgid is None:
            self.pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def started(self, pgid: int) -> None:
        self.pgid = pgid
        for signum in self.pending:
            self(signum, None)
        self.pending.clear()


def _spawn(
    command: list[str], env: dict[str, str], streams: Mapping[str, int]
) -> subprocess.Popen[bytes]:
    """Start ``command`` as the leader of a new process group (``streams``: its stdout/stderr)."""
    stdout, stderr = streams.get("stdout"), streams.get("stderr")
    if sys.version_info >= (3, 11):
        return subprocess.Popen(command, env=env, process_group=0, stdout=stdout, stderr=stderr)
    return subprocess.Popen(  # pragma: no cover
        command, env=env, preexec_fn=os.setpgrp, stdout=stdout, stderr=stderr
    )


def _stop_stalled(log: EventLog, server: WatchdogServer, leader: int, message: str) -> None:
    """Expire a ``stall`` timer of every process of the job now: the engine reaps them all."""
    log.note(f"{message}; stopping the job")
    server.register_timers(stall_requests(leader))
    # The loop may be waiting for up to max_interval: wake it to reap at once.
    server._request_queue.interrupt()


def finish_reaps(server: WatchdogServer, limit: float) -> None:
    """Give the workers being reaped up to ``limit`` seconds to be confirmed dead (or reported)."""
    end = time.monotonic() + limit
    while server.stats().reaping and time.monotonic() < end:
        time.sleep(DRAIN_STEP)


def _remove_unused_dumps(stacks_dir: str) -> None:
    """Remove the empty dump files of workers that were never asked for their stack."""
    for path in glob.glob(os.path.join(stacks_dir, "worker-*.stack")):
        with contextlib.suppress(OSError):
            if os.path.getsize(path) == 0:
                os.unlink(path)


def run(options: Options) -> int:
    """Run ``options.args.command`` under a watchdog on a private endpoint; return the exit status."""
    args = options.args
    command: list[str] = args.command
    try:
        liveness = progress_options(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    factory = load(args.transport)
    try:
        transport = factory(None)
    except OSError as exc:
        raise CommandError(f"cannot create the {args.transport} endpoint: {exc}") from None
    started = time.monotonic()
    try:
        server = transport.server(max_interval=args.max_interval, policy=options.policy)
        unsubscribe = server.subscribe(options.log)
        env = {**os.environ, **transport.environment()}
        if options.stacks_dir is not None:
            env[STACKS_DIR_ENV] = options.stacks_dir
            env[STACK_SIGNAL_ENV] = str(options.policy.stack_signal)
        forwarder = _Forwarder()
        watch = None if liveness is None else Watch(liveness)
        server.start()
        try:
            with handling(FORWARDED_SIGNALS, forwarder):
                try:
                    try:
                        proc = _spawn(command, env, watch.child_streams() if watch else {})
                    except FileNotFoundError:
                        logger.error("%s: command not found", command[0])
                        return NOT_FOUND
                    except PermissionError:
                        logger.error("%s: permission denied", command[0])
                        return NOT_EXECUTABLE
                    forwarder.started(proc.pid)
                    if watch is not None:
                        watch.start(functools.partial(_stop_stalled, options.log, server, proc.pid))
                    status = exit_status(proc.wait())
                finally:
                    if watch is not None:
                        watch.finish()
                policy = options.policy
                finish_reaps(server, policy.grace + policy.kill_timeout + DRAIN_STEP)
        finally:
            server.stop()
            unsubscribe()
        stats = server.stats()
    finally:
        transport.close()
        if options.stacks_dir is not None:
            _remove_unused_dumps(options.stacks_dir)
    summary = options.log.summary(
        stopped="command exited",
        exit_status=status,
        seconds=time.monotonic() - started,
        stats=stats,
        stalled=None if watch is None else watch.stalled,
    )
    if args.json:
        options.log.write(msgspec.json.encode(summary).decode())
    else:
        options.log.write(format_summary(summary))
    return status
