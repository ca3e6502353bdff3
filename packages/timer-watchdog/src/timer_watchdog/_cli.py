"""The ``timer-watchdog`` command: build the argument parser and dispatch to a subcommand.

Each subcommand is one ``_add_<name>`` function below, listed in ``_SUBCOMMANDS``: it
adds its parser and sets ``handler``, called with the parsed arguments and returning
the exit status. The subcommands themselves live in their own modules, below this
one; a handler raises :class:`CommandError` for an error the user can fix.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .__about__ import __version__
from ._export import MetricsError
from ._metrics import parse_address
from ._options import (
    PROG,
    USAGE_ERROR,
    CommandError,
    Options,
    interval,
    seconds,
    signal_number,
)
from ._progress import add_options as add_progress_options
from ._report import report
from ._run import run
from ._serve import serve
from ._snapshot import DEFAULT_BUDGET
from ._stderr import logging_to_stderr
from ._transports import ENTRY_POINT_GROUP, TransportError, available

__all__ = ["build_parser", "fail", "main"]

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


def _common_options(as_json: bool) -> _Parser:
    common = _Parser(add_help=False, as_json=as_json)
    group = common.add_argument_group("watchdog options")
    group.add_argument(
        "--max-interval",
        type=interval,
        default=60.0,
        metavar="SECONDS",
        help="longest single wait of the server's loop (default 60); deadlines are met "
        "on time whatever it is; e.g. --max-interval 5",
    )
    group.add_argument(
        "--grace",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="send the first signal, then SIGKILL if the worker still lives after SECONDS "
        "(default 0: the first signal is the only one); e.g. --grace 10",
    )
    group.add_argument(
        "--signal",
        type=signal_number,
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
        "--job-snapshot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="at the first expiry, before any signal, capture every process of the job "
        "(stacks, state, rank labels) and print a job report (default: on for 'run', "
        "off for 'serve')",
    )
    group.add_argument(
        "--snapshot-budget",
        type=seconds,
        default=DEFAULT_BUDGET,
        metavar="SECONDS",
        help=f"longest the job snapshot may hold the first signal (default {DEFAULT_BUDGET:g}); "
        "a process that has not answered by then is marked so; e.g. --snapshot-budget 5",
    )
    group.add_argument(
        "--report-dir",
        metavar="DIR",
        help="at exit, write this host's job report and events into DIR (a shared "
        "filesystem), under file names carrying the host name; merge them with "
        f"'{PROG} report DIR'",
    )
    group.add_argument(
        "--host-label",
        metavar="NAME",
        help="the name of this host in the job report and --report-dir (default: the host name)",
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
    commands = parser.add_subparsers(dest="command_name", required=True)
    common = _common_options(as_json)
    for add in _SUBCOMMANDS:
        add(commands, common, as_json)
    commands.metavar = "{" + ",".join(commands.choices) + "}"
    return parser


def _add_run(commands: argparse._SubParsersAction[_Parser], common: _Parser, as_json: bool) -> None:
    """Add ``run [options] -- COMMAND [ARGS...]``."""
    parser = commands.add_parser(
        "run",
        as_json=as_json,
        parents=[common],
        usage=f"{PROG} run [options] -- COMMAND [ARGS...]",
        help="run COMMAND under a private watchdog, then print a summary",
        description="Run COMMAND under a private watchdog, then print a summary.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _metrics_options(parser, http=False)
    add_progress_options(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the job to run, after '--'")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    """Check that there is a COMMAND (after ``--``), then run it under a watchdog."""
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CommandError(f"a COMMAND is needed, after '--' (see {PROG} run --help)")
    args.command = command
    return _with_options(args, run)


def _add_serve(
    commands: argparse._SubParsersAction[_Parser], common: _Parser, as_json: bool
) -> None:
    """Add ``serve --path PIPE``."""
    parser = commands.add_parser(
        "serve",
        as_json=as_json,
        parents=[common],
        help="serve a named pipe in the foreground (for systemd or a container)",
        description="Serve the named pipe PIPE in the foreground until SIGTERM.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--path",
        required=True,
        metavar="PIPE",
        help="the pipe to create and serve; its directory must exist; "
        "e.g. --path /run/train/timer.pipe",
    )
    _metrics_options(parser, http=True)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    """Serve the pipe until stopped."""
    return _with_options(args, serve)


def _with_options(args: argparse.Namespace, command: Callable[[Options], int]) -> int:
    """Check the watchdog options, run ``command`` with them, then close what they opened."""
    options = Options(args)
    try:
        return command(options)
    finally:
        options.close()


def _add_report(
    commands: argparse._SubParsersAction[_Parser], common: _Parser, as_json: bool
) -> None:
    """Add ``report DIR``."""
    parser = commands.add_parser(
        "report",
        as_json=as_json,
        help="merge the job reports that several hosts wrote into one --report-dir",
        description="Merge the job reports and events that each host's watchdog wrote into "
        "DIR (with --report-dir) into one job view, ordered by wall-clock time.",
    )
    parser.add_argument("directory", metavar="DIR", help="the directory given to --report-dir")
    parser.add_argument("--json", action="store_true", help="print the job view as JSON")
    parser.set_defaults(handler=report, verbose=False)


#: The subcommands, in the order ``--help`` lists them.
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[_Parser], _Parser, bool], None], ...] = (
    _add_run,
    _add_serve,
    _add_report,
)


def _address(text: str) -> tuple[str, int]:
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


def _wants_json(argv: Sequence[str]) -> bool:
    """Tell whether ``--json`` is among the options (not in COMMAND, after ``--``)."""
    options = list(argv)
    if "--" in options:
        options = options[: options.index("--")]
    return "--json" in options


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(argv)
    args = build_parser(as_json=as_json).parse_args(argv)
    prog = f"{PROG} {args.command_name}"
    handler: Callable[[argparse.Namespace], int] = args.handler
    # A subcommand without the watchdog options logs as --json says, at warning level.
    logs_json = bool(getattr(args, "json", as_json))
    verbose = bool(getattr(args, "verbose", False))
    with logging_to_stderr(as_json=logs_json, verbose=verbose):
        try:
            return handler(args)
        except CommandError as exc:
            fail(prog, str(exc), exc.status, as_json=as_json)
        except (TransportError, MetricsError) as exc:
            fail(prog, str(exc), USAGE_ERROR, as_json=as_json)
