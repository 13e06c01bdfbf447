"""A drop-in for Azure's scoring server, black-box: scripts written the way Azure's documents write them,
started through both `mlscore serve` and `azmlinfsrv` (Azure's command), probed the way Azure's
platform probes, and called the way clients generated from Azure's Swagger call."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from conftest import EXAMPLES, SCRIPTS, Server, azmlinfsrv_command, dies_with_tests, serve_command, start_server

COMMANDS = ["mlscore", "azmlinfsrv"]
LOOPBACK = {"MLSCORE_HOST": "127.0.0.1"}  # azmlinfsrv listens on 0.0.0.0 by default, as Azure's does
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
HEALTH_LISTENING = re.compile(r"health routes .* also on http://([\d.]+):(\d+)")
DIABETES_ROW = [[0.038, 0.05, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]]


def command_line(command: str, script: Path | None, *, model_dir: Path | None = None, workers: int | None = None,
                 extra: tuple[str, ...] = ()) -> list[str]:
    """The same start written for either command: their flags are spelled differently."""
    if command == "mlscore":
        args = ["--entry-script", str(script)] if script else []
        args += ["--model-dir", str(model_dir)] if model_dir else []
        args += ["--workers", str(workers)] if workers else []
        return serve_command(*args, *extra)
    args = ["--entry_script", str(script)] if script else []
    args += ["--model_dir", str(model_dir)] if model_dir else []
    args += ["--worker_count", str(workers)] if workers else []
    return azmlinfsrv_command(*args, *extra)


def launch(tmp_path: Path, command: str, script: Path | None, env: dict[str, str] | None = None,
           **options) -> Server:
    return start_server(tmp_path, env={**LOOPBACK, **(env or {})},
                        command=command_line(command, script, **options))


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- 3. the script's environment ---------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["processes", "threads", "inline"])
@pytest.mark.parametrize("command", COMMANDS)
def test_script_finds_its_files_through_aml_app_root_in_every_executor(tmp_path, command, executor):
    shutil.copy(SCRIPTS / "compat_environment.py", tmp_path / "score.py")
    (tmp_path / "labels.json").write_text('["low", "high"]')
    models = EXAMPLES / "diabetes" / "models"
    server = launch(tmp_path, command, Path("score.py"), env={"MLSCORE_EXECUTOR": executor}, model_dir=models)
    try:
        answer = httpx.post(server.url + "/score", content=b"{}", timeout=30).json()
        assert answer["labels"] == ["low", "high"]
        assert answer["AML_APP_ROOT"] == str(tmp_path.resolve())
        assert answer["AZUREML_ENTRY_SCRIPT"] == str((tmp_path / "score.py").resolve())
        assert answer["AZUREML_MODEL_DIR"] == str(models.resolve())
        assert (answer["pid"] == server.process.pid) == (executor != "processes")
    finally:
        assert server.stop() == 0


def test_azmlinfsrv_serves_main_py_from_the_app_root_when_no_script_is_named(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(SCRIPTS / "compat_environment.py", app / "main.py")
    (app / "labels.json").write_text('["only"]')
    server = launch(tmp_path, "azmlinfsrv", None, env={"AML_APP_ROOT": str(app)})
    try:
        answer = httpx.post(server.url + "/score", content=b"{}", timeout=30).json()
        assert answer["labels"] == ["only"] and answer["AZUREML_ENTRY_SCRIPT"] == str((app / "main.py").resolve())
    finally:
        assert server.stop() == 0


def test_azmlinfsrv_without_a_script_exits_2_with_one_line_saying_how_to_give_one(tmp_path):
    done = subprocess.run(azmlinfsrv_command(), capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, **LOOPBACK})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"azmlinfsrv: error: no score script: give --entry_script PATH (or AZUREML_ENTRY_SCRIPT, or a config file), "
        f"or put main.py in the app root {tmp_path.resolve()} (AML_APP_ROOT)"]


# --- 4. GET / means ready ----------------------------------------------------------------------------


def start_listening(tmp_path: Path, command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    """A server that listens, before its init() has finished: (process, url, log)."""
    log_path = tmp_path / "listening.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env={**os.environ, **LOOPBACK, **env}, start_new_session=True,
                                   preexec_fn=dies_with_tests())
    try:
        wait_until(lambda: LISTENING.search(log_path.read_text()) is not None or process.poll() is not None, 60)
        match = LISTENING.search(log_path.read_text())
        assert match, log_path.read_text()
    except BaseException:
        process.kill()
        raise
    return process, f"http://{match.group(1)}:{match.group(2)}", log_path


@pytest.mark.parametrize("command", COMMANDS)
def test_slash_answers_503_with_the_reason_until_init_and_the_warm_up_passed_then_healthy(tmp_path, command):
    gates = tmp_path / "gates"
    gates.mkdir()
    process, url, log = start_listening(tmp_path, command_line(command, SCRIPTS / "slow_init.py"),
                                        {"SLOW_INIT_GATES": str(gates)})
    try:
        wait_until(lambda: (gates / "init-started").exists())
        starting = httpx.get(url + "/")
        assert starting.status_code == 503 and starting.headers["retry-after"] == "1"
        assert starting.json() == {"message": "Not ready: init() and the warm-up run() have not finished yet."}
        assert httpx.get(url + "/health/live").status_code == 200  # alive all the same
        (gates / "init-may-finish").touch()
        wait_until(lambda: (gates / "run-started").exists())
        assert httpx.get(url + "/").status_code == 503  # the warm-up has not passed yet
        (gates / "run-may-finish").touch()
        wait_until(lambda: httpx.get(url + "/").status_code == 200)
        healthy = httpx.get(url + "/")
        assert healthy.text == "Healthy" and healthy.headers["content-type"].startswith("text/plain")
        assert httpx.head(url + "/").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("command", COMMANDS)
def test_slash_stays_503_when_the_warm_up_fails(tmp_path, command):
    server = launch(tmp_path, command, SCRIPTS / "warmup_fails.py")
    try:
        unready = httpx.get(server.url + "/")
        assert unready.status_code == 503 and "warm-up run() with the input sample failed" in unready.json()["message"]
    finally:
        server.stop()


# --- 5. concurrency follows the worker count --------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "WORKER_COUNT"])
@pytest.mark.parametrize("command", COMMANDS)
def test_two_workers_without_a_concurrency_limit_score_two_requests_at_once(tmp_path, command, how):
    options, env = ({"workers": 2}, {}) if how == "flag" else ({}, {"WORKER_COUNT": "2"})
    server = launch(tmp_path, command, SCRIPTS / "compat_together.py", env=env, **options)
    folder = tmp_path / "arrivals"
    folder.mkdir()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: httpx.post(server.url + "/score", json={"folder": str(folder)},
                                                         timeout=60), range(2)))
        assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
        assert all(answer.json()["together"] for answer in answers)
        assert len({answer.json()["pid"] for answer in answers}) == 2  # one request per worker
    finally:
        assert server.stop() == 0


# --- 6. azmlinfsrv: config file, health port, App Insights -------------------------------------------


def test_azmlinfsrv_reads_config_json_from_the_app_root(tmp_path):
    """Azure's SCORING_TIMEOUT_MS from config.json: a run() past it is cut off (504)."""
    (tmp_path / "config.json").write_text(json.dumps({"SCORING_TIMEOUT_MS": 300}))
    server = launch(tmp_path, "azmlinfsrv", SCRIPTS / "sleepy.py")
    try:
        assert httpx.post(server.url + "/score", json={"ms": 0}, timeout=30).status_code == 200
        slow = httpx.post(server.url + "/score", json={"ms": 5000}, timeout=30)
        assert slow.status_code == 504, slow.text
        assert f"config file: {(tmp_path / 'config.json').resolve()}" in server.log()
    finally:
        server.stop()


