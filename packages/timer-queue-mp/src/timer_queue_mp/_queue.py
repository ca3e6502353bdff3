"""The server's end of a multiprocessing queue: batches of requests, and what was not one."""

from __future__ import annotations

import logging
import multiprocessing.queues
import pickle
import queue
import threading
import time
from collections import deque
from multiprocessing.managers import RemoteError
from typing import Any

from timer_api import InvalidRequestError, RejectReason, RequestQueue, TimerRequest

from ._convert import to_request
from ._pipe import Lost, PipeReader

__all__ = ["MultiprocessingRequestQueue"]

logger = logging.getLogger("timer_queue_mp")

#: Put on the queue by :meth:`MultiprocessingRequestQueue.interrupt` and swallowed by ``get``.
#: It starts with 0xc1, a byte MessagePack never uses, so it cannot be a request.
WAKE_TOKEN = b"\xc1timer-queue-mp:wake"

#: The most items one :meth:`MultiprocessingRequestQueue.size` call takes off a queue
#: that has no pipe to read in bulk (a ``Manager().Queue()`` costs a round trip each).
_SIZE_DRAIN = 1024

_TRANSPORT_ERRORS = (OSError, EOFError, ValueError, RemoteError)


class MultiprocessingRequestQueue(RequestQueue):
    """Take requests from ``mp_queue``, a ``multiprocessing`` queue that clients put into.

    Works with ``multiprocessing.Queue`` from any start method and with a
    ``multiprocessing.Manager().Queue()``. :meth:`get` returns only
    :class:`timer_api.TimerRequest` objects, as torch's does: a request object put on
    the queue comes back as it was put (the server checks its values, and
    :attr:`checked` says when a batch holds one), MessagePack
    bytes from :class:`LocalTimerClient` are decoded, and a torch-style object
    (``worker_id``, ``scope_id``, ``expiration_time``) becomes a request with those
    fields. Every other item, and every stretch of the pipe lost to a writer that
    died mid-item, is kept aside as an :class:`timer_api.InvalidRequestError` that
    :meth:`take_rejected` hands to the server, which counts and reports it. A plain
    ``multiprocessing.Queue`` is read in bulk, many items per system call.
    """

    #: Whether the requests the last :meth:`get` returned were all decoded from bytes
    #: (checked by the codec); a request object put as it is was not.
    checked = True

    def __init__(self, mp_queue: Any) -> None:
        if isinstance(mp_queue, multiprocessing.queues.SimpleQueue):
            raise TypeError(
                "a SimpleQueue cannot wait with a timeout; use multiprocessing.Queue() "
                "or multiprocessing.Manager().Queue()"
            )
        self._mp_queue = mp_queue
        self._pipe = PipeReader(mp_queue) if PipeReader.supports(mp_queue) else None
        self._ready: deque[TimerRequest] = deque()
        #: Request objects put as they are (not decoded) among ``_ready``, or an over-count.
        self._unchecked = 0
        self._rejected: deque[InvalidRequestError] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._failing = False

    @property
    def reads_in_bulk(self) -> bool:
        """Tell whether the queue's pipe is read directly (else through the queue's ``get``)."""
        return self._pipe is not None

    def take_rejected(self) -> list[InvalidRequestError]:
        """Return, and forget, the items read so far that were not requests, in order."""
        rejected = self._rejected
        return [rejected.popleft() for _ in range(len(rejected))]

    def size(self) -> int:
        """Return how many requests have arrived and wait to be returned by :meth:`get`.

        It reads what the queue holds without waiting and counts it. It never calls
        ``qsize()``, which raises ``NotImplementedError`` on macOS and, on Linux,
        also counts requests still in a worker's feeder thread, including those
        lost when the worker exited before the thread wrote them. While another
        thread is inside :meth:`get`, it returns the count already read.
        """
        if self._lock.acquire(blocking=False):
            try:
                self._receive(0.0, _SIZE_DRAIN)
            finally:
                self._lock.release()
        return len(self._ready)

    def get(self, size: int, timeout: float) -> list[TimerRequest]:  # type: ignore[override]
        """Return at most ``size`` requests, waiting up to ``timeout`` seconds in all.

        Torch's contract: it returns as soon as ``size`` requests are in hand,
        otherwise with what arrived by ``timeout`` (possibly nothing). It also
        returns at once when :meth:`interrupt` is called, or when an item that is
        not a request arrived (so that the server reports it without delay; see
        :meth:`take_rejected`). Everything already in the queue is taken without
        waiting; requests beyond ``size`` are kept, in order, for the next call.
        """
        out: list[TimerRequest] = []
        if size <= 0:
            return out
        deadline = time.monotonic() + max(0.0, timeout)
        ready = self._ready
        with self._lock:
            while True:
                while ready and len(out) < size:
                    out.append(ready.popleft())
                if len(out) >= size:
                    return self._handed(out)
                if (
                    not self._receive(deadline - time.monotonic(), size - len(out))
                    or self._rejected
                ):
                    while ready and len(out) < size:
                        out.append(ready.popleft())
                    return self._handed(out)

    def _handed(self, out: list[TimerRequest]) -> list[TimerRequest]:
        """Return ``out``, noting in :attr:`checked` whether it may hold unchecked requests."""
        self.checked = self._unchecked == 0
        if not self._ready:
            self._unchecked = 0
        return out

    def interrupt(self) -> None:
        """Wake a :meth:`get` that is waiting, so that a stopping server exits at once."""
        self._wake.set()
        if self._pipe is not None:
            self._pipe.interrupt()
            return
        try:
            self._mp_queue.put(WAKE_TOKEN, False)
        except queue.Full:
            pass  # a full queue wakes get() by itself
        except Exception:
            logger.debug("could not put the wake token on %r", self._mp_queue, exc_info=True)

    def _receive(self, timeout: float, want: int) -> bool:
        """Wait up to ``timeout`` for items and keep them; ``False``: none came, or woken."""
        try:
            if self._pipe is not None:
                keep_going = self._receive_frames(timeout)
            else:
                keep_going = self._receive_items(timeout, want)
        except _TRANSPORT_ERRORS as exc:
            if not self._failing:
                logger.warning("cannot read timer requests from %r: %r", self._mp_queue, exc)
            self._failing = True
            if timeout > 0 and self._wake.wait(timeout):
                self._wake.clear()
            return False
        self._failing = False
        return keep_going

    def _receive_frames(self, timeout: float) -> bool:
        """Read every whole item in the pipe of a plain ``multiprocessing.Queue``."""
        assert self._pipe is not None
        frames = self._pipe.read()
        if not frames:
            if timeout <= 0 or not self._pipe.wait(timeout):
                return False
            frames = self._pipe.read()
        keep_going = True
        for frame in frames:
            if isinstance(frame, Lost):
                self._rejected.append(InvalidRequestError(RejectReason.MALFORMED, frame.detail))
                continue
            try:
                item = pickle.loads(frame)
            except Exception as exc:
                self._rejected.append(_unpicklable(exc, frame))
                continue
            if type(item) is bytes and item == WAKE_TOKEN:
                keep_going = False
            else:
                self._keep(item)
        return keep_going

    def _keep(self, item: object) -> None:
        """File ``item`` as a request for :meth:`get`, or aside as a rejection."""
        request = to_request(item)
        if isinstance(request, InvalidRequestError):
            self._rejected.append(request)
        else:
            if not isinstance(item, (bytes, bytearray, memoryview)):
                self._unchecked += 1
            self._ready.append(request)

    def _receive_items(self, timeout: float, want: int) -> bool:
        """Take up to ``want`` items through the queue's own ``get``, waiting only for the first."""
        get = self._mp_queue.get
        block = timeout > 0
        for _ in range(want):
            try:
                item = get(True, timeout) if block else get(False)
            except queue.Empty:
                return not block
            except _TRANSPORT_ERRORS:
                raise
            except Exception as exc:  # consumed, but could not be unpickled here
                self._rejected.append(_unpicklable(exc, b""))
                block = False
                continue
            block = False
            if type(item) is bytes and item == WAKE_TOKEN:
                return False
            self._keep(item)
        return True


def _unpicklable(exc: Exception, raw: bytes) -> InvalidRequestError:
    return InvalidRequestError(
        RejectReason.WRONG_OBJECT, f"cannot unpickle the queue item: {exc!r}", raw
    )
