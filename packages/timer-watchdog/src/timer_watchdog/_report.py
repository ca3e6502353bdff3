"""``timer-watchdog report DIR``: merge the job reports of several hosts into one job view."""

from __future__ import annotations

import argparse
import sys

import msgspec

from ._jobreport import format_view, merge_reports, read_report_dir
from ._options import CommandError

__all__ = ["report"]

#: Exit status when DIR holds no report of any host.
NO_REPORTS = 1


def report(args: argparse.Namespace) -> int:
    """Print the job view of ``args.directory`` (JSON with ``args.json``); return the exit status."""
    try:
        reports, events, problems = read_report_dir(args.directory)
    except OSError as exc:
        raise CommandError(f"cannot read {args.directory}: {exc.strerror or exc}") from None
    for problem in problems:
        print(f"timer-watchdog report: skipped {problem}", file=sys.stderr)
    if not reports and not any(events.values()):
        raise CommandError(f"no job report in {args.directory}", NO_REPORTS)
    view = merge_reports(reports, events)
    if args.json:
        print(msgspec.json.encode(view).decode())
    else:
        print(format_view(view))
    return 0
