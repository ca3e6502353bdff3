"""Send the timer packages' log records to stderr while a command runs, then restore logging."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator

from ._options import PROG

__all__ = ["logging_to_stderr"]

#: The packages whose log records the command prints.
LOGGERS = ("timer_watchdog", "timer_api", "timer_file", "timer_queue_mp")


class _EchoFilter(logging.Filter):
    """Drop the engine's log lines that repeat an event, which the command prints itself."""

    #: The messages of the engine's log lines that an event line already tells.
    ECHOES = ("rejected timer request", "worker %d held ", "worker %d exited holding")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.ECHOES))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"log": record.levelname.lower(), "message": record.getMessage()})


@contextlib.contextmanager
def logging_to_stderr(*, as_json: bool, verbose: bool) -> Iterator[None]:
    """Log to stderr (JSON objects with ``as_json``; INFO too with ``verbose``) inside the block."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else logging.Formatter(f"{PROG}: %(message)s"))
    handler.addFilter(_EchoFilter())
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        logger.propagate = False
    # The engine's reaping log lines repeat events, which the command prints itself.
    echo = logging.getLogger("timer_watchdog.reaping")
    saved.append((echo, echo.level, echo.propagate))
    echo.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
