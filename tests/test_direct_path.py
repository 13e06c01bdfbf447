"""The scoring POSTs answered by the connection itself, without ASGI (server/protocol.py), against a
real server over raw sockets: what a client sees must be plain HTTP/1.1 whichever way a request
went, with keep-alive, pipelining, HTTP/1.0, `Connection: close`, bodies split across reads, and the
requests that still go the ASGI way (chunked bodies, `Expect: 100-continue`) on the same connection."""

from __future__ import annotations

import socket
import time
from typing import BinaryIO

import pytest

from conftest import SCRIPTS, Server, read_response, start_server


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Server:
    server = start_server(tmp_path_factory.mktemp("direct"), "--entry-script", str(SCRIPTS / "raw_echo.py"))
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def post(body: bytes, *extra: bytes, path: bytes = b"/score", version: bytes = b"1.1") -> bytes:
    head = [b"POST %s HTTP/%s" % (path, version), b"Host: t", b"Content-Type: text/plain",
            b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def closed(stream: BinaryIO) -> bool:
    """True when the server closed the connection (EOF) within the socket's timeout."""
    return stream.read(1) == b""


def test_pipelined_requests_are_answered_in_order_on_one_connection(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"first") + post(b"second") + b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n"
                     + post(b"third") + post(b"{}", path=b"/score?mode=status"))
        answers = [read_response(stream) for _ in range(5)]
    assert [(status, body) for status, _, body in answers] == [
        (200, b"first"), (200, b"second"), (200, b'{"live":true}'), (200, b"third"), (418, b'{"teapot":true}')]
    for status, headers, _ in answers:
        assert b"date" in headers and b"connection" not in headers
    scored = [headers for _, headers, body in answers if body != b'{"live":true}']
    assert len({headers[b"x-request-id"] for headers in scored}) == 4
    assert all(headers[b"x-ms-run-function-failed"] == b"False" for headers in scored)
    assert all(headers[b"server-timing"].startswith(b"queue;dur=") for headers in scored)
    assert answers[4][1][b"x-from-run"] == b"yes"


def test_many_requests_on_one_kept_alive_connection(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        for index in range(200):
            sock.sendall(post(b"request %d" % index, b"x-request-id: id-%d" % index))
            status, headers, body = read_response(stream)
            assert (status, body, headers[b"x-request-id"]) == (200, b"request %d" % index, b"id-%d" % index)


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"old", version=b"1.0"))
        status, headers, body = read_response(stream)
        assert (status, body, headers[b"connection"]) == (200, b"old", b"close")
        assert closed(stream)
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"last", b"Connection: close"))
        status, headers, body = read_response(stream)
        assert (status, body, headers[b"connection"]) == (200, b"last", b"close")
        assert closed(stream)


def test_a_body_split_across_reads_is_put_together(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        request = post(b"0123456789" * 1000)
        for start in range(0, len(request), 3000):
            sock.sendall(request[start:start + 3000])
            time.sleep(0.02)
        status, _, body = read_response(stream)
    assert (status, body) == (200, b"0123456789" * 1000)


def test_chunked_bodies_and_expect_continue_go_the_asgi_way_on_the_same_connection(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert read_response(stream)[::2] == (200, b"hello world")
        sock.sendall(post(b"direct"))
        assert read_response(stream)[::2] == (200, b"direct")
        sock.sendall(post(b"waited", b"Expect: 100-continue")[:-len(b"waited")])
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n" and stream.readline() == b"\r\n"
        sock.sendall(b"waited")
        assert read_response(stream)[::2] == (200, b"waited")


def test_a_response_header_that_is_not_valid_http_is_a_500_and_the_connection_goes_on(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"", path=b"/score?mode=bad-header"))
        status, headers, body = read_response(stream)
        assert status == 500 and b"not valid HTTP" in body and b"injected" not in headers
        sock.sendall(post(b"after"))
        assert read_response(stream)[::2] == (200, b"after")
    assert "is not valid HTTP" in echo.wait_log("is not valid HTTP")


def test_a_status_from_run_that_is_not_http_is_a_500_and_the_connection_goes_on(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"", path=b"/score?mode=bad-status&status=1000") + post(b"after"))
        status, _, body = read_response(stream)
        assert status == 500 and b"status 1000" in body
        assert read_response(stream)[::2] == (200, b"after")


def test_204_and_304_go_out_without_a_body_and_the_next_answer_follows(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"", path=b"/score?mode=no-content&status=204")
                     + post(b"", path=b"/score?mode=no-content&status=304") + post(b"after"))
        answers = [read_response(stream) for _ in range(3)]
    assert [(status, body) for status, _, body in answers] == [(204, b""), (304, b""), (200, b"after")]
    assert b"content-length" not in answers[0][1] and b"transfer-encoding" not in answers[0][1]
    assert b"content-length" not in answers[1][1]


def test_a_streamed_answer_after_direct_ones_keeps_the_connection_usable(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"before") + post(b"", path=b"/score?mode=stream") + post(b"after"))
        answers = [read_response(stream) for _ in range(3)]
    assert [body for _, _, body in answers] == [b"before", b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;", b"after"]
    assert answers[1][1][b"transfer-encoding"] == b"chunked"


def test_with_cors_a_request_with_an_origin_gets_the_cors_headers_and_one_without_is_answered_as_usual(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "raw_echo.py"),
                          "--cors-origins", "https://app.example")
    try:
        with connect(server) as sock, sock.makefile("rb") as stream:
            sock.sendall(post(b"from a page", b"Origin: https://app.example") + post(b"from a script"))
            (status, headers, body), plain = read_response(stream), read_response(stream)
        assert (status, body) == (200, b"from a page")
        assert headers[b"access-control-allow-origin"] == b"https://app.example"
        assert b"x-request-id" in headers[b"access-control-expose-headers"]
        assert plain[::2] == (200, b"from a script") and b"access-control-allow-origin" not in plain[1]
    finally:
        server.stop()


def test_a_websocket_upgrade_on_a_new_connection_is_refused_as_before_and_scoring_goes_on(echo):
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"GET /score HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert stream.readline().startswith(b"HTTP/1.1 403")  # no WebSocket route: refused by the app
    with connect(echo) as sock, sock.makefile("rb") as stream:
        sock.sendall(post(b"after"))
        assert read_response(stream)[::2] == (200, b"after")
