"""Demo: run a 4-rank job under ``timer-watchdog run`` and see which rank hung, and where.

Run it with ``nox -s demo`` (or ``python examples/demo.py`` once the packages are
installed). It runs ``examples/demo_job.py``: four ranks that load a batch, then
exchange gradients through queues, every step. Rank 1 hangs loading data; ranks 0, 2
and 3 block in ``all_reduce()`` waiting for it. Rank 1's timer expires first: before
any signal, the watchdog captures every process of the job (stacks, state, rank
labels) and its job report points at rank 1 and ``load_batch()``; then rank 1 is
killed, and the job stops the other ranks. The stack dumps, the job report and the events file are kept (in a
new directory under the temporary directory, named at the end), so that every path
the demo prints can be opened. Exits 0 when all of that happened, 1 otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timer_watchdog import JobSnapshot, Reaped, build_report, decode_event

HERE = Path(__file__).resolve().parent
JOB = HERE / "demo_job.py"
HUNG_FUNCTION = "load_batch"
WAITING_FUNCTION = "all_reduce"


def watchdog_command() -> list[str]:
    """Return how to start ``timer-watchdog`` from this Python environment."""
    script = Path(sys.executable).with_name("timer-watchdog")
    return [str(script)] if script.exists() else [sys.executable, "-m", "timer_watchdog"]


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="timer-demo-"))
    stacks, events = workdir / "stacks", workdir / "events.jsonl"
    banner("timer-watchdog demo")
    print(
        "A job starts four ranks. Every step, each rank loads a batch, then the ranks\n"
        "exchange gradients through queues, each part under its own timer:\n"
        "    with expires(after=1.5):\n"
        "        batch = load_batch(rank, step)\n"
        "    with expires(after=4):\n"
        "        total = all_reduce(rank, batch, inboxes)\n"
        f"Rank 1 will hang on step 2 inside {HUNG_FUNCTION}(); the other ranks then wait\n"
        f"for it in {WAITING_FUNCTION}(). The job runs under the watchdog with stack dumps on:\n"
        f"    $ timer-watchdog run --snapshot-budget 10 --stacks {stacks} -- python {JOB.name}\n"
        "Lines starting with 'timer-watchdog:' come from the watchdog, the others "
        "from the job.\n",
        flush=True,
    )
    command = [
        *watchdog_command(),
        "run",
        # Generous, so that every rank answers even on a loaded machine (default 3 s).
        "--snapshot-budget",
        "10",
        "--stacks",
        str(stacks),
        "--events",
        str(events),
        "--",
        sys.executable,
        str(JOB),
    ]
    status = subprocess.run(command, check=False, timeout=120).returncode

    recorded = list(map(decode_event, events.read_bytes().splitlines()))
    reaped = [event for event in recorded if isinstance(event, Reaped)]
    snapshots = [event for event in recorded if isinstance(event, JobSnapshot)]
    reports = sorted(stacks.glob("*/job-report.txt"))
    if reports:
        banner("the job report, written before the first kill")
        text = reports[0].read_text()
        head, _, _ = text.partition("\n\n")
        print(f"{reports[0]}:\n{head}\n(every process's stacks follow in the file)")

    ok = False
    if status == 1 and len(snapshots) == 1 and reports:
        report = build_report(snapshots[0])
        culprit = next((g for g in report.groups if g.culprit), None)
        waiting = [g for g in report.groups if g.frame and g.frame.function == WAITING_FUNCTION]
        ok = (
            report.culprit_rank == "1"
            and culprit is not None
            and culprit.frame is not None
            and culprit.frame.function == HUNG_FUNCTION
            and len(waiting) == 1
            and waiting[0].members == ["rank 0", "rank 2", "rank 3"]
        )
    banner("result")
    if ok:
        print(
            f"Rank 1's timer expired first. Before killing anything, the watchdog captured\n"
            f"every process of the job: its report points at rank 1 in {HUNG_FUNCTION}(),\n"
            f"while ranks 0, 2 and 3 were waiting for it in {WAITING_FUNCTION}(). Rank 1 was\n"
            f"then killed, the job stopped the others and exited with status {status}, as "
            "expected.",
            flush=True,
        )
    else:
        print(
            f"Unexpected outcome: job status {status}, snapshots {len(snapshots)}, "
            f"reports {reports}, reaped {len(reaped)}",
            flush=True,
        )
    print(
        f"\nThe stack dumps, the job report and the events file are kept in {workdir};\n"
        f"remove them with: rm -r {workdir}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
