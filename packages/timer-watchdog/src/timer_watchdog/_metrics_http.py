"""Serve a server's metrics over HTTP: ``/metrics`` and ``/healthz``, from a thread.

Apart from :mod:`._metrics` so that ``http.server`` (and the ``http.client``,
``email`` and ``ssl`` modules it imports) loads only when an address is given.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from typing import Any

from .__about__ import __version__
from ._metrics import CONTENT_TYPE, Metrics

__all__ = ["MetricsHTTP"]

logger = logging.getLogger("timer_watchdog")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.metrics = metrics
        super().__init__(address, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = f"timer-watchdog/{__version__}"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.partition("?")[0]
        metrics = self.server.metrics
        if path == "/metrics":
            status, content_type, text = 200, CONTENT_TYPE, metrics.render()
        elif path == "/healthz":
            health = metrics.health()
            status = 200 if health.alive else 503
            content_type, text = "text/plain; charset=utf-8", health.text + "\n"
        else:
            status, content_type, text = 404, "text/plain; charset=utf-8", "not found\n"
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics: " + format, *args)


class MetricsHTTP:
    """Serve ``/metrics`` and ``/healthz`` from a thread, on ``address`` (``port`` 0: any free)."""

    def __init__(self, metrics: Metrics, address: tuple[str, int]) -> None:
        self._httpd = _HTTPServer(address, metrics)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="timer-watchdog-metrics",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The URL of the metrics page, with the port actually bound."""
        host, port = self._httpd.server_address[:2]
        assert isinstance(host, str)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> None:
        """Answer requests from now on."""
        self._thread.start()

    def close(self) -> None:
        """Stop answering and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
