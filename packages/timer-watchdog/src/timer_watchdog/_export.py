"""Export a server's metrics as the command's options say: over HTTP, to a file, both.

``http.server`` is imported only when an address is given (see ``_metrics_http.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._metrics import FILE_INTERVAL, STALL_AFTER, Metrics, MetricsFile
from ._server import WatchdogServer

if TYPE_CHECKING:
    from ._metrics_http import MetricsHTTP

__all__ = ["Exporter", "MetricsError"]


class MetricsError(Exception):
    """Raise when the metrics cannot be served or written where the options say."""


class Exporter:
    """Export a server's metrics over HTTP (``address``), to a file (``path``), both or neither.

    Create it before the server starts; it binds the port and writes the file at
    once, raising :class:`MetricsError` if either fails.
    """

    def __init__(
        self,
        server: WatchdogServer,
        *,
        address: tuple[str, int] | None = None,
        path: str | None = None,
        stall_after: float = STALL_AFTER,
    ) -> None:
        self.metrics: Metrics | None = None
        self.http: MetricsHTTP | None = None
        self.file: MetricsFile | None = None
        if address is None and path is None:
            return
        self.metrics = Metrics(server, stall_after=stall_after)
        try:
            if address is not None:
                from ._metrics_http import MetricsHTTP  # http.server: only when serving

                try:
                    self.http = MetricsHTTP(self.metrics, address)
                except OSError as exc:
                    host, port = address
                    raise MetricsError(
                        f"cannot serve --metrics {host}:{port}: {exc.strerror or exc}"
                    ) from None
            if path is not None:
                file = MetricsFile(self.metrics, path)
                try:
                    file.write()
                except OSError as exc:
                    raise MetricsError(
                        f"cannot write --metrics-file {path}: {exc.strerror or exc}"
                    ) from None
                self.file = file
        except MetricsError:
            self.close()
            raise

    def start(self, note: Callable[[str], None]) -> None:
        """Start serving and writing; ``note`` is told where the metrics are."""
        if self.http is not None:
            self.http.start()
            note(f"metrics at {self.http.url}")
        if self.file is not None:
            self.file.start()
            note(f"metrics written to {self.file.path} every {FILE_INTERVAL:g}s")

    def close(self) -> None:
        """Stop serving, write the file a last time, stop collecting."""
        if self.http is not None:
            self.http.close()
        if self.file is not None:
            self.file.close()
        if self.metrics is not None:
            self.metrics.close()
