"""The ``timer-watchdog`` command: parse the arguments, check them, and run ``run`` or ``serve``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, NoReturn

from timer_api import check_stack_directory

from .__about__ import __version__
from ._policy import WatchdogPolicy
from ._progress import add_options as add_progress_options
from ._summary import EventLog
from ._transports import ENTRY_POINT_GROUP, TransportError, available

__all__ = ["USAGE_ERROR", "CommandError", "Options", "fail", "main"]

#: Exit status for bad arguments and unusable paths.
USAGE_ERROR = 2

PROG = "timer-watchdog"

_DESCRIPTION = """\
Kill the workers of a job whose timers expire, and show where they were stuck.
Workers arm timers with timer_api.expires(); this command is the server they talk to."""

_EPILOG = f"""\
examples:
  {PROG} run --stacks ./stacks -- python train.py
  {PROG} serve --path /run/train/timer.pipe --events /var/log/timer-events.jsonl

run '{PROG} run --help' or '{PROG} serve --help' for the options of each."""

_RUN_EPILOG = f"""\
COMMAND runs in its own process group with TORCHELASTIC_TIMER_FILE and
TIMER_WATCHDOG_PIPE naming a private pipe; any process it starts, at any depth,
can arm timers there; only those processes (COMMAND's descendants, orphans
included) can be signalled. SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to
COMMAND's group. Processes of the job still holding timers when COMMAND exits
are policed until they release them, exit or are killed.
Exit status: COMMAND's (128 + N if a signal N ended it), 2 for bad arguments,
127 if COMMAND cannot be found, 126 if it cannot be run.

examples:
  {PROG} run -- python train.py
  {PROG} run --stacks ./stacks --grace 10 --signal SIGTERM -- torchrun train.py
  {PROG} run --events - --json -- ./job.sh
  {PROG} run --progress 'step \\d+' --stall 10m --startup 30m -- ./train.sh"""

_SERVE_EPILOG = f"""\
Runs in the foreground and logs to stderr until SIGTERM or SIGINT. Workers find
the pipe through TORCHELASTIC_TIMER_FILE (export it to them yourself).
Exit status: 0 when stopped by SIGTERM or SIGINT, 1 when the pipe was removed
or replaced under it, 2 for bad arguments or an unusable path.

