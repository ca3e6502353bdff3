"""Demo: run a small job under ``timer-watchdog run`` and see why one of its workers hung.

Run it with ``nox -s demo`` (or ``python examples/demo.py`` once the packages are
installed). It runs ``examples/demo_job.py``: four worker processes, each step
under a two-second timer; worker 2 hangs in ``wait_for_gradients_from_peer()``.
The watchdog notices the expired timer, has the worker dump its stack, kills it,
and prints a summary; the other three workers finish. The stack dump and the events
file are kept (in a new directory under the temporary directory, named at the end), so
that every path the demo prints can be opened. Exits 0 when all of that happened, 1
otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timer_watchdog import Reaped, decode_event

HERE = Path(__file__).resolve().parent
JOB = HERE / "demo_job.py"
HUNG_FUNCTION = "wait_for_gradients_from_peer"


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
        "A job starts four workers. Each training step runs under a 2-second timer:\n"
        "    with expires(after=2):\n"
        "        train_step(rank, step)\n"
        f"Worker 2 will hang on step 3, inside {HUNG_FUNCTION}().\n"
        "The job runs under the watchdog with stack dumps turned on:\n"
        f"    $ timer-watchdog run --stacks {stacks} -- python {JOB.name}\n"
        "Lines starting with 'timer-watchdog:' come from the watchdog, the others "
        "from the job.\n",
        flush=True,
    )
    command = [
        *watchdog_command(),
        "run",
        "--stacks",
        str(stacks),
        "--events",
        str(events),
        "--",
        sys.executable,
        str(JOB),
    ]
    status = subprocess.run(command, check=False, timeout=120).returncode

    reaped = [
        event
        for event in map(decode_event, events.read_bytes().splitlines())
        if isinstance(event, Reaped)
    ]
    banner("the hung worker's stack, dumped just before the kill")
    for event in reaped:
        if event.stack_path:
            print(f"{event.stack_path}:")
            print(Path(event.stack_path).read_text().rstrip())

    ok = (
        status == 1  # the job reports the one worker that was killed
        and len(reaped) == 1
        and reaped[0].frame is not None
        and reaped[0].frame.function == HUNG_FUNCTION
    )
    banner("result")
    if ok:
        print(
            f"The watchdog killed the hung worker (pid {reaped[0].pid}) and showed that it "
            f"was stuck in {HUNG_FUNCTION}();\nthe three other workers finished, and the "
            f"job exited with status {status}, as expected. (The demo read the kill from\n"
            "the --events file, where the watchdog writes each event as one JSON line.)",
            flush=True,
        )
    else:
        print(f"Unexpected outcome: job status {status}, reaped events {reaped}", flush=True)
    print(
        f"\nThe stack dump and the events file are kept in {workdir};\n"
        f"remove them with: rm -r {workdir}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