def health_url(server: Server) -> str:
    match = HEALTH_LISTENING.search(server.wait_log("health routes"))
    assert match, server.log()
    return f"http://{match.group(1)}:{match.group(2)}"


@pytest.mark.parametrize("command", COMMANDS)
def test_health_port_answers_the_health_routes_at_once_while_the_only_worker_scores(tmp_path, command):
    calls = tmp_path / "calls.txt"
    calls.touch()
    if command == "mlscore":
        server = launch(tmp_path, command, SCRIPTS / "sleepy.py", env={"SLEEPY_CALLS_FILE": str(calls)},
                        extra=("--health-port", "0"))
    else:
        server = launch(tmp_path, command, SCRIPTS / "sleepy.py", extra=("--health_port", "0"),
                        env={"SLEEPY_CALLS_FILE": str(calls), "SEPERATE_HEALTH_ENDPOINT": "true"})
    health = health_url(server)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            holder = pool.submit(httpx.post, server.url + "/score", json={"ms": 3000, "tag": "holder"}, timeout=60)
            wait_until(lambda: "holder" in calls.read_text())
            for path in ("/", "/health/live", "/health/ready"):
                started = time.monotonic()
                assert httpx.get(health + path, timeout=10).status_code == 200, path
                assert time.monotonic() - started < 2.0, path  # not behind the 3 s run()
            assert not holder.done()
            refused = httpx.post(health + "/score", json={"ms": 0}, timeout=10)
            assert refused.status_code == 404 and "answers only /, /health/live" in refused.json()["message"]
            assert holder.result().status_code == 200
    finally:
        assert server.stop() == 0


def test_azmlinfsrv_without_the_switch_has_no_health_port(tmp_path):
    server = launch(tmp_path, "azmlinfsrv", SCRIPTS / "sleepy.py", extra=("--health_port", "0"))
    try:
        assert "health routes" not in server.log()
    finally:
        server.stop()


def test_azmlinfsrv_accepts_an_app_insights_key_and_says_where_logs_go_instead(tmp_path):
    server = launch(tmp_path, "azmlinfsrv", SCRIPTS / "sleepy.py",
                    extra=("--appinsights_instrumentation_key", "00000000-0000-0000-0000-000000000000"))
    try:
        log = server.log()
        assert "Application Insights export is not built in" in log and "MLSCORE_LOG_FORMAT=json" in log
        assert "00000000-0000-0000-0000-000000000000" not in log  # a key is never logged
    finally:
        server.stop()


