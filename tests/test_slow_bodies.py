"""Slow bodies (issue 16, item 3): a body must average --body-min-rate bytes a second after its first
--body-timeout seconds, or it is a 408; and the health routes answer even when slow clients hold
every connection the server allows, so that a liveness probe does not restart a healthy server."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from typing import Any, Callable

import httpx
import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from conftest import SCRIPTS, Server, connect, read_until_closed, start_server, status_and_body
from mlscore.server import protocol
from mlscore.server.errors import BytesResponse
from mlscore.server.protocol import DirectRequest
from mlscore.server.settings import Settings

TIMEOUT = 1.0  # --body-timeout of the servers here
MIN_RATE = 1000  # --body-min-rate of the rate server


def sleepy_server(tmp_path, *args: str) -> Server:
    return start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "threads", *args)


@pytest.fixture(scope="module")
def rate_server(tmp_path_factory) -> Server:
    server = sleepy_server(tmp_path_factory.mktemp("rate"), "--body-timeout", str(TIMEOUT),
                           "--body-min-rate", str(MIN_RATE))
    yield server
    server.stop()


def trickle(sock: socket.socket, body: bytes, chunk: int, every: float, within: float) -> None:
    """Send `body`, `chunk` bytes every `every` seconds on a fixed schedule, until it is all sent or
    the server answers (its answer is then left to read); fails if neither happens within `within`."""
    started = time.monotonic()
    for number, start in enumerate(range(0, len(body), chunk)):
        answered, _, _ = select.select([sock], [], [], max(started + number * every - time.monotonic(), 0))
        if answered:
            return
        assert time.monotonic() - started < within, f"no answer {within} s into a body sent at {chunk / every:g} B/s"
        try:
            sock.sendall(body[start:start + chunk])
        except OSError:  # the server closed the connection: its answer, if any, is read next
            return


def post_head(length: int) -> bytes:
    return (b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % length)


# --- the minimum rate, on a real server ---------------------------------------------------------

def test_body_below_the_min_rate_is_408_though_it_never_pauses_for_the_body_timeout(rate_server):
    started = time.monotonic()  # before the server's clock starts, however slow the machine
    with connect(rate_server) as sock:
        sock.sendall(post_head(100_000))
        # 50 B/s, a pause of a fifth of --body-timeout: only the rate can end this body.
        trickle(sock, b"x" * 100_000, chunk=10, every=TIMEOUT / 5, within=15)
        status, body = status_and_body(read_until_closed(sock, within=5))
    assert status == 408
    assert body["message"].startswith(f"The request body arrived slower than {MIN_RATE} bytes per second: ")
    # Its deadline: --body-timeout, plus a second per MIN_RATE bytes received (a few dozen).
    assert time.monotonic() - started >= TIMEOUT * 0.95


def test_body_above_the_min_rate_may_take_longer_than_the_body_timeout(rate_server):
    body = orjson.dumps({"ms": 0, "pad": "y" * 12_000})
    started = time.monotonic()
    with connect(rate_server) as sock:
        sock.sendall(post_head(len(body)))
        trickle(sock, body, chunk=500, every=0.1, within=30)  # 5000 B/s for about 2.4 s
        status, answer = status_and_body(read_until_closed(sock, within=10))
    assert status == 200 and answer["slept_ms"] == 0
    assert time.monotonic() - started > 2 * TIMEOUT


def test_min_rate_0_leaves_only_the_pause_bound(tmp_path):
    server = sleepy_server(tmp_path, "--body-timeout", str(TIMEOUT), "--body-min-rate", "0")
    try:
        body = orjson.dumps({"ms": 0, "pad": "y" * 100})
        started = time.monotonic()
        with connect(server) as sock:
            sock.sendall(post_head(len(body)))
            trickle(sock, body, chunk=10, every=TIMEOUT / 5, within=30)  # 50 B/s for about 2.4 s
            status, answer = status_and_body(read_until_closed(sock, within=10))
        assert status == 200 and answer["slept_ms"] == 0
        assert time.monotonic() - started > 2 * TIMEOUT
    finally:
        server.stop()


# --- health past the connection bound ------------------------------------------------------------

def test_health_routes_answer_when_slow_bodies_hold_every_connection(tmp_path):
    server = sleepy_server(tmp_path, "--max-connections", "3")
    try:
        assert httpx.get(server.url + "/health/ready", timeout=30).status_code == 200
        slow = [connect(server) for _ in range(3)]
        for sock in slow:
            sock.sendall(post_head(100_000) + b'{"ms": 0, "pad": "')
        for request in (b"GET /health/live", b"GET /health/ready", b"GET /", b"GET /v2/health/live?probe=1",
                        b"HEAD /health/live"):
            with connect(server) as probe:
                probe.sendall(request + b" HTTP/1.1\r\nHost: t\r\n\r\n")
                response = read_until_closed(probe, within=10)  # answered, then closed: past the bound
            assert response.startswith(b"HTTP/1.1 200 "), (request, response[:300])
            assert b"\r\nconnection: close\r\n" in response.lower()
        with connect(server) as score:
            score.sendall(post_head(9) + b'{"ms": 0}')
            response = read_until_closed(score, within=10)
        status, body = status_and_body(response)
        assert status == 503 and "the limit is 3" in body["message"]
        assert b"\r\nretry-after: 1\r\n" in response.lower()
        with connect(server) as other:  # other GETs stay refused too
            other.sendall(b"GET /swagger.json HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_and_body(read_until_closed(other, within=10))[0] == 503
        # The slow bodies still hold their connections: none was answered to make room.
        assert select.select(slow, [], [], 0)[0] == []
        for sock in slow:
            sock.close()
    finally:
        server.stop()


# --- in process: the deadline's arithmetic, with a clock the test moves -------------------------

class _Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """The connection's loop, as far as its timers go: time moves only in `advance`, which runs the
    timers it passes, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_Timer] = []
        self.made = 0  # timers armed, ever

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> _Timer:
        timer = _Timer(self.now + delay, lambda: callback(*args))
        self.timers.append(timer)
        self.made += 1
        return timer

    def armed(self) -> list[_Timer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := sorted((timer for timer in self.armed() if timer.when <= end), key=lambda timer: timer.when):
            self.timers.remove(due[0])
            self.now = max(self.now, due[0].when)
            due[0].callback()
        self.now = end


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        """Nothing reads here anyway."""

    def resume_reading(self) -> None:
        """Nothing reads here anyway."""


class Handler:
    """A direct handler that keeps the requests whose bodies came in."""

    paths = frozenset({b"/score"})
    max_body = 1 << 20
    cross_origin = False

    def __init__(self) -> None:
        self.requests: list[DirectRequest] = []

    def direct(self, request: DirectRequest) -> None:
        self.requests.append(request)

    def cut_off(self, request: DirectRequest) -> None:
        """Not reached: nothing shuts down here."""


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """Every request here is a direct one."""


def connection(clock: Clock, handler: Handler, keep_alive: float = 5.0
               ) -> tuple[protocol.GuardedHttpToolsProtocol, Transport]:
    settings = Settings.build({"entry_script": "x.py", "body_timeout": TIMEOUT, "body_min_rate": MIN_RATE},
                              environ={})
    config = uvicorn.Config(_no_app, lifespan="off", log_config=None, timeout_keep_alive=keep_alive)  # type: ignore[arg-type]
    config.load()
    http = protocol.protocol_class(settings, 100, (), handler)
    assert not isinstance(http, str)
    made = http(config=config, server_state=ServerState(), app_state={}, _loop=clock)  # type: ignore[arg-type]
    transport = Transport()
    made.connection_made(transport)
    return made, transport


def test_a_request_in_one_read_arms_no_timer():
    clock, handler = Clock(), Handler()
    made, _ = connection(clock, handler)
    idle = clock.armed()  # the keep-alive timeout's, armed once when the connection was made, and left armed
    made.data_received(post_head(9) + b'{"ms": 0}')
    assert len(handler.requests) == 1 and clock.armed() == idle and len(idle) == 1


def test_body_is_cut_at_body_timeout_plus_a_second_per_min_rate_bytes():
    clock, handler = Clock(), Handler()
    made, transport = connection(clock, handler)
    made.data_received(post_head(100_000) + b"x" * 500)
    while not transport.closed and clock.now < 10:
        clock.advance(0.1)
        made.data_received(b"x" * 10)  # 100 B/s after the first 500 bytes
    # Due when now = 1 s + (500 + 10 * 10 * now) / 1000 B/s, that is at 1.5 / 0.9 = 1.67 s.
    assert 1.6 <= clock.now <= 1.8
    assert transport.written.startswith(b"HTTP/1.1 408 ") and handler.requests == []
    assert b"slower than 1000 bytes per second: " in transport.written


def test_reading_paused_for_the_app_does_not_count_against_the_body():
    clock, handler = Clock(), Handler()
    made, transport = connection(clock, handler)
    made.data_received(post_head(20_010) + b"x" * 10)
    made.flow.pause_reading()  # as when the app does not take the body
    clock.advance(10 * TIMEOUT)
    assert not transport.closed
    made.flow.resume_reading()
    for _ in range(20):  # then 2000 B/s, twice the minimum
        made.data_received(b"x" * 1000)
        clock.advance(0.5)
    assert not transport.closed and len(handler.requests) == 1


# --- the keep-alive timeout, kept lazily (one timer, armed again only when it fires early) -------

KEEP_ALIVE = 2.0
KEPT_ALIVE = b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n{\"ms\": 0}"


def answer(handler: Handler) -> None:
    handler.requests.pop(0).respond(BytesResponse(200, [(b"content-type", b"application/json")], b"{}"))


def closes_after_keep_alive(clock: Clock, transport: Transport) -> bool:
    """Still open just before the keep-alive timeout from now, closed just after it."""
    clock.advance(KEEP_ALIVE - 0.01)
    if transport.closed:
        return False
    clock.advance(0.02)
    return transport.closed


def test_a_connection_that_sends_nothing_closes_at_the_keep_alive_timeout():
    clock, handler = Clock(), Handler()
    _, transport = connection(clock, handler, KEEP_ALIVE)
    assert closes_after_keep_alive(clock, transport)


def test_an_idle_connection_closes_at_the_keep_alive_timeout_after_its_last_answer():
    clock, handler = Clock(), Handler()
    made, transport = connection(clock, handler, KEEP_ALIVE)
    for _ in range(3):  # requests at 1.5 s intervals, each answered 0.5 s later: never idle for 2 s
        clock.advance(1.5)
        made.data_received(KEPT_ALIVE)
        clock.advance(0.5)
        answer(handler)
    assert transport.written.count(b"HTTP/1.1 200 ") == 3
    assert closes_after_keep_alive(clock, transport)


def test_quick_requests_arm_the_idle_timer_about_once_per_timeout_not_once_per_request():
    clock, handler = Clock(), Handler()
    made, transport = connection(clock, handler, KEEP_ALIVE)
    for _ in range(300):  # 3 s of requests, 10 ms apart, each answered at once
        clock.advance(0.01)
        made.data_received(KEPT_ALIVE)
        answer(handler)
    assert transport.written.count(b"HTTP/1.1 200 ") == 300
    assert clock.made <= 3, f"{clock.made} timers armed for 300 requests"
    assert closes_after_keep_alive(clock, transport)


def test_a_request_in_flight_longer_than_the_keep_alive_timeout_keeps_its_connection():
    clock, handler = Clock(), Handler()
    made, transport = connection(clock, handler, KEEP_ALIVE)
    made.data_received(KEPT_ALIVE)
    clock.advance(10 * KEEP_ALIVE)  # run() takes its time
    assert not transport.closed
    answer(handler)
    assert transport.written.startswith(b"HTTP/1.1 200 ")
    assert closes_after_keep_alive(clock, transport)


def test_a_closed_connection_leaves_no_idle_timer_armed():
    clock, handler = Clock(), Handler()
    made, transport = connection(clock, handler, KEEP_ALIVE)
    made.data_received(KEPT_ALIVE)
    answer(handler)
    transport.close()
    made.connection_lost(None)
    assert clock.armed() == []
