"""The shared contract of the timer packages: request types, codec, abstract client/queue/server.

A worker arms a timer around risky code; a watchdog server reaps the worker if the
block outlives it::

    from timer_api import configure, expires
    from timer_file import FileTimerClient

    configure(FileTimerClient("/run/timer.pipe"))
    with expires(after=60):
        train_step()

Names and signatures follow ``torch.distributed.elastic.timer``.
"""

from .__about__ import __version__
from ._builder import RequestBuilder
from ._check import check_column, check_request
from ._client import TimerClient
from ._codec import (
    FALLBACK_SIGNAL,
    MAX_REQUEST_BYTES,
    LineDecoder,
    decode_msgpack,
    encode_json_line,
    encode_msgpack,
)
from ._errors import InvalidRequestError, RejectReason, TimerExpired
from ._expires import configure, expires
from ._lazy import lazy_getattr
from ._procfs import ProcessStat, process_start_time, process_stat
from ._queue import RequestQueue
from ._request import MAX_SCOPE_LENGTH, MAX_SIGNAL, TimerRequest
from ._server import TimerServer
from ._signals import parse_signal, signal_name
from ._stacks import (
    DEFAULT_STACK_SIGNAL,
    STACK_SIGNAL_ENV,
    STACKS_DIR_ENV,
    check_stack_directory,
    install_stack_dump,
    install_stack_dump_from_env,
    stack_dump_path,
)

__all__ = [
    "FALLBACK_SIGNAL",
    "DEFAULT_STACK_SIGNAL",
    "MAX_REQUEST_BYTES",
    "MAX_SCOPE_LENGTH",
    "MAX_SIGNAL",
    "STACKS_DIR_ENV",
    "STACK_SIGNAL_ENV",
    "InvalidRequestError",
    "LineDecoder",
    "ProcessStat",
    "RejectReason",
    "RequestBuilder",
    "RequestQueue",
    "TimerClient",
    "TimerExpired",
    "TimerRequest",
    "TimerServer",
    "__version__",
    "check_column",
    "check_request",
    "check_stack_directory",
    "configure",
    "decode_msgpack",
    "encode_json_line",
    "encode_msgpack",
    "expires",
    "install_stack_dump",
    "install_stack_dump_from_env",
    "lazy_getattr",
    "parse_signal",
    "process_start_time",
    "process_stat",
    "signal_name",
    "stack_dump_path",
]