# --- 1, 2. Azure's current imports and a Flask request for @rawhttp scripts --------------------------

IMAGE = bytes(range(256)) * 40 + b"\x89PNG\r\n\x1a\n\x00"  # binary, with every byte value


@pytest.mark.parametrize("command", COMMANDS)
def test_rawhttp_script_on_azures_current_imports_takes_a_multipart_image_upload(tmp_path, command):
    server = launch(tmp_path, command, SCRIPTS / "azure_rawhttp_image.py", workers=2)
    try:
        uploaded = httpx.post(server.url + "/score", files={"image": ("cat.png", IMAGE, "image/png")},
                              data={"caption": "a cat"}, timeout=30)
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json() == {"filename": "cat.png", "content_type": "image/png", "size": len(IMAGE),
                                   "sha256": hashlib.sha256(IMAGE).hexdigest(), "caption": "a cat"}
        missing = httpx.post(server.url + "/score", data={"caption": "no image"}, timeout=30)
        assert missing.status_code == 400 and "image" in missing.json()["error"]
        echoed = httpx.get(server.url + "/score?size=small&size=large", timeout=30)
        assert echoed.status_code == 200 and echoed.text == "/score?size=small&size=large"
        assert "This is run()" in server.wait_log("This is run()")  # print() reaches the log
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_rawhttp_request_behaves_like_flasks(tmp_path, command):
    server = launch(tmp_path, command, SCRIPTS / "azure_rawhttp_request.py")
    try:
        seen = httpx.post(server.url + "/score?tag=a&tag=b", content=b'{"rows": [1, 2]}',
                          headers={"Content-Type": "application/json", "X-Custom": "yes"}, timeout=30).json()
        assert seen["remote_addr"] == "127.0.0.1"
        assert seen["full_path"] == "/score?tag=a&tag=b" and seen["url"].endswith("/score?tag=a&tag=b")
        assert ["X-Custom", "yes"] in seen["headers"]  # `for name, value in request.headers`
        assert seen["json_forced"] == {"rows": [1, 2]} and seen["mimetype"] == "application/json"
        assert seen["args"]["tag"] == ["a", "b"]  # request.args.getlist
        assert seen["same_class"]  # both import paths give the one AMLRequest
        bad = httpx.post(server.url + "/score?strict=1", content=b"{oops", headers={"Content-Type": "application/json"},
                         timeout=30)
        assert bad.status_code == 400 and "could not be decoded as JSON" in bad.json()["message"]
    finally:
        assert server.stop() == 0


# --- 7. Swagger clients generated from Azure's documents ---------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_client_bound_to_azures_operation_ids_scores_with_a_key(tmp_path, command):
    key = "k" * 32
    extra = () if command == "azmlinfsrv" else ("--auth-key", key)
    server = launch(tmp_path, command, EXAMPLES / "diabetes" / "score.py", model_dir=EXAMPLES / "diabetes" / "models",
                    extra=extra, env={"MLSCORE_AUTH_KEYS": key} if command == "azmlinfsrv" else {})
    try:
        document = httpx.get(server.url + "/swagger.json", timeout=30).json()  # version 2, as Power BI reads it
        operations = {operation["operationId"]: (path, method, operation)
                      for path, methods in document["paths"].items() for method, operation in methods.items()}
        path, method, operation = operations["RunMLService"]
        body_parameter = next(p for p in operation["parameters"] if p["in"] == "body")
        assert body_parameter["name"] == "serviceInputPayload"
        scheme = document["securityDefinitions"][operation["security"][0].popitem()[0]]
        assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
        example = document["definitions"]["ServiceInput"]["example"]
        answer = httpx.request(method.upper(), server.url + path, json=example,
                               headers={scheme["name"]: f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()) == 1
        refused = httpx.request(method.upper(), server.url + path, json=example, timeout=30)
        assert refused.status_code == 401
        health_path, _, _ = operations["ServiceHealthCheck"]
        assert httpx.get(server.url + health_path, timeout=30).text == "Healthy"
        swagger_path, _, _ = operations["GetSwaggerSpec"]
        assert httpx.get(server.url + swagger_path, params={"version": "3"}, timeout=30).json()["openapi"] == "3.0.3"
    finally:
        assert server.stop() == 0


# --- 8. scripts Azure starts ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_schema_naming_a_parameter_run_lacks_starts_warns_once_and_answers_500_naming_it(tmp_path, command):
    server = launch(tmp_path, command, SCRIPTS / "azure_schema_mismatch.py", workers=2)
    try:
        assert httpx.get(server.url + "/").status_code == 200
        answer = httpx.post(server.url + "/score", json={"x": [[1.0, 2.0]]}, timeout=30)
        assert answer.status_code == 500 and answer.headers["x-ms-run-function-failed"] == "True"
        assert "input_schema names parameter(s) ['x'] that run() does not take" in answer.json()["message"]
        assert server.log().count("does not take") == 1
    finally:
        assert server.stop() == 0
