"""Typed usage of timer_api's public names; checked by mypy --strict, never run."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import timer_api
from timer_api import (
    InvalidRequestError,
    LineDecoder,
    RejectReason,
    RequestQueue,
    TimerClient,
    TimerRequest,
    TimerServer,
    expires,
)


class NullClient(TimerClient):
    def acquire(self, scope_id: str, expiration_time: float) -> None:
        return None

    def release(self, scope_id: str) -> None:
        return None


class ListQueue(RequestQueue):
    def __init__(self) -> None:
        self.items: list[TimerRequest | InvalidRequestError] = []

    def size(self) -> int:
        return len(self.items)

    def get(self, size: int, timeout: float) -> list[TimerRequest | InvalidRequestError]:
        batch, self.items = self.items[:size], self.items[size:]
        return batch


class DictServer(TimerServer):
    def __init__(self, queue: RequestQueue) -> None:
        super().__init__(queue, max_interval=1.0, daemon=True)
        self.timers: dict[tuple[int, str], TimerRequest] = {}

    def register_timers(self, timer_requests: list[TimerRequest]) -> None:
        for request in timer_requests:
            self.timers[(request.worker_id, request.scope_id)] = request

    def clear_timers(self, worker_ids: set[Any]) -> None:
        self.timers = {k: v for k, v in self.timers.items() if k[0] not in worker_ids}

    def get_expired_timers(self, deadline: float) -> dict[Any, list[TimerRequest]]:
        return {}

    def _reap_worker(self, worker_id: Any) -> bool:
        return True


def use() -> None:
    timer_api.configure(NullClient())
    request = TimerRequest(os.getpid(), "s", 1.0)
    also: TimerRequest = timer_api.decode_msgpack(timer_api.encode_msgpack(request))
    line: bytes = timer_api.encode_json_line(request)
    packed: bytes = timer_api.encode_msgpack(also)
    assert len(line) <= timer_api.MAX_REQUEST_BYTES
    assert packed
    try:
        timer_api.decode_msgpack(b"\x80")
    except InvalidRequestError as error:
        reason: RejectReason = error.reason
        detail: str = error.detail
        raw: bytes = error.raw
        assert reason is not RejectReason.OVERSIZE
        print(detail, raw)
    release: bool = TimerRequest(os.getpid(), "s", -1.0, signal=9, thread_id=1).is_release
    assert release
    for item in LineDecoder().feed(line):
        if isinstance(item, InvalidRequestError):
            assert item.reason is RejectReason.OVERSIZE
        else:
            pid: int = item.worker_id
            assert pid
    start: int | None = timer_api.process_start_time(os.getpid())
    stat: timer_api.ProcessStat | None = timer_api.process_stat(os.getpid())
    assert stat is None or (stat.start_time == start and stat.ppid >= 0 and stat.pgid > 0)
    if start is not None:
        path: str = timer_api.stack_dump_path("/tmp", os.getpid(), start)
        assert path
    timer_api.check_stack_directory("/tmp")  # raises PermissionError if unsafe
    signum: int = timer_api.parse_signal("RTMIN+4")  # raises ValueError if not a signal
    name: str = timer_api.signal_name(signum)
    assert name == "SIGRTMIN+4"
    load: Callable[[str], object] = timer_api.lazy_getattr(__name__, {"Thing": "._thing"})
    print(load)
    with expires(after=1.0):
        pass
    with expires(after=1.0, scope="named", client=NullClient()):
        pass

    @expires(after=1.0)
    def work(x: int) -> str:
        return str(x)

    text: str = work(3)
    assert text
    server = DictServer(ListQueue())
    server.start()
    server.stop()
