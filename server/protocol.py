"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits it lacks. httptools buffers
a request's headers without bound and uvicorn times out only idle kept-alive connections, so a
client could hold a connection (and memory) by sending slowly or without end. Here the headers are
bounded in size (431) and in time (408), a body that stops arriving closes its connection, a new
connection that sends nothing is closed like an idle kept-alive one, and connections past a
bound have their request answered 503.

The checks cost nothing on a request that arrives in one read: the timers are armed only when a
request is split across reads."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("mlscore.server")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with size and time limits on reading requests. The limits are
    class attributes: `protocol_class` makes a subclass holding a server's settings."""

    max_header_bytes = 64 * 1024
    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0  # bytes received since the last request's headers ended (an upper bound)
        self._in_body = False  # between a request's headers and its end
        self._last_body_at = 0.0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._over_limit = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Past the bound, the connection's first request is answered 503 (see on_headers_complete).
        self._over_limit = len(self.connections) > self.max_connections
        # Until its first request a connection is idle, and is closed as an idle kept-alive one is.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_body:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._refused or self._in_body:
            if self._in_body and self._body_timer is None and not self._refused:
                self._last_body_at = self.loop.time()
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_stalled)
            return
        if self._header_bytes > self.max_header_bytes:
            self._refuse(431, f"The request line and headers are over the limit of {self.max_header_bytes} bytes.")
        elif self._header_bytes and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def on_message_begin(self) -> None:
        if not self._refused:
            super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._header_bytes > self.max_header_bytes and self._exact_header_bytes() > self.max_header_bytes:
            self._refuse(431, f"The request line and headers are over the limit of {self.max_header_bytes} bytes.")
            return
        if self._over_limit:
            self._refuse(503, f"Too many open connections (the limit is {self.max_connections}); retry later.",
                         [(b"retry-after", b"1")])
            return
        self._header_bytes = 0
        self._in_body = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        if self._body_timer is not None:
            self._last_body_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _exact_header_bytes(self) -> int:
        """The request line and headers, counted when a read held more than the limit: that read
        may have carried a body too."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._in_body or self._refused or not self._header_bytes:
            return
        self._refuse(408, f"The request headers did not arrive within {self.header_timeout:g} seconds.")

    def _body_stalled(self) -> None:
        self._body_timer = None
        if not self._in_body or self._refused:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # Reading is paused while the app is not taking the body: the client is not to blame.
            self._last_body_at = now
        waited = now - self._last_body_at
        if waited < self.body_timeout:
            self._body_timer = self.loop.call_later(self.body_timeout - waited, self._body_stalled)
            return
        self._refuse(408, f"The request body stopped arriving for {self.body_timeout:g} seconds.")

    def _refuse(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer `status` (unless a response is under way on this connection) and close it."""
        self._refused = True
        self._cancel_timers()
        logger.debug("closing a connection from %s: %s", self.client, message)
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = orjson.dumps({"message": message})
            head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]), b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
            head.extend(b"%s: %s\r\n" % pair for pair in headers or ())
            self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


def protocol_class(max_header_bytes: int, header_timeout: float, body_timeout: float,
                   max_connections: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http` setting, holding one server's limits."""
    limits = {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout,
              "body_timeout": body_timeout, "max_connections": max_connections}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), limits)
