"""The ``timer_api`` logger, imported on first use: most workers never log anything."""

from __future__ import annotations

from typing import Any

__all__ = ["logger"]


class _Logger:
    """Forward to ``logging.getLogger("timer_api")``, importing :mod:`logging` on first use."""

    __slots__ = ()

    def warning(self, msg: str, *args: object, **kwargs: Any) -> None:
        """Log ``msg % args`` at WARNING."""
        _get().warning(msg, *args, **kwargs)

    def exception(self, msg: str, *args: object, **kwargs: Any) -> None:
        """Log ``msg % args`` at ERROR, with the exception being handled."""
        _get().exception(msg, *args, **kwargs)


def _get() -> Any:
    import logging

    return logging.getLogger("timer_api")


logger = _Logger()
