"""The job of ``timer-watchdog run``: start COMMAND, pass signals on, wait for it, reap its orphans.

``run`` owns every process COMMAND starts. It makes itself a child subreaper, so that
a process whose parent exits is re-parented to ``run`` instead of init and stays a
descendant of ``run`` (which is what the server admits, see
``WatchdogPolicy.descendants_of``); ``run`` then waits for those orphans, so that none
is left a zombie. Signal handlers only record what arrived; the main thread does the
work, between waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from types import FrameType

from timer_api import process_start_time, process_stat, signal_name

from ._handlers import handling
from ._libc import c_function
from ._wakeup import Wakeup

__all__ = ["FORWARDED_SIGNALS", "Job", "become_subreaper", "exit_status"]

#: Signals that ``run`` passes on to the job's process group (and, once COMMAND has
#: exited, to the job's processes that still hold timers).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

#: Signals that stop a process of a background process group that uses the terminal.
TERMINAL_STOPS = frozenset({int(signal.SIGTTIN), int(signal.SIGTTOU), int(signal.SIGTSTP)})

#: Longest wait between two looks at the job when no signal wakes ``run`` up.
POLL_INTERVAL = 0.25

#: ``prctl`` option that makes orphaned descendants re-parent to the caller (Linux 3.4+).
PR_SET_CHILD_SUBREAPER = 36


def exit_status(returncode: int) -> int:
    """Return a shell's exit status for a child's return code: ``128 + N`` for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def become_subreaper() -> str | None:
    """Make orphaned descendants of this process re-parent to it; return why not, or ``None``."""
    if not sys.platform.startswith("linux"):
        return f"not supported on {sys.platform}"
    try:
        prctl = c_function("prctl", [ctypes.c_int] + [ctypes.c_ulong] * 4, ctypes.c_int)
    except OSError as exc:
        return f"cannot call prctl(): {exc}"
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}"
    return None


