"""Keys and CORS as far as this issue takes them: a key given is enforced, origins given are honoured."""

from __future__ import annotations


def test_auth_key_required_on_score_when_given(client_for):
    client = client_for("plain_echo.py", auth_key=["primary-k", "secondary-k"])
    missing = client.post("/score", content=b"x")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "primary-k" not in missing.text
    assert client.post("/score", content=b"x", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/score", content=b"x", headers={"authorization": "Bearer primary-k"}).status_code == 200
    assert client.post("/score", content=b"x", headers={"authorization": "Bearer secondary-k"}).status_code == 200


def test_health_and_swagger_stay_open_with_auth(client_for):
    client = client_for("plain_echo.py", auth_key=["k"])
    assert client.get("/").status_code == 200
    assert client.get("/health/ready").status_code == 200
    assert client.get("/swagger.json").status_code == 200


def test_cors_allowed_origin_is_echoed_and_others_are_not(client_for):
    client = client_for("plain_echo.py", cors_origins="https://app.example")
    allowed = client.post("/score", content=b"x", headers={"origin": "https://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = client.post("/score", content=b"x", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options("/score", headers={"origin": "https://app.example", "access-control-request-method": "POST"})
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
