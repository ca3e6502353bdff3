"""A timer server in its own process, driven over a pipe, for workloads that need one apart.

The measuring process keeps the GIL to itself; the server process has its own.
Commands sent on the connection: ``"count"`` (requests taken in so far),
``"timers"`` (timers held now), ``"stop"`` (stop the server and exit).
"""

from __future__ import annotations

import multiprocessing.connection
import time
from typing import Any

from bench import _impls

__all__ = ["ServerProcess", "serve"]


def serve(
    impl: str,
    transport: str,
    target: Any,
    max_interval: float,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Run ``impl``'s server for ``transport`` (``"mp"``: ``target`` is the queue; ``"file"``: the path)."""
    if transport == "mp":
        server = _impls.mp_server(impl, target, max_interval)
    else:
        server = _impls.file_server(impl, target, max_interval)
    server.start()
    conn.send("ready")
    try:
        while True:
            command = conn.recv()
            if command == "count":
                conn.send(_impls.processed(impl, server))
            elif command == "timers":
                conn.send(_impls.timer_count(impl, server))
            elif command == "stop":
                break
    finally:
        server.stop()
        conn.send("stopped")


class ServerProcess:
    """Start :func:`serve` in a spawned process and talk to it."""

    def __init__(self, impl: str, transport: str, target: Any, max_interval: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=serve,
            args=(impl, transport, target, max_interval, child_conn),
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        if not self._conn.poll(120):
            self.close()
            raise RuntimeError(f"{impl} {transport} server did not start within 120 s")
        try:
            self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(
                f"{impl} {transport} server process died at start (exit code "
                f"{self._proc.exitcode}; its traceback is on stderr)"
            ) from None

    @property
    def pid(self) -> int:
        """Return the server process's pid."""
        pid = self._proc.pid
        assert pid is not None
        return pid

    def ask(self, command: str, timeout: float = 30.0) -> Any:
        """Send ``command`` and return the reply."""
        self._conn.send(command)
        if not self._conn.poll(timeout):
            raise TimeoutError(f"server did not answer {command!r} within {timeout} s")
        return self._conn.recv()

    def wait_count(self, expected: int, timeout: float) -> tuple[int, float]:
        """Poll until the server has taken in ``expected`` requests; return (count, seconds waited)."""
        start = time.monotonic()
        count = self.ask("count")
        while count < expected and time.monotonic() - start < timeout:
            time.sleep(0.01)
            count = self.ask("count")
        return count, time.monotonic() - start

    def close(self) -> None:
        """Stop the server and its process (bounded)."""
        if self._proc.is_alive():
            try:
                self._conn.send("stop")
                self._conn.poll(10)
            except (OSError, EOFError):
                pass
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
