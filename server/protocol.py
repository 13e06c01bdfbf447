"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits it lacks. httptools buffers
a request's headers without bound and uvicorn times out only idle kept-alive connections, so a
client could hold a connection (and memory) by sending slowly or without end. Here the headers are
bounded in size (431) and in time (408), a body that stops arriving or arrives too slowly (under a
minimum rate, after a grace period) closes its connection, a new connection that sends nothing is
closed like an idle kept-alive one, and connections past a bound have their request answered 503,
except the health probes: slow clients that fill the connection table must not make a liveness
probe restart a healthy server. Each request on a connection, pipelined or not, is held to these
limits on its own, and a refused request is answered after the requests before it.

The checks cost nothing on a request that arrives in one read: the timers are armed only when a
request is split across reads, and headers are counted one by one only when a read is longer than
their limit.

The scoring POSTs take a shorter way than ASGI (a `DirectHandler`, the app's ScoreFirst): the
connection hands the handler the request once its body is in, and the handler answers it, from a
callback when the scoring is done, with status, headers and body written in one go. No task, no
ASGI messages and no scope per request: on a small model that is about a third of the front's
work. Everything else (other routes and methods, chunked or over-long bodies, `Expect:
100-continue`, requests pipelined behind an unanswered one, streamed responses, requests with an
Origin header when CORS is on) goes through uvicorn's ASGI cycle as before."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
from typing import Any, Callable, Iterable, Protocol

import orjson
import uvicorn
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from mlscore.server.busy_poll import BusyPoll
from mlscore.server.request_ids import pick_headers
from mlscore.server.settings import Settings

logger = logging.getLogger("mlscore.server")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class DirectHandler(Protocol):
    """Answers the scoring POSTs without ASGI (server/app.py's ScoreFirst)."""

    paths: frozenset[bytes]  # the raw paths it takes
    max_body: int  # longer bodies go the ASGI way, which refuses them with 413
    cross_origin: bool  # CORS middleware wraps the app: requests with an Origin header go the ASGI way

    def direct(self, request: "DirectRequest") -> None:
        """Take a request whose body is in; answer it with `request.respond`, now or later."""

    def cut_off(self, request: "DirectRequest") -> None:
        """Answer a request still open when the shutdown's grace period ran out."""


class _NoEvent:
    def set(self) -> None:
        """Nothing waits on a direct request: its handler hears of a lost connection through on_disconnect."""


class DirectRequest:
    """One scoring POST answered by its connection without ASGI. It stands in for uvicorn's
    RequestResponseCycle as the connection's `cycle`, so uvicorn's keep-alive, pipelining and
    shutdown code reads the same attributes from it."""

    __slots__ = ("path", "query", "headers", "picked", "chunks", "keep_alive", "on_disconnect",
                 "response_started", "response_complete", "disconnected", "_connection")

    method = "POST"
    message_event = _NoEvent()  # uvicorn sets a cycle's event when its connection is lost

    def __init__(self, connection: "GuardedHttpToolsProtocol", path: str, query: bytes,
                 headers: list[tuple[bytes, bytes]], picked: dict[bytes, bytes], keep_alive: bool) -> None:
        self.path = path
        self.query = query
        self.headers = headers
        self.picked = picked  # the headers the server reads (request_ids.pick_headers)
        self.chunks: list[bytes] = []
        self.keep_alive = keep_alive
        self.on_disconnect: Callable[[], None] | None = None  # the handler's, while the request waits
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self._connection = connection

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._connection.loop

    @property
    def client(self) -> tuple[str, int] | None:
        return self._connection.client

    @property
    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)

    def respond(self, response: Response) -> None:
        """Send the response (once; nothing when the client has gone). Should writing it fail (a bug
        of ours), the connection is closed rather than left waiting."""
        if self.response_started or self.disconnected:
            return
        try:
            self._connection.respond(self, response)
        except Exception:
            logger.exception("could not write the response to POST %s; closing the connection", self.path)
            self.response_complete = True
            self._connection.transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with size and time limits on reading requests. The limits are
    class attributes: `protocol_class` makes a subclass holding a server's settings."""

    max_header_bytes = 64 * 1024
    header_timeout = 10.0
    body_timeout = 30.0
    body_min_rate = 500  # bytes a second a body averages, after its first body_timeout seconds; 0: no bound
    max_connections = 10_000
    health_paths: frozenset[bytes] = frozenset()  # answered to GET and HEAD past max_connections too
    direct_handler: DirectHandler | None = None
    busy_poll = BusyPoll()  # the server's (see busy_poll.py); this one is never started

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # between a request's first byte and the end of its headers
        self._in_body = False  # between a request's headers and its end
        self._read_bytes = 0  # the length of the read being parsed
        self._read_at_start = False  # no request has begun yet in that read, and none was under way before it
        self._head_bytes = 0  # the reads the request's line and headers came in (an upper bound)
        self._head_shared = 0  # of those, the bytes of its first read when an earlier request came in it too
        self._refusal: bytes | None = None  # the answer to a refused request, once the earlier ones are answered
        self._last_body_at = 0.0
        self._body_started_at = 0.0  # the end of the body's headers, later after reading paused for the app
        self._body_bytes = 0  # of the body being read
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._over_limit = False
        self._direct: DirectRequest | None = None  # the latest request taken without ASGI
        self._reading_direct = False  # the request being read is that one (its body goes to it)
        # The keep-alive timeout, kept lazily: uvicorn arms a timer after every response and cancels it
        # at the next read, two timer operations a request (about 2 µs). Here going idle notes when
        # the connection closes unless a read comes first, and one timer, re-armed only when it
        # fires early, closes it then.
        self._idle_until: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Past the bound, the connection's first request is answered 503 (see on_headers_complete).
        self._over_limit = len(self.connections) > self.max_connections
        # Until its first request a connection is idle, and is closed as an idle kept-alive one is.
        self._go_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        pending = self.pending_direct
        if pending is not None:
            pending.disconnected = True
            if pending.on_disconnect is not None:
                pending.on_disconnect()
        super().connection_lost(exc)

    @property
    def pending_direct(self) -> DirectRequest | None:
        """The scoring request this connection answers without ASGI and has not answered yet."""
        return self._direct if self._direct is not None and not self._direct.response_complete else None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self.busy_poll.woke()
        self._idle_until = None
        self._read_bytes = len(data)
        self._read_at_start = not (self._in_head or self._in_body)
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._refused:
            return
        if self._in_body:
            if self._body_timer is None:  # the read that ended the headers: its time is theirs
                self._last_body_at = self._body_started_at = self.loop.time()
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_late)
            return
        if not self._in_head:
            return
        if self._head_bytes > self.max_header_bytes and self._head_bytes_at_least() > self.max_header_bytes:
            self._refuse(431, f"The request line and headers are over the limit of {self.max_header_bytes} bytes.")
        elif self._header_timer is None:  # the clock starts with the read that brought the request's first byte
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def on_message_begin(self) -> None:
        # uvicorn builds the request's ASGI scope here; it is built in on_headers_complete instead,
        # only for a request that goes the ASGI way.
        if self._refused:
            return
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._in_head = True
        # The whole read counts toward the request's headers (exact when the request opens the read);
        # when an earlier request came in it too, that count is checked against the headers themselves.
        self._head_bytes = self._read_bytes
        self._head_shared = 0 if self._read_at_start else self._read_bytes
        self._read_at_start = False

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._head_bytes > self.max_header_bytes and self._exact_header_bytes() > self.max_header_bytes:
            self._refuse(431, f"The request line and headers are over the limit of {self.max_header_bytes} bytes.")
            return
        if self._over_limit and not self._asks_for_health():
            self._refuse(503, f"Too many open connections (the limit is {self.max_connections}); retry later.",
                         [(b"retry-after", b"1")])
            return
        self._in_head = False
        self._in_body = True
        self._body_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._reading_direct = self.direct_handler is not None and self._take_direct(self.direct_handler)
        if self._reading_direct:
            return
        self.scope = self._new_scope(self.headers)
        super().on_headers_complete()
        if self._over_limit:
            # A probe answered past the bound: its connection closes after the answer rather than
            # stay open and count against the bound.
            self.cycle.keep_alive = False

    def _asks_for_health(self) -> bool:
        """The request is a GET or HEAD of a health route (with or without a query string), not an upgrade."""
        return (self.parser.get_method() in (b"GET", b"HEAD") and self.url.partition(b"?")[0] in self.health_paths
                and not self.parser.should_upgrade())

    def _new_scope(self, headers: list[tuple[bytes, bytes]]) -> Any:
        """A request's ASGI scope as uvicorn's on_message_begin makes it, leaving alone the parser's
        state (the request being read may be a later one than the scope is for)."""
        kept = self.url, self.headers, self.expect_100_continue, self.scope
        super().on_message_begin()
        scope = self.scope
        self.url, self.headers, self.expect_100_continue, self.scope = kept
        scope["headers"] = headers
        return scope

    def _take_direct(self, handler: DirectHandler) -> bool:
        """Start a request without ASGI when it is a POST to a scoring route with a body of declared
        length within the limit, on a connection with nothing else in progress."""
        if self.parser.get_method() != b"POST" or self.expect_100_continue or self.parser.should_upgrade():
            return False
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            return False
        path, _, query = self.url.partition(b"?")  # an absolute URL or a fragment does not match: ASGI
        if path not in handler.paths:
            return False
        picked = pick_headers(self.headers)
        # (httptools refuses a request with two Content-Lengths, or with one beside Transfer-Encoding)
        length = picked.get(b"content-length")
        if length is None or not length.isdigit() or int(length) > handler.max_body:
            return False
        if handler.cross_origin and b"origin" in picked:
            return False
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        self.cycle = self._direct = DirectRequest(  # type: ignore[assignment]  # read as a cycle by uvicorn
            self, path.decode("ascii"), query, self.headers, picked, keep_alive)
        return True

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_timer is not None:
            self._last_body_at = self.loop.time()
        if self._reading_direct:
            assert self._direct is not None
            self._direct.chunks.append(body)  # within the declared length, which is within the limit
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._reading_direct:
            self._reading_direct = False
            assert self.direct_handler is not None and self._direct is not None
            self.direct_handler.direct(self._direct)
        else:
            super().on_message_complete()

    def respond(self, request: DirectRequest, response: Response) -> None:
        """Write a direct request's response: status line, headers and body in one write, or, for a
        streamed body, through an ASGI cycle of its own."""
        request.response_started = True
        if self.transport.is_closing():
            request.response_complete = True
            return
        body = getattr(response, "body", None)
        if not isinstance(body, bytes):
            self._stream(request, response)
            return
        # The headers are the server's own, or run()'s checked already (routes.py): unlike uvicorn's
        # ASGI send, this does not look for characters that would break the response.
        content = [STATUS_LINE[response.status_code]]
        closes = False  # the response says Connection: close
        for name, value in self.server_state.default_headers + response.raw_headers:
            if name == b"connection" and b"close" in value.lower():
                closes = True
            content.extend((name, b": ", value, b"\r\n"))
        if not request.keep_alive and not closes:
            content.append(b"connection: close\r\n")
        content.extend((b"\r\n", body))
        self.transport.write(b"".join(content))
        request.response_complete = True
        if closes or not request.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _stream(self, request: DirectRequest, response: Response) -> None:
        """A streamed body goes out through uvicorn's ASGI cycle (chunked encoding, flow control)."""
        scope = self._new_scope(request.headers)
        scope.update(method="POST", path=request.path, raw_path=request.path.encode(), query_string=request.query)
        cycle = RequestResponseCycle(
            scope=scope, transport=self.transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=False, keep_alive=request.keep_alive, on_response=self.on_response_complete)
        cycle.more_body = False
        request.response_complete = True  # from here on the cycle stands for it
        if self.cycle is request:
            self.cycle = cycle
        self._start_asgi_task(cycle, response)

    def _exact_header_bytes(self) -> int:
        """The request line and headers parsed so far, counted when their reads held more than the
        limit: those reads may have carried a body or another request too."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _head_bytes_at_least(self) -> int:
        """What surely belongs to the headers still arriving: every read after the first, the first too
        when the request opened it, and in any case the headers parsed so far."""
        return max(self._head_bytes - self._head_shared, self._exact_header_bytes())

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._in_head or self._refused:
            return
        if self.flow.read_paused:
            # Reading is paused while earlier requests are answered: the client is not to blame.
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)
            return
        self._refuse(408, f"The request headers did not arrive within {self.header_timeout:g} seconds.")

    def _body_late(self) -> None:
        """A body gets a 408 when it pauses for body_timeout seconds, or when it is not in by its
        deadline: body_timeout seconds from the end of its headers, plus one more per body_min_rate
        bytes received. The pause bound alone let a byte every few seconds hold a connection for as
        long as the body was long."""
        self._body_timer = None
        if not self._in_body or self._refused:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # Reading is paused while the app is not taking the body: the client is not to blame, and
            # has body_timeout seconds again from now, as at the end of the headers.
            self._last_body_at = now
            if self.body_min_rate:
                self._body_started_at = max(self._body_started_at, now - self._body_bytes / self.body_min_rate)
        paused_until = self._last_body_at + self.body_timeout
        if now >= paused_until:
            self._refuse(408, f"The request body stopped arriving for {self.body_timeout:g} seconds.")
            return
        due = self._body_due()
        if now >= due:
            self._refuse(408, f"The request body arrived slower than {self.body_min_rate} bytes per second: "
                              f"{self._body_bytes} bytes in {now - self._body_started_at:.0f} seconds.")
            return
        self._body_timer = self.loop.call_later(min(paused_until, due) - now, self._body_late)

    def _body_due(self) -> float:
        """When the body being read must be in, at the rate it has been given so far."""
        if not self.body_min_rate:
            return math.inf
        return self._body_started_at + self.body_timeout + self._body_bytes / self.body_min_rate

    def on_response_complete(self) -> None:
        # What uvicorn's does, but for its keep-alive timer (see _go_idle: uvicorn's is never armed here).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._in_head:  # a request's headers are arriving: the header timer runs, not the idle one
            self._go_idle()
        if self._refusal is not None and not self.transport.is_closing() and not self._earlier_pending():
            self.transport.write(self._refusal)
            self.transport.close()

    def _go_idle(self) -> None:
        """The connection waits for a request: it is closed after the keep-alive timeout unless a read comes first."""
        self._idle_until = self.loop.time() + self.timeout_keep_alive
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._idle_until is None:  # busy since: armed again when it next goes idle
            return
        left = self._idle_until - self.loop.time()
        if left > 0:  # busy and idle again since the timer was armed
            self._idle_timer = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()

    def _earlier_pending(self) -> bool:
        """Requests before the one whose headers are being read still wait for their answers."""
        return (self.cycle is not None and not self.cycle.response_complete) or bool(self.pipeline)

    def _refuse(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer `status` and close the connection. A request refused in its headers is answered
        after the requests before it; one refused in its body, unless its response is under way."""
        self._refused = True
        self._cancel_timers()
        logger.debug("closing a connection from %s: %s", self.client, message)
        if self.transport.is_closing():
            return
        body = orjson.dumps({"message": message})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]), b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
        head.extend(b"%s: %s\r\n" % pair for pair in headers or ())
        answer = b"".join([*head, b"\r\n", body])
        if self._in_head and self._earlier_pending():
            self._refusal = answer  # written by on_response_complete, after the last earlier answer
            return
        if self._in_head or self.cycle is None or not self.cycle.response_started:
            self.transport.write(answer)
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


