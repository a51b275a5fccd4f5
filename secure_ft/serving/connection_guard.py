"""The connection guard: slow or idle clients cannot hold the server's connections or open files.

uvicorn times out idle kept-alive connections but not a client that sends its headers or its
body at a byte a second, and it accepts every connection (an open file each) before it looks
at any limit. :func:`guarded_protocol` returns uvicorn's httptools protocol with a deadline on
each stage of a request:

* headers: ``header_timeout_s`` from connecting (or from the first byte of the next request
  on a kept-alive connection) to the end of the headers; at most ``MAX_HEADER_BYTES`` of
  request line and headers;
* body: ``body_timeout_s`` from the end of the headers to the end of the body;
* connections: one past ``max_connections`` is answered ``503`` (``Retry-After``) and closed
  before any byte of it is read.

A client that misses a deadline has its connection closed (the app then sees a disconnect);
each closure is counted in ``secure_ft_connections_closed{reason=...}`` and logged in one line.
"""

from __future__ import annotations

import asyncio
import logging

from secure_ft.serving.metrics import ServerMetrics
from secure_ft.serving.settings import ServeSettings

log = logging.getLogger("secure_ft.serving.connections")

#: request line plus headers; a request with more is refused (431) and its connection closed
MAX_HEADER_BYTES = 64 * 1024
#: open files kept free of client connections (model, logs, sockets of the event loop)
RESERVED_FILES = 64



def _raw_response(status: str, message: str, *headers: str) -> bytes:
    body = ('{"error": "%s"}' % message).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close",
            f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_OVER_LIMIT = _raw_response("503 Service Unavailable", "too many connections; retry in a second", "Retry-After: 1")
_HEADERS_TOO_LARGE = _raw_response("431 Request Header Fields Too Large", "request line and headers exceed 64 KiB")


def guarded_protocol(settings: ServeSettings, metrics: ServerMetrics) -> type[asyncio.Protocol]:
    """uvicorn's httptools HTTP protocol class with header/body deadlines and a connection limit."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._header_bytes = 0
            self._refused = False  # closed by the guard: the parser's remaining callbacks start nothing

        # -- connection ---------------------------------------------------------------------

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            metrics.open_connections.set(len(self.connections))
            if len(self.connections) > settings.max_connections:
                self._close("connection_limit", _OVER_LIMIT)
                return
            self._arm(settings.header_timeout_s, "header_timeout")

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)
            metrics.open_connections.set(len(self.connections))

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():  # closed by a deadline: read nothing more
                return
            super().data_received(data)

        # -- request stages -----------------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            if self._deadline is None:  # the next request on a kept-alive connection
                self._arm(settings.header_timeout_s, "header_timeout")

        def on_url(self, url: bytes) -> None:
            self._count_header_bytes(len(url))
            if not self._refused:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header_bytes(len(name) + len(value))
            if not self._refused:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            self._arm(settings.body_timeout_s, "body_timeout")
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()
            if not self._refused:
                super().on_message_complete()

        # -- deadlines ----------------------------------------------------------------------

        def _count_header_bytes(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > MAX_HEADER_BYTES and not self._refused:
                self._close("headers_too_large", _HEADERS_TOO_LARGE)

        def _arm(self, seconds: float, reason: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._close, reason)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _close(self, reason: str, answer: bytes | None = None) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            self._refused = True
            metrics.connections_closed.labels(reason).inc()
            client = "%s:%d" % self.client if self.client else "-"
            log.info("closed connection from %s: %s", client, reason.replace("_", " "))
            if answer is not None and (self.cycle is None or not self.cycle.response_started):
                self.transport.write(answer)
            self.transport.close()

    return GuardedHttpToolsProtocol


def check_open_file_limit(settings: ServeSettings) -> None:
    """Raise the soft open-file limit to fit ``max_connections`` (up to the hard limit), or refuse.

    Raises
    ------
    secure_ft.errors.ConfigError
        The hard limit is too low for ``max_connections`` plus `RESERVED_FILES`.
    """
    import resource

    from secure_ft.errors import ConfigError

    needed = settings.max_connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ConfigError(f"serve: --max-connections {settings.max_connections} needs {needed} open files but the "
                              f"limit is {hard} (`ulimit -Hn`); lower --max-connections to {max(1, hard - RESERVED_FILES)} "
                              "or raise the limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
