"""Black-box tests of the HTTP contract against a real server (uvicorn on a loopback port)."""

from __future__ import annotations

import socket

import httpx
import pytest

ID_HEADERS = ("x-request-id", "x-ms-request-id", "x-ms-client-request-id")


@pytest.fixture(scope="module")
def http(contract_server):
    with httpx.Client(base_url=contract_server.url, timeout=10) as client:
        yield client


def score(http: httpx.Client, headers: dict[str, str] | None = None, payload=None) -> httpx.Response:
    return http.post("/score", json=payload or {"data": [[1, 2, 3]]}, headers=headers or {})


def test_root_answers_healthy(http):
    response = http.get("/")
    assert response.status_code == 200
    assert response.text == "Healthy"


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"])
def test_health_routes_answer_200_once_init_and_warm_up_are_done(http, path):
    response = http.get(path)
    assert response.status_code == 200
    assert response.json() in ({"live": True}, {"ready": True})


# --- request ids -----------------------------------------------------------------------------

def test_request_id_is_generated_and_mirrored_into_x_ms_request_id(http):
    response = score(http)
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 36 and request_id.count("-") == 4
    assert response.headers["x-ms-request-id"] == request_id
    assert "x-ms-client-request-id" not in response.headers
    assert score(http).headers["x-request-id"] != request_id


def test_request_id_sent_by_the_client_is_echoed(http):
    response = score(http, {"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-ms-request-id"] == "abc-123"


@pytest.mark.parametrize(
    "sent, expected",
    [
        ({"x-ms-client-request-id": "client"}, {"x-ms-client-request-id": "client", "x-ms-request-id": "client"}),
        ({"x-ms-request-id": "ms"}, {"x-ms-client-request-id": "ms", "x-ms-request-id": "ms"}),
        ({"x-ms-request-id": "ms", "x-ms-client-request-id": "client"},
         {"x-ms-client-request-id": "client", "x-ms-request-id": "ms"}),
    ],
)
def test_x_ms_request_ids_follow_the_azure_matrix(http, sent, expected):
    response = score(http, {"x-request-id": "rid", **sent})
    assert response.headers["x-request-id"] == "rid"
    for name, value in expected.items():
        assert response.headers[name] == value


def test_trace_id_is_echoed(http):
    assert score(http, {"TraceId": "trace-1"}).headers["traceid"] == "trace-1"


def test_request_id_over_100_characters_is_a_431_without_id_headers(http):
    response = score(http, {"x-request-id": "a" * 101})
    assert response.status_code == 431
    assert response.json() == {"message": "x-request-id must not exceed 100 characters"}
    assert not any(name in response.headers for name in ID_HEADERS)
    assert score(http, {"x-request-id": "a" * 100}).status_code == 200


@pytest.mark.parametrize("name", ["x-ms-request-id", "x-ms-client-request-id"])
def test_x_ms_id_over_100_characters_is_a_431_that_keeps_x_request_id(http, name):
    response = score(http, {"x-request-id": "ok", name: "b" * 101})
    assert response.status_code == 431
    assert "must not exceed 100 characters" in response.json()["message"]
    assert response.headers["x-request-id"] == "ok"


def test_error_responses_carry_the_request_id(http):
    response = http.get("/no/such/route", headers={"x-request-id": "lost"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "lost"


# --- error statuses -----------------------------------------------------------------------------

def test_unknown_route_is_a_json_404(http):
    response = http.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "/nope" in response.json()["message"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD"])
def test_unsupported_method_on_score_is_a_json_405(http, method):
    response = http.request(method, "/score")
    assert response.status_code == 405
    if method != "HEAD":
        assert "not allowed" in response.json()["message"]


def test_body_over_the_limit_is_a_413(http):
    response = http.post("/score", content=b'{"data": [[' + b"1," * 600 + b"1]]}", headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["message"]


def test_body_over_the_limit_is_refused_before_it_is_read_in_full(contract_server):
    """The server answers 413 from Content-Length alone: the client never sends the body."""
    host, port = contract_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_unsupported_content_type_is_a_415(http):
    response = http.post("/score", content=b"data=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415


def test_run_failure_is_a_500_without_traceback_and_the_server_keeps_serving(http, contract_server):
    response = score(http, payload={"data": [[666, 0, 0]]})
    assert response.status_code == 500
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert "Traceback" not in response.text and "secret internal detail" not in response.text
    assert contract_server.wait_log("Traceback")  # the log gets it
    assert score(http).status_code == 200


def test_scored_response_carries_run_timing_and_failed_false(http):
    response = score(http)
    assert response.json() == [6.0]
    assert response.headers["x-ms-run-function-failed"] == "False"
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0.0


def test_keep_alive_stays_on_across_requests(contract_server):
    host, port = contract_server.url.removeprefix("http://").split(":")
    request = b'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{"data": [[1,2,3]]}'
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"[6.0]"):
                chunk = sock.recv(4096)
                assert chunk, "the server closed a keep-alive connection"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in answer.lower()


def test_swagger_unknown_version_is_a_404_listing_supported(http):
    response = http.get("/swagger.json", params={"version": "4"})
    assert response.status_code == 404
    assert "Supported versions" in response.json()["message"]
