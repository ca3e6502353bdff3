"""``configure`` and ``expires``: the worker's one-line way to arm a timer around a block."""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, ModuleType, TracebackType
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._client import TimerClient
from ._log import logger

if TYPE_CHECKING:
    from . import _soft

__all__ = ["configure", "expires"]


P = ParamSpec("P")
R = TypeVar("R")

_default_client: TimerClient | None = None
_MAIN_THREAD = threading.main_thread().ident
_get_ident = threading.get_ident

#: Seconds between a soft deadline and the hard kill, when ``grace`` is not given.
DEFAULT_SOFT_GRACE = 10.0


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

    With ``soft=True`` the worker is warned before it is killed: once ``after``
    seconds pass, :class:`~timer_api.TimerExpired` is raised in the thread that
    entered the block (in the main thread this also interrupts a blocking call;
    in another thread it is raised at the thread's next Python instruction). The
    server's timer is armed for ``after + grace`` seconds (``grace`` defaults to
    :data:`DEFAULT_SOFT_GRACE`), so the worker is still killed if the block has
    not ended by then, for instance because the exception was caught inside it::

        try:
            with expires(after=60, soft=True, grace=15):
                train_step()
        except TimerExpired:
            save_checkpoint()  # runs after the block: no longer timed
    """

    __slots__ = ("_after", "_client", "_default_scope", "_grace", "_open", "_scope", "_soft")

    def __init__(
        self,
        after: float,
        scope: str | None = None,
        client: TimerClient | None = None,
        *,
        soft: bool = False,
        grace: float | None = None,
    ) -> None:
        if not (math.isfinite(after) and after >= 0):
            raise ValueError(f"expires(after={after!r}): expected a finite number >= 0")
        self._after = after
        self._client = client
        self._default_scope = scope is None
        if scope is None:
            frame = sys._getframe(1)
            scope = f"{frame.f_code.co_filename}#{frame.f_lineno}"
        self._scope = scope
        self._soft = soft
        if grace is None:
            grace = DEFAULT_SOFT_GRACE if soft else 0.0
        elif not soft:
            raise TypeError("expires(grace=...) applies only with soft=True")
        elif not (math.isfinite(grace) and grace >= 0):
            raise ValueError(f"expires(grace={grace!r}): expected a finite number >= 0")
        self._grace = grace
        #: The soft deadlines of the blocks open on this guard, per thread, innermost last.
        self._open: dict[int, list[_soft.SoftDeadline]] | None = None

    def _target(self) -> tuple[TimerClient, str]:
        client = self._client if self._client is not None else _default_client
        if client is None:
            raise RuntimeError("no timer client: call timer_api.configure(client) or pass client=")
        return client, _thread_scope(self._scope) if self._default_scope else self._scope

    def __enter__(self) -> None:
        client, scope = self._target()
        if self._soft:
            self._enter_soft(client, scope)
            return
        client.acquire(scope, time.time() + self._after)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        client, scope = self._target()
        if self._soft:
            self._exit_soft()
        if exc_type is None:
            client.release(scope)
            return
        try:
            client.release(scope)
        except Exception:
            logger.warning(
                "could not release timer %r after the block raised", scope, exc_info=True
            )

    def _enter_soft(self, client: TimerClient, scope: str) -> None:
        """Arm the server's timer at ``after + grace``, then the soft deadline at ``after``."""
        client.acquire(scope, time.time() + self._after + self._grace)
        message = f"{scope}: soft deadline of {self._after:g}s passed"
        frame = sys._getframe(2)  # the frame running the ``with`` statement

        def on_escape() -> None:
            opened = self._open.get(entry.thread_id) if self._open is not None else None
            if opened and entry in opened:
                opened.remove(entry)
            soft.disarm(entry)
            try:
                client.release(scope)
            except Exception:
                logger.warning("could not release timer %r", scope, exc_info=True)

        soft = _soft_deadlines()
        entry = soft.arm(self._after, message, frame, on_escape)
        if self._open is None:
            self._open = {}
        self._open.setdefault(entry.thread_id, []).append(entry)

    def _exit_soft(self) -> None:
        """End the innermost soft deadline this thread opened on this guard."""
        if self._open is None:
            return
        ident = _get_ident()
        opened = self._open.get(ident)
        if opened:
            _soft_deadlines().disarm(opened.pop())
            if not opened:
                del self._open[ident]

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Wrap ``func`` so that every call runs under a fresh timer."""
        scope = f"{func.__module__}.{func.__qualname__}" if self._default_scope else self._scope
        grace = self._grace if self._soft else None
        guard = expires(self._after, scope, self._client, soft=self._soft, grace=grace)
        guard._default_scope = self._default_scope

        @functools.wraps(func)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            with guard:
                return func(*args, **kwargs)

        return timed


def _abandon(frame: FrameType) -> None:
    """Release the timer of a block whose ``__enter__``/``__exit__`` an exception interrupts.

    Called (from :mod:`._soft`) in the thread itself, when a soft deadline's exception
    lands there; the block will not run ``__exit__`` to the end, so its soft deadline
    is ended and its timer released here. A release of a timer the server does not
    hold is ignored by the server.
    """
    guard = frame.f_locals.get("self")
    if not isinstance(guard, expires):
        return
    client = guard._client if guard._client is not None else _default_client
    if client is None:
        return
    scope = _thread_scope(guard._scope) if guard._default_scope else guard._scope
    opened = guard._open.get(_get_ident()) if guard._open is not None else None
    if opened:
        for entry in [e for e in opened if e.frame is frame.f_back]:
            opened.remove(entry)
            _soft_deadlines().disarm(entry)
    try:
        client.release(scope)
    except Exception:
        logger.warning("could not release timer %r", scope, exc_info=True)


def _soft_deadlines() -> ModuleType:
    """Import the soft-timeout machinery on first use (a worker without ``soft=True`` never pays)."""
    from . import _soft

    if _soft.ABANDON is None:
        _soft.GUARD_CODES.update(m.__code__ for m in (expires.__enter__, expires.__exit__))
        _soft.ABANDON = _abandon
    return _soft
