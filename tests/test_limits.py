"""Limits on what a client can make the server hold: body size (413 before the body is read in
full), header size (431), slow headers and bodies (408 and a closed connection), idle connections,
the connection bound (503), and JSON the server decodes: nesting depth, bad bytes, huge numbers,
NaN and Infinity are 400s, never a crash."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from conftest import EXAMPLES, SCRIPTS, Server, connect, read_until_closed, start_server, status_and_body
from mlscore.server.settings import Settings, SettingsError

MAX_BODY = 1000
MAX_HEADERS = 4096
TIMEOUT = 1.0  # the header, body and keep-alive timeouts of the limits server


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory) -> Server:
    server = start_server(
        tmp_path_factory.mktemp("limits"), "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "threads",
        "--max-concurrent-requests", "4", "--max-body-bytes", str(MAX_BODY), "--max-header-bytes", str(MAX_HEADERS),
        "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT), "--keep-alive-timeout", str(TIMEOUT),
    )
    yield server
    server.stop()


# --- body size --------------------------------------------------------------------------------

def test_declared_body_over_the_limit_is_refused_before_it_is_sent(limits_server):
    with connect(limits_server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\n\r\n" + b"x" * 100)
        # 100 bytes of a declared gigabyte: the answer comes, and the connection closes, without the rest.
        response = read_until_closed(sock, within=5)
    status, body = status_and_body(response)
    assert status == 413 and body == {"message": f"Request body is larger than the limit of {MAX_BODY} bytes."}
    assert b"connection: close" in response.lower()


def test_streamed_body_over_the_limit_is_refused_as_it_arrives(limits_server):
    with connect(limits_server) as sock:
        chunk = b"x" * (MAX_BODY + 200)
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(chunk), chunk))  # no last chunk: the body never ends
        status, _ = status_and_body(read_until_closed(sock, within=5))
    assert status == 413


def test_body_at_the_limit_is_accepted(limits_server):
    body = orjson.dumps({"ms": 0, "pad": "x" * (MAX_BODY - 17)})
    assert len(body) == MAX_BODY
    assert httpx.post(limits_server.url + "/score", content=body).status_code == 200


# --- header size ------------------------------------------------------------------------------

def test_headers_over_the_limit_are_431(limits_server):
    response = httpx.get(limits_server.url + "/health/live", headers={"x-big": "a" * MAX_HEADERS})
    assert response.status_code == 431
    assert "over the limit of 4096 bytes" in response.json()["message"]
    assert httpx.get(limits_server.url + "/health/live", headers={"x-fine": "a" * 1000}).status_code == 200


def test_endless_header_is_cut_off_before_it_ends(limits_server):
    with connect(limits_server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"a" * (MAX_HEADERS * 4))
        status, _ = status_and_body(read_until_closed(sock, within=5))
    assert status == 431


def test_long_url_counts_toward_the_header_limit(limits_server):
    response = httpx.get(limits_server.url + "/score", params={"data": "1" * MAX_HEADERS})
    assert response.status_code == 431


# --- slow clients -----------------------------------------------------------------------------

def test_headers_that_do_not_arrive_in_time_are_408(limits_server):
    started = time.monotonic()  # before the server can have started its clock, however slow the machine
    with connect(limits_server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\n")
        status, body = status_and_body(read_until_closed(sock, within=TIMEOUT + 4))
    assert status == 408 and "did not arrive within 1 seconds" in body["message"]
    assert time.monotonic() - started >= TIMEOUT * 0.95


def test_body_that_stops_arriving_closes_the_connection(limits_server):
    with connect(limits_server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"ms\": 0")
        status, body = status_and_body(read_until_closed(sock, within=TIMEOUT + 4))
    assert status == 408 and "stopped arriving" in body["message"]


def test_body_sent_slowly_but_steadily_is_read(limits_server):
    body = orjson.dumps({"ms": 0, "pad": "y" * 40})
    with connect(limits_server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), 16):  # about 1.5 timeouts in all, no pause as long as one
            sock.sendall(body[start:start + 16])
            time.sleep(TIMEOUT / 4)
        status, answer = status_and_body(read_until_closed(sock, within=5))
    assert status == 200 and answer["slept_ms"] == 0


def test_connection_that_never_sends_is_closed_like_an_idle_one(limits_server):
    with connect(limits_server) as sock:
        assert read_until_closed(sock, within=TIMEOUT + 4) == b""


def test_scoring_longer_than_the_read_timeouts_is_not_cut(limits_server):
    with httpx.Client(base_url=limits_server.url, timeout=10) as client:
        assert client.post("/score", json={"ms": int(TIMEOUT * 1200)}).status_code == 200
        assert client.post("/score", json={"ms": 0}).status_code == 200  # on the kept-alive connection


def test_slow_clients_do_not_hold_up_health_or_scoring(limits_server):
    slow = [connect(limits_server) for _ in range(60)]
    try:
        for sock in slow:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        with httpx.Client(base_url=limits_server.url, timeout=5) as client:
            for _ in range(5):
                started = time.monotonic()
                assert client.get("/health/ready").status_code == 200
                assert client.post("/score", json={"ms": 0}).status_code == 200
                assert time.monotonic() - started < 1.0
                for sock in slow:  # a byte now and then: the header deadline still holds
                    try:
                        sock.sendall(b"a")
                    except OSError:
                        pass
        for sock in slow:
            response = read_until_closed(sock, within=TIMEOUT + 4)
            assert response == b"" or response.startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in slow:
            sock.close()


def test_connections_past_the_bound_are_503(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "threads",
                          "--max-connections", "4")
    held = [connect(server) for _ in range(4)]
    try:
        with connect(server) as extra:
            extra.sendall(b"GET /swagger.json HTTP/1.1\r\nHost: t\r\n\r\n")  # health routes are answered
            response = read_until_closed(extra, within=5)
        status, body = status_and_body(response)
        assert status == 503 and "the limit is 4" in body["message"]
        assert b"retry-after: 1" in response.lower()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(server.url + "/swagger.json").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.stop()


# --- JSON the server decodes ------------------------------------------------------------------

@pytest.mark.parametrize("body, fragment", [
    (b'{"data": [[NaN, 1, 2]]}', "could not be decoded as JSON"),
    (b'{"data": [[Infinity, 1, 2]]}', "could not be decoded as JSON"),
    (b'{"data": [[-Infinity, 1, 2]]}', "could not be decoded as JSON"),
    (b'{"data": [[1e999, 1, 2]]}', "could not be decoded as JSON"),
    (b'{"data": [[' + b"9" * 400 + b', 1, 2]]}', "could not be decoded as JSON"),
    (b'{"data": "\xff\xfe"}', "could not be decoded as JSON"),
    (b'\xc3\x28', "could not be decoded as JSON"),
    (b'{"data": "\\ud800"}', "could not be decoded as JSON"),
    (b'{"data": "\x00"}', "could not be decoded as JSON"),
    (b'{"data": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}", "nested deeper than the limit of 64 levels"),
    (b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper than the limit of 64 levels"),
    (b'{"data": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}", "nested deeper than the limit of 64 levels"),
    (b'{"data": [[1e308, 1, "x"]]}', "Invalid value for parameter 'data'"),
])
def test_bad_json_is_a_400_naming_the_problem(client_for, body, fragment):
    client = client_for("contract.py")
    response = client.post("/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert fragment in response.json()["message"]
    assert response.headers["x-ms-run-function-failed"] == "False"


def test_nesting_limit_is_a_setting(client_for):
    client = client_for("contract.py", max_json_depth=3)
    assert client.post("/score", json={"data": [[1, 2, 3]]}).status_code == 200  # depth 3
    deeper = client.post("/score", json={"data": [[[1, 2, 3]]]})
    assert deeper.status_code == 400
    assert deeper.json()["message"] == "POST body is nested deeper than the limit of 3 levels (max_json_depth)."
    query = client.get("/score", params={"data": "[[[[1]]]]"})
    assert query.status_code == 400 and "nested deeper than the limit of 3 levels" in query.json()["message"]


def test_brackets_inside_strings_do_not_count_as_nesting(client_for):
    client = client_for("plain_echo.py", max_json_depth=2)  # run() gets the text: no JSON decoding, no limit
    assert client.post("/score", content=b"[[[[[[").status_code == 200
    schema = client_for("contract.py", max_json_depth=3)
    response = schema.post("/score", json={"data": [[1, 2, 3]], "note": "[[[[[[[[[[\\\"{{{{"})
    assert response.status_code == 200


def test_invalid_utf8_for_a_plain_script_is_a_400(client_for):
    response = client_for("plain_echo.py").post("/score", content=b"\xff\xfe\xfd")
    assert response.status_code == 400 and "UTF-8" in response.json()["message"]


def test_number_beyond_float32_is_a_400_not_an_infinity_for_run(client_for):
    client = client_for(str(EXAMPLES / "digits" / "score.py"), model_dir=str(EXAMPLES / "digits" / "models"))
    response = client.post("/score", json={"images": [[1e300] + [0.0] * 63]})
    assert response.status_code == 400
    assert "beyond the range of float32" in response.json()["message"]
    assert client.post("/score", json={"images": [[3.0e38] + [0.0] * 63]}).status_code == 200


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_result_beyond_json_numbers_is_sent_as_null_as_the_document_says(client_for):
    client = client_for(str(EXAMPLES / "diabetes" / "score.py"), model_dir=str(EXAMPLES / "diabetes" / "models"))
    response = client.post("/score", json={"data": [[1.7e308] * 10, [1.0] * 10]})
    assert response.status_code == 200
    overflowed, finite = response.json()
    assert overflowed is None and isinstance(finite, float)
    document = client.get("/swagger.json", params={"version": "3"}).json()
    assert document["components"]["schemas"]["ServiceOutput"]["items"]["nullable"] is True


# --- the settings -----------------------------------------------------------------------------

def test_limit_defaults():
    settings = Settings.build({"entry_script": "x.py"}, environ={})
    assert (settings.max_body_bytes, settings.max_json_depth, settings.max_header_bytes) == (100 << 20, 64, 64 << 10)
    assert (settings.header_timeout, settings.body_timeout, settings.keep_alive_timeout) == (10.0, 30.0, 75.0)
    assert settings.max_connections == 10_000 and settings.metrics_auth is False


@pytest.mark.parametrize("env, message", [
    ({"MLSCORE_MAX_JSON_DEPTH": "0"}, "MLSCORE_MAX_JSON_DEPTH=0: must be between 1 and 1024"),
    ({"MLSCORE_MAX_JSON_DEPTH": "2000"}, "MLSCORE_MAX_JSON_DEPTH=2000: must be between 1 and 1024"),
    ({"MLSCORE_MAX_HEADER_BYTES": "100"}, "MLSCORE_MAX_HEADER_BYTES=100: must be between 1024 and 1048576"),
    ({"MLSCORE_HEADER_TIMEOUT": "0"}, "MLSCORE_HEADER_TIMEOUT=0: must be more than 0"),
    ({"MLSCORE_BODY_TIMEOUT": "soon"}, "MLSCORE_BODY_TIMEOUT='soon': must be a number of seconds"),
    ({"MLSCORE_MAX_CONNECTIONS": "0"}, "MLSCORE_MAX_CONNECTIONS=0: must be between 1 and 1000000"),
    ({"MLSCORE_METRICS_AUTH": "maybe"}, "MLSCORE_METRICS_AUTH='maybe': must be on or off"),
])
def test_bad_limit_settings_are_named(env, message):
    with pytest.raises(SettingsError) as raised:
        Settings.build({"entry_script": "x.py"}, environ=env)
    assert str(raised.value).startswith(message)
