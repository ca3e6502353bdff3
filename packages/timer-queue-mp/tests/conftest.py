"""Shared helpers: start worker processes and servers, wait for conditions with a bound."""

from __future__ import annotations

import multiprocessing
import runpy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from timer_queue_mp import LocalTimerServer

#: The worker body, run with runpy so that every start method can start it.
WORKER = str(Path(__file__).with_name("worker.py"))
#: The longest any test waits for something to happen.
PATIENCE = 60.0


def _start_worker(
    ctx: Any, queue: Any, action: str, report: Any = None, **args: Any
) -> multiprocessing.process.BaseProcess:
    """Start a worker process running ``action`` (see worker.py) and return it."""
    process = ctx.Process(
        target=runpy.run_path,
        args=(WORKER,),
        kwargs={"init_globals": {"queue": queue, "action": action, "args": args, "report": report}},
        daemon=True,
    )
    process.start()
    return process


def _wait_for(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(0.01)
    return True


@pytest.fixture
def start_worker() -> Callable[..., multiprocessing.process.BaseProcess]:
    """Return ``start(ctx, queue, action, report=None, **args)``: start a worker (see worker.py)."""
    return _start_worker


@pytest.fixture
def wait_for() -> Callable[..., bool]:
    """Return ``wait_for(condition, timeout=20)``: poll until it holds; return its last value."""
    return _wait_for


@pytest.fixture
def fork() -> Any:
    """Return the 'fork' multiprocessing context, the quickest to start workers."""
    return multiprocessing.get_context("fork")


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalTimerServer]]:
    """Return a function that builds and starts a server; every one is stopped afterwards."""
    servers: list[LocalTimerServer] = []

    def start(queue: Any, **kwargs: Any) -> LocalTimerServer:
        server = LocalTimerServer(queue, max_interval=kwargs.pop("max_interval", 1), **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
