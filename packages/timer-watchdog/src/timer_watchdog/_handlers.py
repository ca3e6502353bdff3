"""Install signal handlers for the length of a block, then put the previous ones back."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

__all__ = ["handling"]


@contextlib.contextmanager
def handling(
    signums: Iterable[int], handler: Callable[[int, FrameType | None], Any]
) -> Iterator[None]:
    """Handle ``signums`` with ``handler`` inside the block; restore the previous handlers after."""
    previous: dict[int, Any] = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
