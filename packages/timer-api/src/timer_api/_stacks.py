"""Where a worker writes its stack dump when the server asks for one, and which signal asks."""

from __future__ import annotations

import os
import signal

__all__ = ["DEFAULT_STACK_SIGNAL", "STACKS_DIR_ENV", "STACK_SIGNAL_ENV", "stack_dump_path"]

#: Environment variable naming the directory for stack dumps (set by ``timer-watchdog run --stacks``).
STACKS_DIR_ENV = "TIMER_WATCHDOG_STACKS"
#: Environment variable naming the signal number that asks a worker for a dump.
STACK_SIGNAL_ENV = "TIMER_WATCHDOG_STACK_SIGNAL"
#: The default dump signal: a real-time signal that nothing else in a Python worker uses.
DEFAULT_STACK_SIGNAL = int(signal.SIGRTMIN) + 4


def stack_dump_path(directory: str, pid: int, start_time: int) -> str:
    """Return the file that worker ``(pid, start_time)`` dumps its threads' stacks into."""
    return os.path.join(directory, f"worker-{pid}-{start_time}.stack")
