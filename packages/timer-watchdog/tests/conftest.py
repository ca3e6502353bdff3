"""Shared test parts, offered as fixtures: a started server on an in-memory request feeder
(``make_server``), its recorded events, real child processes (``spawn``) and ``wait_until``.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from timer_api import InvalidRequestError, RequestQueue, TimerRequest, process_start_time
from timer_watchdog import Event, WatchdogServer

#: Upper bound of every wait in these tests; generous, so a loaded machine never flakes.
PATIENCE = 60.0

E = TypeVar("E")


class MemoryQueue(RequestQueue):
    """Feed requests to a server from memory: a deque under a condition; honours interrupt()."""

    def __init__(self) -> None:
        self._items: collections.deque[TimerRequest | InvalidRequestError] = collections.deque()
        self._cond = threading.Condition()
        self._interrupted = False

    def put(self, *items: Any) -> None:
        with self._cond:
            self._items.extend(items)
            self._cond.notify_all()

    def size(self) -> int:
        return len(self._items)

    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        end = time.monotonic() + timeout
        with self._cond:
            while not self._items and not self._interrupted:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._interrupted = False
            return [self._items.popleft() for _ in range(min(size, len(self._items)))]

    def interrupt(self) -> None:
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()


class Events:
    """Record a server's events; wait for the ones a test expects."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def of(self, kind: type[E], pid: int | None = None) -> list[E]:
        with self._cond:
            return [
                e
                for e in self._events
                if isinstance(e, kind) and (pid is None or getattr(e, "pid", None) == pid)
            ]

    def wait_for(
        self, kind: type[E], pid: int | None = None, count: int = 1, timeout: float = PATIENCE
    ) -> list[E]:
        """Return the events of ``kind`` (for ``pid``) once there are ``count``; fail after ``timeout``."""
        end = time.monotonic() + timeout
        with self._cond:
            while len(found := self.of(kind, pid)) < count:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    pytest.fail(
                        f"no {count} {kind.__name__} event(s) in {timeout}s: {self._events}"
                    )
                self._cond.wait(remaining)
            return found


def _wait_until(condition: Callable[[], bool], timeout: float = PATIENCE) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"condition not met in {timeout}s")
        time.sleep(0.005)


class Child:
    """A real child process (``argv``) that prints ``ready`` (or a value) once set up."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **popen)
        assert self.proc.stdout is not None
        self.ready = self.proc.stdout.readline().strip()
        assert self.ready, "child died before it was ready"
        self.pid = self.proc.pid
        start = process_start_time(self.pid)
        assert start is not None
        self.start_time = start

    def request(
        self,
        scope: str = "scope",
        after: float = 0.1,
        *,
        signal: int | None = None,
        deadline: bool = True,
        start_time: bool = True,
        thread_id: int | None = None,
        wall: Callable[[], float] = time.time,
    ) -> TimerRequest:
        """Build the arm request this child would send (``after < 0``: a release)."""
        if after < 0:
            return TimerRequest(self.pid, scope, -1.0, start_time=self.start_time)
        return TimerRequest(
            self.pid,
            scope,
            wall() + after,
            signal=signal,
            start_time=self.start_time if start_time else None,
            deadline=time.monotonic() + after if deadline else None,
            thread_id=thread_id,
        )

    def wait(self, timeout: float = PATIENCE) -> int:
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(PATIENCE)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


#: Canned child bodies, by name: each prints "ready" once set up.
BODIES: dict[str, str] = {}

#: A child that sleeps until killed.
BODIES["sleeper"] = """
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""

#: A child that ignores SIGTERM and sleeps until killed.
BODIES["term_ignorer"] = """
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""

#: A child that exits with status 0 on SIGTERM.
BODIES["term_exiter"] = """
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """Start real child processes (a name from ``BODIES`` or code); all are killed at the end."""
    children: list[Child] = []

    def start(body: str = "sleeper", *args: str) -> Child:
        code = "import os, signal, sys, threading, time\n" + textwrap.dedent(BODIES.get(body, body))
        child = Child([sys.executable, "-c", code, *args])
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()


class Harness:
    """A started server, its feeder and its recorded events."""

    def __init__(self, server: WatchdogServer, queue: MemoryQueue, events: Events) -> None:
        self.server = server
        self.queue = queue
        self.events = events

    def put(self, *items: Any) -> None:
        self.queue.put(*items)


@pytest.fixture
def make_server() -> Iterator[Callable[..., Harness]]:
    """Build and start servers on a :class:`MemoryQueue`; all are stopped at the end."""
    servers: list[WatchdogServer] = []

    def build(start: bool = True, **kwargs: Any) -> Harness:
        queue = MemoryQueue()
        kwargs.setdefault("max_interval", 60.0)
        server = WatchdogServer(queue, **kwargs)
        events = Events()
        server.subscribe(events)
        servers.append(server)
        if start:
            server.start()
        return Harness(server, queue, events)

    yield build
    for server in servers:
        server.stop()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """Poll a condition until it holds; fail after a generous bound."""
    return _wait_until
