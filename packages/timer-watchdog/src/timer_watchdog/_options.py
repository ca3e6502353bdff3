"""What every subcommand of ``timer-watchdog`` shares: argument types, the checked options, errors."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import IO

from timer_api import check_stack_directory, parse_signal

from ._policy import WatchdogPolicy
from ._summary import EventLog

__all__ = [
    "PROG",
    "USAGE_ERROR",
    "CommandError",
    "Options",
    "interval",
    "seconds",
    "signal_number",
]

#: The command's name, as its messages begin.
PROG = "timer-watchdog"

#: Exit status for bad arguments and unusable paths.
USAGE_ERROR = 2


class CommandError(Exception):
    """Raise for a bad argument, an unusable path or a COMMAND that cannot be started.

    Printed as one error line (a JSON object with ``--json``); ``status`` is the exit
    status (2 for bad arguments, 127/126 for a COMMAND not found/not executable).
    """

    def __init__(self, message: str, status: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.status = status


def seconds(text: str) -> float:
    """Turn an argument into a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def interval(text: str) -> float:
    """Turn an argument into a finite number of seconds > 0."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number of seconds > 0, got 0")
    return value


def signal_number(text: str) -> int:
    """Turn an argument such as ``SIGTERM``, ``TERM``, ``15`` or ``RTMIN+4`` into a signal number."""
    try:
        return parse_signal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
                # On by default under ``run``, which owns the whole job; off for ``serve``.
                job_snapshot=(
                    args.job_snapshot
                    if args.job_snapshot is not None
                    else args.command_name == "run"
                ),
                snapshot_budget=args.snapshot_budget,
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
