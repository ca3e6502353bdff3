"""``timer-watchdog run``: run a job under a private watchdog and report what it did.

The steps, in order (each a function below, so that options can hook in between):
make ``run`` the job's subreaper, create the endpoint and the server (admitting only
descendants of ``run``), start COMMAND, supervise it until it exits, keep policing
the job's processes that still hold timers, then stop, clean up and print the summary.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time

import msgspec

from timer_api import STACK_SIGNAL_ENV, STACKS_DIR_ENV

from ._fdlimit import raise_open_files_limit
from ._job import Job, become_subreaper
from ._options import CommandError, Options
from ._policy import WatchdogPolicy
from ._progress import Watch, progress_options, stall_requests
from ._server import WatchdogServer
from ._session import DRAIN_STEP, Session, finish_reaps
from ._summary import EventLog

__all__ = ["run"]

logger = logging.getLogger("timer_watchdog")

#: Longest wait, once COMMAND has exited while other processes of the job run on, for
#: the server to read what they wrote before (two rounds of its loop, when it is busy).
SETTLE_LIMIT = 2.0

#: Exit statuses of a COMMAND that could not be started, as shells use them.
NOT_FOUND, NOT_EXECUTABLE = 127, 126


def _job_stacks_dir(stacks_dir: str) -> str:
    """Create this run's own directory for dumps inside ``--stacks DIR`` (mode 0700)."""
    try:
        return tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=stacks_dir)
    except OSError as exc:
        raise CommandError(f"cannot use --stacks {stacks_dir}: {exc.strerror}") from None


def _remove_unused_dumps(job_dir: str) -> None:
    """Remove this run's empty dump files (workers never asked for a stack), then its directory.

    Only ``job_dir`` is touched: it was created by this run, so every file in it is
    one of this job's. The directory stays if a dump was written.
    """
    with contextlib.suppress(OSError):
        for entry in os.scandir(job_dir):
            if (
                entry.name.startswith("worker-")
                and entry.name.endswith(".stack")
                and entry.is_file(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_size == 0
            ):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(job_dir)


def _job_policy(options: Options, stacks_dir: str | None) -> WatchdogPolicy:
    """Return the policy of this run: the options', limited to this run's descendants."""
    return msgspec.structs.replace(
        options.policy, stacks_dir=stacks_dir, descendants_of=os.getpid()
    )


def _holding(server: WatchdogServer) -> bool:
    """Tell whether the server still holds timers, or reaps a worker."""
    stats = server.stats()
    return bool(stats.timers or stats.reaping)


def _settle(job: Job, server: WatchdogServer) -> None:
    """Let the server take in the requests the job wrote before COMMAND exited.

    Two completed rounds of the server's loop read everything already written; the
    wait ends sooner when no process of the job is left, and at :data:`SETTLE_LIMIT`
    (an idle loop may sleep longer than that when nothing is written).
    """
    loops = server.stats().loops
    end = time.monotonic() + SETTLE_LIMIT
    job.wait(
        until=lambda: (
            server.stats().loops >= loops + 2 or not job.lives_on() or time.monotonic() >= end
        )
    )


def _police_outliving(job: Job, server: WatchdogServer, options: Options) -> None:
    """Keep policing the job's processes that still hold timers once COMMAND has exited."""
    _settle(job, server)
    holders = options.log.command_exited(job.pid)
    if not _holding(server):
        return
    if holders:
        listed = ", ".join(f"pid {pid}" for pid in holders)
        options.log.note(
            f"the command exited (status {job.status}) but {len(holders)} process(es) of "
            f"the job still hold timers ({listed}); watching them until they release "
            "them, exit or are killed"
        )
    job.signal_also(holders)
    job.wait(until=lambda: not _holding(server))


def _stop_stalled(log: EventLog, server: WatchdogServer, leader: int, message: str) -> None:
    """Expire a ``stall`` timer of every process of the job now: the engine reaps them all."""
    log.note(f"{message}; stopping the job")
    server.register_timers(stall_requests(leader))
    # The loop may be waiting for up to max_interval: wake it to reap at once.
    server._request_queue.interrupt()


def run(options: Options) -> int:
    """Run ``options.args.command`` under a watchdog on a private endpoint; return the exit status."""
    args = options.args
    try:
        liveness = progress_options(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    problem = become_subreaper()
    if problem is not None:
        options.log.note(
            f"cannot adopt the job's orphans ({problem}): a process whose parent exits "
            "leaves the job, and its requests are rejected as not_in_job"
        )
    job_dir = None if options.stacks_dir is None else _job_stacks_dir(options.stacks_dir)
    try:
        policy = _job_policy(options, job_dir)
        with Session(
            options, None, policy, endpoint_error=f"cannot create the {args.transport} endpoint"
        ) as session:
            env = {**os.environ, **session.transport.environment()}
            if job_dir is not None:
                env[STACKS_DIR_ENV] = job_dir
                env[STACK_SIGNAL_ENV] = str(policy.stack_signal)
            with session.running() as server:
                watch = None if liveness is None else Watch(liveness)
                status = _supervise(options, server, env, watch)
                finish_reaps(server, policy.grace + policy.kill_timeout + DRAIN_STEP)
    finally:
        if job_dir is not None:
            _remove_unused_dumps(job_dir)
    return session.report(
        stopped="command exited",
        exit_status=status,
        stalled=None if watch is None else watch.stalled,
    )


def _supervise(
    options: Options, server: WatchdogServer, env: dict[str, str], watch: Watch | None
) -> int:
    """Start COMMAND, wait for it and the job's processes that outlive it; return its status."""
    command: list[str] = options.args.command
    policy = server.policy
    with Job(command, env, note=options.log.note) as job:
        try:
            try:
                job.start(watch.child_streams() if watch is not None else None)
            except FileNotFoundError:
                raise CommandError(f"{command[0]}: command not found", NOT_FOUND) from None
            except PermissionError:
                raise CommandError(f"{command[0]}: permission denied", NOT_EXECUTABLE) from None
            raise_open_files_limit()  # one pidfd per worker; the job keeps its own limit
            if watch is not None:
                watch.start(functools.partial(_stop_stalled, options.log, server, job.pid))
            job.wait()
            if watch is not None:
                watch.stop_clock()
                if watch.stalled is not None:
                    # The stall's own timers are not holders that outlived COMMAND.
                    finish_reaps(server, policy.grace + policy.kill_timeout + DRAIN_STEP)
            _police_outliving(job, server, options)
        finally:
            if watch is not None:
                watch.finish()
    assert job.status is not None
    if watch is not None and watch.stalled is not None and job.status < 128:
        # COMMAND exited by itself while the stalled job was being stopped (a shell
        # whose child was just killed, say): a stalled job never reports success.
        return 128 + int(policy.signal)
    return job.status
