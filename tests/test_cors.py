"""CORS (`AML_CORS_ORIGINS` / `--cors-origins`): allowed origins echoed, others not, preflights
answered before auth (browsers send no key on a preflight), errors readable by the page."""

from __future__ import annotations

import pytest

APP = "https://app.example"
OTHER = "https://other.example"
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}


def test_allowed_origins_are_echoed_and_others_are_not(client_for):
    client = client_for("plain_echo.py", env={"AML_CORS_ORIGINS": f"{APP}, {OTHER}"})
    for origin in (APP, OTHER):
        response = client.post("/score", content=b"x", headers={"origin": origin})
        assert response.headers["access-control-allow-origin"] == origin
        assert "origin" in response.headers["vary"].lower()
        assert "x-request-id" in response.headers["access-control-expose-headers"]
    stranger = client.post("/score", content=b"x", headers={"origin": "https://evil.example"})
    assert stranger.status_code == 200  # served: the browser, not the server, withholds the answer
    assert "access-control-allow-origin" not in stranger.headers


def test_wildcard_allows_every_origin_without_credentials(client_for):
    client = client_for("plain_echo.py", cors_origins="*")
    response = client.post("/score", content=b"x", headers={"origin": "https://anywhere.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


def test_preflight_is_answered_for_an_allowed_origin(client_for):
    client = client_for("plain_echo.py", cors_origins=APP)
    response = client.options("/score", headers={"origin": APP, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_preflight_from_another_origin_is_refused(client_for):
    client = client_for("plain_echo.py", cors_origins=APP)
    response = client.options("/score", headers={"origin": OTHER, **PREFLIGHT})
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/score", "/v2/models/m/infer"])
def test_preflight_needs_no_key_and_the_401_is_readable_by_the_page(client_for, path):
    client = client_for("plain_echo.py", cors_origins=APP, auth_key=["k"])
    assert client.options(path, headers={"origin": APP, **PREFLIGHT}).status_code == 200
    refused = client.post("/score", content=b"x", headers={"origin": APP})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP
    assert client.post("/score", content=b"x", headers={"origin": APP, "authorization": "Bearer k"}).status_code == 200


def test_without_origins_no_cors_headers(client_for):
    client = client_for("plain_echo.py")
    response = client.post("/score", content=b"x", headers={"origin": APP})
    assert "access-control-allow-origin" not in response.headers
    # OPTIONS /score is still the route's own answer (Azure's server answers it too).
    assert client.options("/score", headers={"origin": APP, **PREFLIGHT}).status_code == 200
