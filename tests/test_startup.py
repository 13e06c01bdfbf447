"""Start-up: entry-script failures exit 3 with one clear line, bad settings and busy ports exit
non-zero with one line, and the CLI's flags, environment and config file are honoured."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest

from conftest import EXAMPLES, SCRIPTS, run_server_to_exit, start_server


@pytest.mark.parametrize(
    "script, cause",
    [
        ("missing_script.py", "file not found"),
        ("broken_syntax.py", "SyntaxError"),
        ("no_run.py", "defines no run() function"),
        ("init_raises.py", "init() raised ValueError: model file is corrupt"),
        ("import_error.py", "importing it raised ModuleNotFoundError"),
        ("bad_signature.py", "run() may not take *args or **kwargs"),
    ],
)
def test_unusable_entry_script_exits_3_with_one_line_naming_script_and_cause(tmp_path, script, cause):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / script))
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, result.stderr
    assert script in lines[0] and cause in lines[0]


def test_init_failure_logs_the_traceback(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "init_raises.py"))
    assert "Traceback" in result.stderr and 'raise ValueError("model file is corrupt")' in result.stderr


def test_entry_script_from_environment_relative_to_app_root(tmp_path):
    server = start_server(tmp_path, env={"AZUREML_ENTRY_SCRIPT": "plain_echo.py", "AML_APP_ROOT": str(SCRIPTS)})
    try:
        assert httpx.post(server.url + "/score", content=b"hi").json()["received"] == "hi"
    finally:
        assert server.stop() == 0


def test_no_entry_script_is_a_clear_error(tmp_path):
    result = run_server_to_exit(tmp_path)
    assert result.returncode == 2
    assert "nothing to serve: pass --entry-script PATH" in result.stderr and "--model" in result.stderr


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--port", "70000"], "--port=70000: must be between 0 and 65535"),
        (["--max-concurrent-requests", "0"], "--max-concurrent-requests=0: must be between 1 and 1000"),
        (["--max-queue-wait-ms", "soon"], "--max-queue-wait-ms='soon': must be an integer"),
        (["--scoring-timeout-ms", "-5"], "--scoring-timeout-ms=-5"),
        (["--executor", "fork"], "--executor='fork': must be one of processes, threads, inline"),
        (["--log-level", "loud"], "--log-level='loud': must be one of"),
    ],
)
def test_bad_setting_stops_the_start_with_one_line_naming_it(tmp_path, flags, fragment):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"), *flags)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_environment_value_is_named(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"),
                                env={"SCORING_TIMEOUT_MS": "abc"})
    assert result.returncode == 2
    assert "SCORING_TIMEOUT_MS='abc'" in result.stderr


def test_busy_port_is_one_clear_line_and_a_non_zero_exit(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mlscore", "serve", "--entry-script", str(SCRIPTS / "plain_echo.py"), "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr


def test_config_file_keys_are_environment_names_and_the_cli_wins(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "plain_echo.py"), "MLSCORE_PORT": "1"}))
    # The config file names a port that cannot be bound by us; the CLI's --port 0 must win.
    server = start_server(tmp_path, "--config", str(config))
    try:
        assert httpx.post(server.url + "/score", content=b"x").status_code == 200
        assert "port=0" in server.log()
    finally:
        server.stop()


def test_version_flag_prints_the_version():
    result = subprocess.run([sys.executable, "-m", "mlscore", "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("mlscore 0.")


def test_console_script_is_installed():
    from pathlib import Path

    script = Path(sys.executable).with_name("mlscore")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "mlscore" in result.stdout


def test_sigterm_stops_the_server_with_exit_0(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"))
    assert server.stop() == 0


def test_model_dir_flag_sets_azureml_model_dir_for_the_script(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(EXAMPLES / "diabetes" / "score.py"),
                          "--model-dir", str(EXAMPLES / "diabetes" / "models"))
    try:
        response = httpx.post(server.url + "/score", json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]})
        assert response.status_code == 200
    finally:
        server.stop()


def test_user_supplied_swagger_file_wins_and_a_broken_one_stops_the_start(tmp_path):
    (tmp_path / "swagger3.json").write_text(json.dumps({"openapi": "3.0.3", "info": {"title": "mine", "version": "9"}, "paths": {}}))
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"), "--app-root", str(tmp_path))
    try:
        assert httpx.get(server.url + "/swagger.json?version=3").json()["info"]["title"] == "mine"
        assert httpx.get(server.url + "/swagger.json?version=2").json()["swagger"] == "2.0"
    finally:
        server.stop()
    (tmp_path / "swagger3.json").write_text("{broken")
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"), "--app-root", str(tmp_path))
    assert result.returncode == 3
    assert "swagger3.json" in result.stderr and "Traceback" not in result.stderr.split("cannot start")[0]
