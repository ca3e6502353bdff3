"""The server's policy: which signal ends a hung worker, how it escalates, what it may touch."""

from __future__ import annotations

import math
import signal

import msgspec

from timer_api import DEFAULT_STACK_SIGNAL

__all__ = ["TERMINATING_SIGNALS", "WatchdogPolicy", "is_terminating"]

#: Signals sent to *end* a worker: those whose default action terminates the process
#: and that are not conventionally used to notify it. After one of these the server
#: confirms that the worker died. Every other signal (SIGUSR1, SIGUSR2, SIGCONT,
#: SIGWINCH, SIGCHLD, SIGURG, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGVTALRM, SIGPROF,
#: SIGIO, SIGPWR, SIGSTKFLT and the real-time signals) only *tells* the worker: it is
#: sent once and the worker's timers are cleared, as torch does.
TERMINATING_SIGNALS: frozenset[int] = frozenset(
    int(s)
    for s in (
        signal.SIGHUP,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGABRT,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGKILL,
        signal.SIGSEGV,
        signal.SIGPIPE,
        signal.SIGALRM,
        signal.SIGTERM,
        signal.SIGXCPU,
        signal.SIGXFSZ,
        signal.SIGSYS,
    )
)


def is_terminating(signum: int) -> bool:
    """Tell whether ``signum`` is meant to end the process (see :data:`TERMINATING_SIGNALS`)."""
    return signum in TERMINATING_SIGNALS


def _check_signal(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < signal.NSIG:
        raise ValueError(f"{name} must be a signal number in 1..{signal.NSIG - 1}, got {value!r}")


def _check_seconds(name: str, value: float, *, positive: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")


class WatchdogPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Say how the server treats a worker whose timer expired.

    Fields:
        signal: the first signal, for timers whose request leaves the choice to the
            server (``signal`` absent or ``None``), and for every timer with ``force_signal``.
        grace: seconds from the first signal to SIGKILL; 0 means no escalation.
        kill_timeout: seconds after the final signal before a still-live worker is
            reported ``unkillable`` (and the signal sent again).
        observe_only: report every expiry, signal nothing; a worker's other timers stay armed.
        allow_other_users: accept workers of other users (refused by default).
        exit_on_reap: SIGKILL the server's own process after a reap, as torch's
            FileTimerServer does.
        stacks_dir: ask a worker for a stack dump into this directory before the first
            signal (only when the worker catches ``stack_signal``).
        stack_signal: the signal that asks for the dump.
        stack_wait: the longest wait for a dump (and for py-spy) before escalating.
        py_spy: also run ``py-spy dump`` on the worker, if py-spy is installed.
        force_signal: apply ``signal`` and ``grace`` to every timer, whatever signal its
            request asks for (observe-only requests included).
        max_timers_per_worker: most armed timers one worker may hold; an arm of a new
            scope beyond it is rejected (``too_many_timers``), existing timers are
            never evicted.
        descendants_of: admit only workers that descend from this pid (walking the
            /proc parent chain on admission); others are rejected (``not_in_job``).
        job_snapshot: at the server's first expiry, before any signal, capture every
            live process of the job (every known worker, and every descendant of
            ``descendants_of``) and report it as a ``snapshot`` event.
        snapshot_budget: the longest the snapshot may hold the first signal, in seconds.

    Raises ``ValueError`` for a field out of range.
    """

    signal: int = int(signal.SIGKILL)
    grace: float = 0.0
    kill_timeout: float = 5.0
    observe_only: bool = False
    allow_other_users: bool = False
    exit_on_reap: bool = False
    stacks_dir: str | None = None
    stack_signal: int = DEFAULT_STACK_SIGNAL
    stack_wait: float = 1.0
    py_spy: bool = False
    force_signal: bool = False
    max_timers_per_worker: int = 10_000
    descendants_of: int | None = None
    job_snapshot: bool = False
    snapshot_budget: float = 3.0

    def __post_init__(self) -> None:
        _check_signal("signal", self.signal)
        _check_signal("stack_signal", self.stack_signal)
        if self.stack_signal in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError("stack_signal cannot be SIGKILL or SIGSTOP")
        _check_seconds("grace", self.grace)
        _check_seconds("kill_timeout", self.kill_timeout, positive=True)
        _check_seconds("stack_wait", self.stack_wait)
        _check_seconds("snapshot_budget", self.snapshot_budget)
        if self.stacks_dir is not None and not isinstance(self.stacks_dir, str):
            raise ValueError(f"stacks_dir must be a str or None, got {self.stacks_dir!r}")
        cap = self.max_timers_per_worker
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise ValueError(f"max_timers_per_worker must be an int >= 1, got {cap!r}")
        root = self.descendants_of
        if root is not None and (not isinstance(root, int) or isinstance(root, bool) or root < 1):
            raise ValueError(f"descendants_of must be a pid >= 1 or None, got {root!r}")
