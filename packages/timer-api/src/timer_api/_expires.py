"""``configure`` and ``expires``: the worker's one-line way to arm a timer around a block."""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from ._client import TimerClient

__all__ = ["configure", "expires"]

logger = logging.getLogger("timer_api")

P = ParamSpec("P")
R = TypeVar("R")

_default_client: TimerClient | None = None
_MAIN_THREAD = threading.main_thread().ident
_get_ident = threading.get_ident


def configure(timer_client: TimerClient) -> None:
    """Make ``timer_client`` the client that :class:`expires` uses when none is given."""
    global _default_client
    _default_client = timer_client


def _thread_scope(scope: str) -> str:
    """Give a default scope entered outside the main thread a name of its own."""
    ident = _get_ident()
    return scope if ident == _MAIN_THREAD else f"{scope}@thread-{ident}"


class expires:  # noqa: N801 - torch's name, used as a function
    """Arm a timer for a block: the worker is reaped if the block outlives ``after`` seconds.

    Use it as a context manager or as a decorator::

        with expires(after=60):
            train_step()

        @expires(after=5)
        def load_shard(): ...

    ``scope`` names the timer. By default it is the caller's ``file#line`` (for a
    decorator, the function's qualified name), with the thread appended outside the
    main thread, so two threads on one line hold separate timers. Entering the same
    scope again (nesting on one line, recursion) re-arms that one timer. The timer is
    always released on exit; if the block raised, its own exception is the one the
    caller sees even when the release fails too. ``client`` defaults to the one set
    with :func:`configure`; with neither, entering raises ``RuntimeError``.
    """

    __slots__ = ("_after", "_client", "_default_scope", "_scope")

    def __init__(
        self, after: float, scope: str | None = None, client: TimerClient | None = None
    ) -> None:
        self._after = after
        self._client = client
        self._default_scope = scope is None
        if scope is None:
            frame = sys._getframe(1)
            scope = f"{frame.f_code.co_filename}#{frame.f_lineno}"
        self._scope = scope

    def _target(self) -> tuple[TimerClient, str]:
        client = self._client or _default_client
        if client is None:
            raise RuntimeError("no timer client: call timer_api.configure(client) or pass client=")
        return client, _thread_scope(self._scope) if self._default_scope else self._scope

    def __enter__(self) -> None:
        client, scope = self._target()
        client.acquire(scope, time.time() + self._after)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        client, scope = self._target()
        if exc_type is None:
            client.release(scope)
            return
        try:
            client.release(scope)
        except Exception:
            logger.warning(
                "could not release timer %r after the block raised", scope, exc_info=True
            )

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Wrap ``func`` so that every call runs under a fresh timer."""
        scope = f"{func.__module__}.{func.__qualname__}" if self._default_scope else self._scope
        guard = expires(self._after, scope, self._client)
        guard._default_scope = self._default_scope

        @functools.wraps(func)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            with guard:
                return func(*args, **kwargs)

        return timed
