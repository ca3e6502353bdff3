"""Process expiration timers over a ``multiprocessing`` queue, on the timer-watchdog engine.

The parent starts the server and hands the queue to its workers; each worker arms a
timer around risky code and is killed if the block outlives it::

    import multiprocessing as mp
    from timer_api import configure, expires
    from timer_queue_mp import LocalTimerClient, LocalTimerServer

    def train(queue):
        configure(LocalTimerClient(queue))
        with expires(after=60):
            train_step()

    queue = mp.get_context("spawn").Queue()
    server = LocalTimerServer(queue, max_interval=1)
    server.start()
    mp.get_context("spawn").Process(target=train, args=(queue,)).start()

Names and signatures follow ``torch.distributed.elastic.timer``.
"""

from typing import TYPE_CHECKING

from timer_api import lazy_getattr

from .__about__ import __version__
from ._client import LocalTimerClient

if TYPE_CHECKING:
    from ._queue import MultiprocessingRequestQueue
    from ._server import LocalTimerServer

#: Server-side names, imported on first use so that a worker's import stays light.
__getattr__ = lazy_getattr(
    __name__,
    {
        "LocalTimerServer": "._server",
        "MultiprocessingRequestQueue": "._queue",
    },
)

__all__ = [
    "LocalTimerClient",
    "LocalTimerServer",
    "MultiprocessingRequestQueue",
    "__version__",
]