examples:
  {PROG} serve --path /run/train/timer.pipe
  {PROG} serve --path /run/train/timer.pipe --grace 30 --signal TERM --events -"""


class CommandError(Exception):
    """Raise for a bad argument, an unusable path or a COMMAND that cannot be started.

    Printed as one error line (a JSON object with ``--json``); ``status`` is the exit
    status (2 for bad arguments, 127/126 for a COMMAND not found/not executable).
    """

    def __init__(self, message: str, status: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.status = status


def fail(prog: str, message: str, status: int, *, as_json: bool) -> NoReturn:
    """Print ``prog: error: message`` (or its JSON object) on stderr and exit with ``status``.

    Every error of the command goes through here, so that each reads the same way:
    ``timer-watchdog run: error: ...`` (``serve``, or no command name, alike).
    """
    if as_json:
        line = json.dumps(
            {"log": "error", "command": prog, "message": message, "exit_status": status}
        )
    else:
        line = f"{prog}: error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    raise SystemExit(status)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (or one JSON object) and exit status 2."""

    def __init__(self, *args: Any, as_json: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.as_json = as_json

    def error(self, message: str) -> NoReturn:
        if not self.as_json:
            message = f"{message} (see {self.prog} --help)"
        fail(self.prog, message, USAGE_ERROR, as_json=self.as_json)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number of seconds > 0, got 0")
    return value


def parse_signal(text: str) -> int:
    """Turn ``SIGTERM``, ``TERM``, ``term`` or ``15`` into a signal number."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise argparse.ArgumentTypeError(f"not a signal name or number: {text!r}")


def _common_options(as_json: bool) -> _Parser:
    common = _Parser(add_help=False, as_json=as_json)
    group = common.add_argument_group("watchdog options")
    group.add_argument(
        "--max-interval",
        type=_interval,
        default=60.0,
        metavar="SECONDS",
        help="longest single wait of the server's loop (default 60); deadlines are met "
        "on time whatever it is; e.g. --max-interval 5",
    )
    group.add_argument(
        "--grace",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="send the first signal, then SIGKILL if the worker still lives after SECONDS "
        "(default 0: the first signal is the only one); e.g. --grace 10",
    )
    group.add_argument(
        "--signal",
        type=parse_signal,
        default=int(signal.SIGKILL),
        metavar="NAME",
        help="the first signal for an expired worker, by name or number (default SIGKILL); "
        "a timer whose request names its own signal keeps it; e.g. --signal SIGTERM",
    )
    group.add_argument(
        "--force-signal",
        action="store_true",
        help="apply --signal and --grace to every expired timer, even one whose request "
        "names its own signal or asks only to be reported; e.g. --signal TERM --force-signal",
    )
    group.add_argument(
        "--observe-only",
        action="store_true",
        help="report expired timers but signal nothing; e.g. to try out timeouts",
    )
    group.add_argument(
        "--events",
        metavar="FILE",
        help="append every event to FILE as one JSON object per line ('-' for stdout); "
        "e.g. --events events.jsonl",
    )
    group.add_argument(
        "--stacks",
        metavar="DIR",
        help="dump a hung worker's Python stacks into DIR before the kill ('run' uses a "
        "directory of its own inside DIR); workers started under 'run' need no code "
        "change; e.g. --stacks ./stacks",
    )
    group.add_argument(
        "--py-spy",
        action="store_true",
        help="also take the stack with py-spy, from outside the worker (no handler needed), "
        "if py-spy is installed; e.g. --stacks ./stacks --py-spy",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print log lines and the summary as JSON objects, one per line, on stderr",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log every timer armed and released",
    )
    group.add_argument(
        "--transport",
        default="pipe",
        metavar="NAME",
        help=f"how workers reach the server (default pipe; installed: "
        f"{', '.join(available()) or 'none'}; packages add more through the "
        f"{ENTRY_POINT_GROUP!r} entry points)",
    )
    return common


def build_parser(*, as_json: bool = False) -> argparse.ArgumentParser:
    """Return the parser of the whole command (its errors in JSON with ``as_json``)."""
    parser = _Parser(
        as_json=as_json,
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command_name", metavar="{run,serve}", required=True)
    common = _common_options(as_json)
    run = commands.add_parser(
        "run",
        as_json=as_json,
        parents=[common],
        usage=f"{PROG} run [options] -- COMMAND [ARGS...]",
        help="run COMMAND under a private watchdog, then print a summary",
        description="Run COMMAND under a private watchdog, then print a summary.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _metrics_options(run, http=False)
    add_progress_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the job to run, after '--'")
    serve = commands.add_parser(
        "serve",
        as_json=as_json,
        parents=[common],
        help="serve a named pipe in the foreground (for systemd or a container)",
        description="Serve the named pipe PIPE in the foreground until SIGTERM.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--path",
        required=True,
        metavar="PIPE",
        help="the pipe to create and serve; its directory must exist; "
        "e.g. --path /run/train/timer.pipe",
    )
    _metrics_options(serve, http=True)
    return parser


def _address(text: str) -> tuple[str, int]:
    from ._metrics import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _metrics_options(parser: argparse.ArgumentParser, *, http: bool) -> None:
    """Add the Prometheus metrics options (``--metrics`` only where ``http``)."""
    group = parser.add_argument_group("metrics options")
    if http:
        group.add_argument(
            "--metrics",
            type=_address,
            metavar="HOST:PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics, and /healthz "
            "(200 while the engine loop is alive, else 503); port 0 picks a free one; "
            "e.g. --metrics 127.0.0.1:9464",
        )
    group.add_argument(
        "--metrics-file",
        metavar="FILE",
        help="write Prometheus metrics to FILE every few seconds and at exit, replaced "
        "atomically (for node_exporter's textfile collector); "
        "e.g. --metrics-file /var/lib/node_exporter/timer.prom",
    )


class Options:
    """The checked arguments, with the files they name opened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stacks_dir = _stacks_dir(args.stacks)
        try:
            self.policy = WatchdogPolicy(
                signal=args.signal,
                grace=args.grace,
                force_signal=args.force_signal,
                observe_only=args.observe_only,
                stacks_dir=self.stacks_dir,
                py_spy=args.py_spy,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.events = _open_events(args.events)
        self.log = EventLog(
            log=sys.stderr, events=self.events, as_json=args.json, verbose=args.verbose
        )

    def close(self) -> None:
        """Close the events file (never stdout)."""
        if self.events is not None and self.events is not sys.stdout.buffer:
            self.events.close()


def _stacks_dir(path: str | None) -> str | None:
    if path is None:
        return None
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot use --stacks {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandError(f"cannot use --stacks {path}: not writable")
    try:
        check_stack_directory(path)
    except OSError as exc:
        raise CommandError(f"cannot use --stacks {path}: {exc}") from None
    return path


def _open_events(path: str | None) -> IO[bytes] | None:
    if path is None:
        return None
    if path == "-":
        return sys.stdout.buffer
    try:
        return open(path, "ab")
    except OSError as exc:
        raise CommandError(f"cannot write --events {path}: {exc.strerror}") from None


def _wants_json(argv: Sequence[str]) -> bool:
    """Tell whether ``--json`` is among the options (not in COMMAND, after ``--``)."""
    options = list(argv)
    if "--" in options:
        options = options[: options.index("--")]
    return "--json" in options


class _EchoFilter(logging.Filter):
    """Drop the engine's log lines that repeat an event, which the command prints itself."""

    #: The messages of the engine's log lines that an event line already tells.
    ECHOES = ("rejected timer request", "worker %d held ", "worker %d exited holding")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.ECHOES))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"log": record.levelname.lower(), "message": record.getMessage()})


@contextlib.contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Send the packages' log records to stderr while the command runs, then restore logging."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if args.json else logging.Formatter(f"{PROG}: %(message)s")
    )
    handler.addFilter(_EchoFilter())
    saved = []
    for name in ("timer_watchdog", "timer_api", "timer_file", "timer_queue_mp"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
        logger.propagate = False
    # The engine's reaping log lines repeat events, which the command prints itself.
    echo = logging.getLogger("timer_watchdog.reaping")
    saved.append((echo, echo.level, echo.propagate))
    echo.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return its exit status."""
    from ._metrics import MetricsError
    from ._run import run
    from ._serve import serve

    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(argv)
    parser = build_parser(as_json=as_json)
    args = parser.parse_args(argv)
    prog = f"{PROG} {args.command_name}"
    if args.command_name == "run":
        command = list(args.command)
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            fail(
                prog,
                f"a COMMAND is needed, after '--' (see {prog} --help)",
                USAGE_ERROR,
                as_json=as_json,
            )
        args.command = command
    with _logging_to_stderr(args):
        try:
            options = Options(args)
        except CommandError as exc:
            fail(prog, str(exc), exc.status, as_json=as_json)
        try:
            return run(options) if args.command_name == "run" else serve(options)
        except CommandError as exc:
            fail(prog, str(exc), exc.status, as_json=as_json)
        except (TransportError, MetricsError) as exc:
            fail(prog, str(exc), USAGE_ERROR, as_json=as_json)
        finally:
            options.close()