def protocol_class(settings: Settings, max_connections: int, health_paths: Iterable[str],
                   direct_handler: DirectHandler | None = None, busy_poll: BusyPoll | None = None
                   ) -> type[GuardedHttpToolsProtocol] | str:
    """The protocol class for uvicorn's `http` setting, holding one listener's limits: the settings'
    header and body limits, its bound on connections and the paths answered past it (and the
    handler of the scoring POSTs, when they are answered without ASGI, and the busy polling its reads
    keep going). When this uvicorn lacks the internals the class builds on, uvicorn's own
    "httptools" protocol instead: every request through ASGI, bodies bounded by the routes,
    connections by uvicorn's limit_concurrency (health routes included), and no header or body
    time limits (see `fallback_limits`)."""
    missing = missing_internals()
    if missing:
        logger.warning("uvicorn %s lacks what mlscore's HTTP protocol builds on (%s): serving with uvicorn's "
                       "plain httptools protocol, without header and body time limits; install a uvicorn within "
                       "the range pyproject.toml pins", uvicorn.__version__, ", ".join(missing))
        return "httptools"
    limits = {"max_header_bytes": settings.max_header_bytes, "header_timeout": settings.header_timeout,
              "body_timeout": settings.body_timeout, "body_min_rate": settings.body_min_rate,
              "max_connections": max_connections, "health_paths": frozenset(path.encode() for path in health_paths),
              "direct_handler": direct_handler}
    if busy_poll is not None:
        limits["busy_poll"] = busy_poll
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), limits)


