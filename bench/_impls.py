"""One face for both implementations: ``"ours"`` (this repository) and ``"torch"`` (2.13).

Each helper imports its implementation lazily, so a measurement process loads
only the side it measures. torch's servers keep no request counter; the bench
reads theirs from a subclass that adds one line to ``register_timers`` (a count),
which is the only instrument added to torch's code paths.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = [
    "IMPLS",
    "file_client",
    "file_server",
    "make_request",
    "mp_client",
    "mp_server",
    "null_client",
    "processed",
    "timer_count",
    "torch_available",
    "torch_version",
    "wire_line",
]

IMPLS = ("ours", "torch")


def torch_available() -> bool:
    """Tell whether ``torch.distributed.elastic.timer`` can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def torch_version() -> str | None:
    """Return the installed torch version without importing torch."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def expires_fn(impl: str) -> Any:
    """Return the implementation's ``expires``."""
    if impl == "ours":
        from timer_api import expires

        return expires
    from torch.distributed.elastic.timer import expires as torch_expires

    return torch_expires


def null_client(impl: str) -> Any:
    """Return a client of the implementation's ``TimerClient`` ABC whose methods do nothing."""
    base: Any
    if impl == "ours":
        import timer_api

        base = timer_api.TimerClient
    else:
        import torch.distributed.elastic.timer as torch_timer

        base = torch_timer.TimerClient

    class NullClient(base):  # type: ignore[misc]
        def acquire(self, scope_id: str, expiration_time: float) -> None:
            pass

        def release(self, scope_id: str) -> None:
            pass

    return NullClient()


def mp_server(impl: str, mp_queue: Any, max_interval: float) -> Any:
    """Return a ``LocalTimerServer`` over ``mp_queue`` (not started)."""
    if impl == "ours":
        from timer_queue_mp import LocalTimerServer
        from timer_watchdog import WatchdogPolicy

        # Workloads 5 and 6 arm 100,000 timers of one process: above the default cap.
        policy = WatchdogPolicy(max_timers_per_worker=1_000_000)
        return LocalTimerServer(mp_queue, max_interval=max_interval, policy=policy)
    from torch.distributed.elastic.timer import LocalTimerServer as TorchLocalTimerServer

    class CountingLocalTimerServer(TorchLocalTimerServer):  # type: ignore[misc]
        received = 0

        def register_timers(self, timer_requests: list[Any]) -> None:
            self.received += len(timer_requests)
            super().register_timers(timer_requests)

    return CountingLocalTimerServer(mp_queue, max_interval=max_interval)


def mp_client(impl: str, mp_queue: Any) -> Any:
    """Return a ``LocalTimerClient`` over ``mp_queue``."""
    if impl == "ours":
        from timer_queue_mp import LocalTimerClient

        return LocalTimerClient(mp_queue)
    from torch.distributed.elastic.timer import LocalTimerClient as TorchLocalTimerClient

    return TorchLocalTimerClient(mp_queue)


def file_server(impl: str, path: str, max_interval: float) -> Any:
    """Return a ``FileTimerServer`` on the pipe ``path`` (not started)."""
    if impl == "ours":
        from timer_file import FileTimerServer

        return FileTimerServer(path, "bench", max_interval=max_interval)
    from torch.distributed.elastic.timer import FileTimerServer as TorchFileTimerServer

    return TorchFileTimerServer(path, "bench", max_interval=max_interval)


def file_client(impl: str, path: str) -> Any:
    """Return a ``FileTimerClient`` on the pipe ``path`` (default signal, SIGKILL)."""
    if impl == "ours":
        from timer_file import FileTimerClient

        return FileTimerClient(path)
    from torch.distributed.elastic.timer import FileTimerClient as TorchFileTimerClient

    return TorchFileTimerClient(path)


def processed(impl: str, server: Any) -> int:
    """Return how many requests ``server`` has taken in so far."""
    if impl == "ours":
        return int(server.stats().received)
    if hasattr(server, "_request_count"):  # torch's FileTimerServer counts them itself
        return int(server._request_count)
    return int(server.received)


def timer_count(impl: str, server: Any) -> int:
    """Return how many timers ``server`` holds now."""
    if impl == "ours":
        return int(server.stats().timers)
    return len(server._timers)


def make_request(
    impl: str, pid: int, scope_id: str, expiration_time: float, start_time: int | None
) -> Any:
    """Return an arm request as the implementation's own client would build it."""
    if impl == "ours":
        from timer_api import TimerRequest

        return TimerRequest(
            pid,
            scope_id,
            expiration_time,
            start_time=start_time,
            deadline=time.monotonic() + (expiration_time - time.time()),
            thread_id=threading.get_ident(),
        )
    from torch.distributed.elastic.timer import TimerRequest as TorchTimerRequest

    return TorchTimerRequest(pid, scope_id, expiration_time)


def wire_line(
    impl: str, pid: int, scope_id: str, expiration_time: float, start_time: int | None
) -> bytes:
    """Return the JSON line the implementation's ``FileTimerClient`` writes for this request.

    torch's line is built here field for field as ``FileTimerRequest.to_json`` does,
    so that a producer of torch's lines need not import torch.
    """
    import json

    signal = 9 if expiration_time >= 0 else 0
    if impl == "ours":
        from timer_api import TimerRequest, encode_json_line

        return encode_json_line(
            TimerRequest(
                pid,
                scope_id,
                expiration_time,
                signal,
                start_time,
                time.monotonic() + (expiration_time - time.time())
                if expiration_time >= 0
                else None,
                threading.get_ident(),
            )
        )
    record = {
        "version": 1,
        "pid": pid,
        "scope_id": scope_id,
        "expiration_time": expiration_time,
        "signal": signal,
    }
    return (json.dumps(record) + "\n").encode()
