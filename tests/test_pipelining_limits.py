"""The header limits (size 431, time 408) hold for every request on a connection, also for one
pipelined behind another in the same write, and a refused request is answered only after the
requests before it (issue 16, item 6). Raw sockets against a real server."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from conftest import SCRIPTS, Server, read_response, start_server

HEADER_TIMEOUT = 1.0  # the keep-alive timeout stays at its default (75 s), as in the report


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    server = start_server(tmp_path_factory.mktemp("pipelining"), "--entry-script", str(SCRIPTS / "sleepy.py"),
                          "--executor", "threads", "--header-timeout", str(HEADER_TIMEOUT))
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def score(ms: int) -> bytes:
    """A valid scoring POST that takes `ms` milliseconds to answer."""
    body = orjson.dumps({"ms": ms})
    return (b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body


def big_get(header_bytes: int) -> bytes:
    return b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * header_bytes + b"\r\n\r\n"


@pytest.mark.parametrize("header_bytes", [100_000, 200_000])
def test_oversized_headers_pipelined_behind_a_valid_post_are_431_after_its_200(server, header_bytes):
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(score(200) + big_get(header_bytes))
        first = read_response(stream)
        second = read_response(stream)
        assert stream.read(1) == b""  # closed after the refusal
    assert first[0] == 200 and orjson.loads(first[2])["slept_ms"] == 200
    assert second[0] == 431 and "over the limit of 65536 bytes" in orjson.loads(second[2])["message"]
    assert second[1][b"connection"] == b"close"


def test_pipelined_headers_within_the_limit_are_answered(server):
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(score(0) + big_get(30_000) + score(0))
        assert [read_response(stream)[0] for _ in range(3)] == [200, 200, 200]


def test_partial_headers_pipelined_behind_a_valid_request_are_408_within_the_header_timeout(server):
    started = time.monotonic()
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(score(0) + b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        assert read_response(stream)[0] == 200
        status, headers, body = read_response(stream)
        assert stream.read(1) == b""
    elapsed = time.monotonic() - started
    assert status == 408 and "did not arrive within 1 seconds" in orjson.loads(body)["message"]
    assert HEADER_TIMEOUT * 0.9 <= elapsed < 5


def test_partial_headers_behind_a_slow_request_are_408_after_its_answer(server):
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(score(int(HEADER_TIMEOUT * 1500)) + b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        first = read_response(stream)
        second = read_response(stream)
    assert first[0] == 200 and orjson.loads(first[2])["slept_ms"] == int(HEADER_TIMEOUT * 1500)
    assert second[0] == 408