def _spawn(
    command: list[str], env: dict[str, str], streams: Mapping[str, int] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` as the leader of a new process group (``streams``: its stdout/stderr)."""
    out, err = (streams.get("stdout"), streams.get("stderr")) if streams else (None, None)
    if sys.version_info >= (3, 11):
        return subprocess.Popen(command, env=env, process_group=0, stdout=out, stderr=err)
    return subprocess.Popen(  # pragma: no cover
        command, env=env, preexec_fn=os.setpgrp, stdout=out, stderr=err
    )


def _children() -> list[int]:
    """Return the pids of this process's children (from any of its threads)."""
    me = os.getpid()
    try:
        tasks = os.listdir(f"/proc/{me}/task")
        found: list[int] = []
        for tid in tasks:
            with (
                contextlib.suppress(FileNotFoundError),
                open(f"/proc/{me}/task/{tid}/children") as file,
            ):
                found.extend(int(pid) for pid in file.read().split())
        return found
    except OSError:
        pass
    # Kernels without /proc/PID/task/TID/children: read every process's parent.
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = process_stat(int(name))
            if stat is not None and stat.ppid == me:
                found.append(int(name))
    return found


class Job:
    """COMMAND and every process it starts, supervised from ``run``'s main thread.

    ``note`` receives what ``run`` tells the user (one line each). Use as a context
    manager: signal handlers are installed on entry and restored on exit.
    """

    def __init__(self, command: list[str], env: dict[str, str], note: Callable[[str], None]):
        self.command = command
        self._env = env
        self._note = note
        self._wake = Wakeup()
        self._received: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        #: The exit status of COMMAND (``128 + N`` for signal N), once it has exited.
        self.status: int | None = None
        #: The signal that stopped COMMAND, while it is stopped.
        self._stopped_by: int | None = None
        #: Whether a signal was passed on while COMMAND was stopped (and SIGCONT sent after).
        self._woken = False
        #: Processes outside the job's group to pass signals on to: ``pid -> start time``.
        self._also: dict[int, int] = {}
        #: Signals received since COMMAND exited: a second one stops the wait.
        self._after_exit = 0
        self._handlers: contextlib.ExitStack | None = None

    @property
    def pid(self) -> int:
        """Return COMMAND's pid (also its process group id)."""
        assert self._proc is not None, "the job is not started"
        return self._proc.pid

    def __enter__(self) -> Job:
        stack = contextlib.ExitStack()
        stack.enter_context(handling(FORWARDED_SIGNALS, self._on_signal))
        stack.enter_context(handling((signal.SIGCHLD,), self._on_child))
        self._handlers = stack
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handlers is not None
        self._handlers.close()
        self._wake.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)
        self._wake.set()

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        self._wake.set()

    def start(self, streams: Mapping[str, int] | None = None) -> None:
        """Start COMMAND in a new process group; raise ``OSError`` if it cannot be started.

        ``streams`` may give COMMAND's ``stdout`` and ``stderr`` fds (default: ours).
        """
        self._proc = _spawn(self.command, self._env, streams)

    def signal_also(self, pids: list[int]) -> None:
        """Pass the signals received from now on to ``pids`` too (checked by start time)."""
        for pid in pids:
            start_time = process_start_time(pid)
            if start_time is not None:
                self._also[pid] = start_time

    def wait(self, until: Callable[[], bool] | None = None) -> None:
        """Supervise until COMMAND has exited and ``until()`` is true (default: no more).

        Once COMMAND has exited, a second signal received ends the wait, ``until`` or not.
        """
        while True:
            self._wake.clear()
            self._pass_on()
            self._check_command()
            self._reap_orphans()
            if self.status is not None and (until is None or until()):
                return
            if self._after_exit >= 2:
                self._note("a second signal since the command exited: no longer waiting")
                return
            self._wake.wait(POLL_INTERVAL)

    # -- what the main loop does ----------------------------------------------------

    def _pass_on(self) -> None:
        """Send each signal received to the job; wake it up first if it is stopped."""
        while self._received:
            signum = self._received.pop(0)
            if self.status is not None:
                self._after_exit += 1
            if self.status is None and self._stopped_by is not None and self._woken:
                self._note(
                    f"{signal_name(signum)} received while the job is stopped again "
                    f"by {signal_name(self._stopped_by)}: killing its process group "
                    f"{self.pid} with SIGKILL"
                )
                self._kill_group(signal.SIGKILL)
                continue
            self._kill_group(signum)
            for pid, start_time in list(self._also.items()):
                if process_start_time(pid) == start_time:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signum)
                else:
                    del self._also[pid]
            if self._stopped_by is not None and self.status is None:
                # A stopped process acts on the signal only once it runs again.
                self._woken = True
                self._kill_group(signal.SIGCONT)

    def _kill_group(self, signum: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)

    def _check_command(self) -> None:
        """Collect COMMAND's exit status, or notice that it was stopped or continued."""
        proc = self._proc
        if proc is None or self.status is not None:
            return
        flags = os.WNOHANG | os.WUNTRACED | os.WCONTINUED
        while True:
            try:
                pid, wait_status = os.waitpid(proc.pid, flags)
            except ChildProcessError:  # pragma: no cover - nobody else waits for it
                self.status = proc.returncode if proc.returncode is not None else 0
                return
            if pid == 0:
                return
            if os.WIFSTOPPED(wait_status):
                self._stopped(os.WSTOPSIG(wait_status))
            elif os.WIFCONTINUED(wait_status):
                self._stopped_by = None
            else:
                proc.returncode = os.waitstatus_to_exitcode(wait_status)
                self.status = exit_status(proc.returncode)
                return

    def _stopped(self, signum: int) -> None:
        again = self._stopped_by is not None or self._woken
        self._stopped_by = signum
        if signum == signal.SIGTTIN:
            why = "it read from the terminal, which only the foreground process group may do"
        elif signum == signal.SIGTTOU:
            why = "it wrote to or set up the terminal from the background"
        else:
            why = "it was asked to stop"
        key = "Ctrl-C again" if again else "Ctrl-C"
        self._note(
            f"the job (pid {self.pid}) is stopped by {signal_name(signum)}: {why}; "
            f"it runs in its own process group, so its timers go on; "
            f"press {key} (or send SIGINT/SIGTERM to pid {os.getpid()}) to end it"
        )

    def lives_on(self) -> bool:
        """Tell whether a process of the job is still running (COMMAND's included)."""
        if self.status is None:
            return True
        own_group = os.getpgrp()
        for pid in _children():
            stat = process_stat(pid)
            if stat is not None and stat.state not in "ZXx" and stat.pgid != own_group:
                return True
        return False

    def _reap_orphans(self) -> None:
        """Wait for the job's orphans that have exited, so that none is left a zombie.

        Only children outside this process's own group are collected: the job's
        processes never share it, while helpers this process starts itself (such as
        py-spy) do, and their ``subprocess`` call waits for them.
        """
        own_group = os.getpgrp()
        command = self._proc.pid if self._proc is not None else None
        for pid in _children():
            if pid == command:
                continue
            stat = process_stat(pid)
            if stat is None or stat.state not in "Zz" or stat.pgid == own_group:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            except OSError as exc:  # pragma: no cover - waitpid fails only as above
                if exc.errno != errno.EINTR:
                    raise