def fallback_limits(http: type[GuardedHttpToolsProtocol] | str, max_connections: int) -> dict[str, Any]:
    """uvicorn.Config settings that bound what the plain protocol would leave open."""
    return {"limit_concurrency": max_connections} if isinstance(http, str) else {}


# What GuardedHttpToolsProtocol uses of uvicorn's HttpToolsProtocol and RequestResponseCycle beyond
# their public surface: methods it overrides or calls, attributes it reads on a connection.
_METHODS = ("connection_made", "connection_lost", "data_received", "on_message_begin", "on_url", "on_headers_complete",
            "on_body", "on_message_complete", "on_response_complete", "timeout_keep_alive_handler",
            "_unset_keepalive_if_required", "_start_asgi_task")
_ATTRIBUTES = ("connections", "timeout_keep_alive", "timeout_keep_alive_task", "loop", "expect_100_continue",
               "headers", "scope", "parser", "cycle", "pipeline", "transport", "server_state", "flow", "logger",
               "access_logger", "access_log", "client")
_CYCLE_ARGUMENTS = ("scope", "transport", "flow", "logger", "access_logger", "access_log", "default_headers",
                    "message_event", "expect_100_continue", "keep_alive", "on_response")


@functools.cache
def missing_internals() -> tuple[str, ...]:
    """The names of uvicorn's internals that this module needs and this uvicorn lacks (none: empty).
    A connection is made on a stand-in transport to see the attributes it really has."""
    missing = [f"HttpToolsProtocol.{name}" for name in _METHODS if not callable(getattr(HttpToolsProtocol, name, None))]
    cycle = inspect.signature(RequestResponseCycle).parameters
    missing += [f"RequestResponseCycle({name}=)" for name in _CYCLE_ARGUMENTS if name not in cycle]
    if not isinstance(STATUS_LINE, dict) or 200 not in STATUS_LINE:
        missing.append("STATUS_LINE")
    if not hasattr(ServerState(), "total_requests"):  # counted by on_response_complete, as uvicorn's does
        missing.append("ServerState().total_requests")
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(_no_app, lifespan="off", log_config=None)
        config.load()
        connection = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        connection.connection_made(_StandInTransport())  # type: ignore[arg-type]
        missing += [f"HttpToolsProtocol().{name}" for name in _ATTRIBUTES if not hasattr(connection, name)]
        connection.connection_lost(None)
    except Exception as error:  # a constructor that changed its signature, among others
        missing.append(f"HttpToolsProtocol ({type(error).__name__}: {error})")
    finally:
        loop.close()
    return tuple(missing)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """The app of the connection `missing_internals` makes; no request reaches it."""


class _StandInTransport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to close."""
