"""Keys: the auth matrix on /score and the V2 infer route, the key file and its rotation while the
server runs, /metrics open or keyed, and a presented key never echoed nor handed to run()."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import EXAMPLES, SCRIPTS, run_server_to_exit
from mlscore.server import auth
from mlscore.server.app import create_app
from mlscore.server.auth import AuthKeys
from mlscore.server.runner import build_state
from mlscore.server.settings import Settings, SettingsError

PRIMARY, SECONDARY = "primary-key-1", "secondary-key-2"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    (bearer("wrong"), 401),
    (bearer(PRIMARY + "x"), 401),
    ({"authorization": PRIMARY}, 401),  # no scheme
    ({"authorization": f"Basic {PRIMARY}"}, 401),
    ({"authorization": "Bearer "}, 401),
    (bearer(PRIMARY), 200),
    (bearer(SECONDARY), 200),
    ({"authorization": f"bearer {PRIMARY}"}, 200),  # the scheme is case-insensitive
])
def test_score_auth_matrix(client_for, headers, status):
    client = client_for("plain_echo.py", auth_key=[PRIMARY, SECONDARY])
    response = client.post("/score", content=b"x", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"message": "Missing or invalid key: send the header 'Authorization: Bearer <key>'."}
        assert response.headers["x-request-id"]


def test_keys_from_the_environment_as_primary_comma_secondary(client_for):
    client = client_for("plain_echo.py", env={"MLSCORE_AUTH_KEYS": f"{PRIMARY},{SECONDARY}"})
    assert client.post("/score", content=b"x").status_code == 401
    assert client.post("/score", content=b"x", headers=bearer(SECONDARY)).status_code == 200


def test_without_keys_score_is_open(client_for):
    assert client_for("plain_echo.py").post("/score", content=b"x").status_code == 200


def test_every_method_of_score_needs_the_key(client_for):
    client = client_for("plain_echo.py", auth_key=[PRIMARY])
    assert client.get("/score").status_code == 401
    assert client.options("/score").status_code == 401
    assert client.get("/score", headers=bearer(PRIMARY)).status_code == 200


def test_presented_key_is_never_echoed_nor_handed_to_run(client_for):
    client = client_for("header_names.py", auth_key=[PRIMARY])
    wrong = client.post("/score", content=b"x", headers=bearer("a-guess-of-the-key"))
    assert "a-guess-of-the-key" not in wrong.text and "a-guess-of-the-key" not in str(wrong.headers)
    scored = client.post("/score", content=b"x", headers={**bearer(PRIMARY), "x-custom": "1"})
    assert scored.status_code == 200
    assert "x-custom" in scored.json() and "authorization" not in scored.json()
    assert PRIMARY not in client.get("/metrics").text


def test_run_gets_the_authorization_header_when_auth_is_off(client_for):
    # Without keys the header is not the server's: a script may read it.
    client = client_for("header_names.py")
    assert "authorization" in client.post("/score", content=b"x", headers=bearer("theirs")).json()


def test_health_swagger_and_metrics_stay_open_by_default(client_for):
    client = client_for("plain_echo.py", auth_key=[PRIMARY])
    for path in ("/", "/health/live", "/health/ready", "/swagger.json", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_metrics_auth_keys_metrics_too(client_for):
    client = client_for("plain_echo.py", auth_key=[PRIMARY], metrics_auth=True)
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics", headers=bearer(PRIMARY)).status_code == 200
    assert client.get("/health/ready").status_code == 200


@pytest.fixture()
def model_client():
    settings = Settings.build({"model": str(EXAMPLES / "digits_onnx" / "models" / "digits_mlp.onnx"),
                               "executor": "threads", "auth_key": [PRIMARY, SECONDARY]}, environ={})
    with TestClient(create_app(build_state(settings)), raise_server_exceptions=False) as client:
        yield client


def test_v2_infer_needs_the_key_like_score(model_client):
    request = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    refused = model_client.post("/v2/models/digits_mlp/infer", json=request)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "error" in refused.json()  # the Open Inference Protocol's error field
    assert model_client.post("/v2/models/digits_mlp/infer", json=request, headers=bearer(SECONDARY)).status_code == 200
    assert model_client.post("/score", json={"input": [[0.0] * 64]}).status_code == 401
    assert model_client.get("/v2/models/digits_mlp/ready").status_code == 200  # metadata and health stay open


def test_every_key_is_compared_whichever_matches(monkeypatch):
    keys = AuthKeys((PRIMARY, SECONDARY))
    compared = []

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert keys.authorized(f"Bearer {PRIMARY}".encode())
    assert keys.authorized(b"Bearer x") is False
    # Two comparisons each time, of equal-length digests: neither the match nor a key's length shows.
    assert compared == [(32, 32)] * 4


# --- the key file -----------------------------------------------------------------------------

def write_atomically(path: Path, text: str) -> None:
    """As a secret volume or `mv` replaces a file: a new file renamed over the old."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_key_file_keys_are_enforced(client_for, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# service keys\n\n{PRIMARY}\n  {SECONDARY}  \n")
    client = client_for("plain_echo.py", auth_key_file=str(key_file))
    assert client.post("/score", content=b"x").status_code == 401
    assert client.post("/score", content=b"x", headers=bearer(PRIMARY)).status_code == 200
    assert client.post("/score", content=b"x", headers=bearer(SECONDARY)).status_code == 200


