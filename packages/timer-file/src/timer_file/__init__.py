"""Process expiration timers over a named pipe, wire-compatible with torch's FileTimerServer.

The server creates the pipe and reaps workers whose timers expire; workers (any
process of the same user on the host) write requests into it::

    import timer_api
    from timer_file import FileTimerClient, FileTimerServer

    server = FileTimerServer("/run/user/1000/timer.pipe", run_id="job-1")
    server.start()

    # in a worker (or: timer_file.configure_from_env() under torchrun)
    timer_api.configure(FileTimerClient("/run/user/1000/timer.pipe"))
    with timer_api.expires(after=60):
        train_step()

Names and signatures follow ``torch.distributed.elastic.timer``.
"""

from typing import TYPE_CHECKING

from .__about__ import __version__
from ._client import (
    FileTimerClient,
    PipeFullError,
    ServerUnavailableError,
    configure_from_env,
)
from ._request import FileTimerRequest

if TYPE_CHECKING:
    from ._pipe import PipeInUseError, UnsafePipeError
    from ._server import FileTimerServer

#: Server-side names, imported on first use so that a worker's import stays light.
_SERVER_SIDE = {
    "FileTimerServer": "._server",
    "PipeInUseError": "._pipe",
    "UnsafePipeError": "._pipe",
}


def __getattr__(name: str) -> object:
    """Import a server-side name on first use."""
    if name not in _SERVER_SIDE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_SERVER_SIDE[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "FileTimerClient",
    "FileTimerRequest",
    "FileTimerServer",
    "PipeFullError",
    "PipeInUseError",
    "ServerUnavailableError",
    "UnsafePipeError",
    "__version__",
    "configure_from_env",
]
