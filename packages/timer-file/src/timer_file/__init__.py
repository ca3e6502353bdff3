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

from timer_api import lazy_getattr

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
__getattr__ = lazy_getattr(
    __name__,
    {
        "FileTimerServer": "._server",
        "PipeInUseError": "._pipe",
        "UnsafePipeError": "._pipe",
    },
)

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