def test_key_file_rotation_takes_effect_without_a_restart(client_for, tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "KEY_FILE_POLL_SECONDS", 0.05)
    key_file = tmp_path / "keys"
    key_file.write_text(f"{PRIMARY}\n{SECONDARY}\n")
    client = client_for("plain_echo.py", env={"MLSCORE_AUTH_KEY_FILE": str(key_file)})

    def status(key: str) -> int:
        return client.post("/score", content=b"x", headers=bearer(key)).status_code

    assert status(PRIMARY) == 200
    # Rotation, step 1: the secondary becomes primary, a new secondary comes in.
    write_atomically(key_file, f"{SECONDARY}\nnew-secondary-3\n")
    wait_until(lambda: status("new-secondary-3") == 200)
    assert status(PRIMARY) == 401 and status(SECONDARY) == 200
    # Rewritten in place, to one key.
    key_file.write_text("only-key-4\n")
    wait_until(lambda: status("only-key-4") == 200)
    assert status(SECONDARY) == 401 and status("new-secondary-3") == 401


def test_key_file_that_turns_bad_keeps_the_keys_in_force_and_warns_once(tmp_path, caplog):
    key_file = tmp_path / "keys"
    key_file.write_text(f"{PRIMARY}\n")
    keys = AuthKeys((PRIMARY,), key_file)
    caplog.set_level(logging.WARNING, logger="mlscore.server")
    for broken in ("", "# only a comment\n", "a\nb\nc\n"):
        write_atomically(key_file, broken)
        keys.reload_if_changed()
        keys.reload_if_changed()  # seen already: no second warning
        assert keys.authorized(f"Bearer {PRIMARY}".encode())
    key_file.unlink()
    keys.reload_if_changed()
    keys.reload_if_changed()
    assert keys.authorized(f"Bearer {PRIMARY}".encode()) and not keys.authorized(b"Bearer ")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 3  # empty/comment-only (the same problem), three keys, gone
    assert all("the keys read before stay in force" in message for message in warnings)
    assert not any(PRIMARY in message for message in warnings)
    key_file.write_text("fresh-key\n")
    keys.reload_if_changed()
    assert keys.authorized(b"Bearer fresh-key") and not keys.authorized(f"Bearer {PRIMARY}".encode())


def test_key_file_and_keys_together_are_refused(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"{PRIMARY}\n")
    with pytest.raises(SettingsError, match="--auth-key-file and MLSCORE_AUTH_KEYS: give the keys one way"):
        Settings.build({"entry_script": "x.py", "auth_key_file": str(key_file)},
                       environ={"MLSCORE_AUTH_KEYS": SECONDARY})


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("", "holds no key"),
    ("# nothing but a comment\n\n", "holds no key"),
    ("one\ntwo\nthree\n", "at most two keys"),
])
def test_bad_key_file_stops_the_start(tmp_path, content, problem):
    key_file = tmp_path / "keys"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(SettingsError) as raised:
        Settings.build({"entry_script": "x.py"}, environ={"MLSCORE_AUTH_KEY_FILE": str(key_file)})
    assert str(raised.value).startswith(f"MLSCORE_AUTH_KEY_FILE {key_file}: {problem}")


def test_bad_key_file_exits_with_one_line(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"),
                                "--auth-key-file", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"mlscore: error: --auth-key-file {tmp_path / 'absent'}: file not found"


def test_settings_summary_counts_keys_read_from_a_key_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"{PRIMARY}\n{SECONDARY}\n")
    settings = Settings.build({"entry_script": "x.py", "auth_key_file": str(key_file)}, environ={})
    assert settings.auth_keys == (PRIMARY, SECONDARY)
    shown = str(settings.redacted())
    assert "2 key(s)" in shown and PRIMARY not in shown and SECONDARY not in shown
