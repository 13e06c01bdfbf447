"""azmlinfsrv's settings: Azure's flags, environment variables, config file and defaults, with Azure's
precedence (flags, then the environment, then the config file), in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlscore.server.azmlinfsrv import APP_INSIGHTS_NOTE, azure_settings, build_parser
from mlscore.server.settings import MAX_QUEUE_WAIT_MS_LIMIT, SettingsError

from conftest import SCRIPTS

SCRIPT = str(SCRIPTS / "sleepy.py")


def settings_for(app_root: Path, *argv: str, **environ: str):
    environ.setdefault("AML_APP_ROOT", str(app_root))
    return azure_settings(build_parser().parse_args(list(argv)), environ)


def test_azure_defaults_differ_from_mlscore_serves(tmp_path):
    settings, notes = settings_for(tmp_path, "--entry_script", SCRIPT)
    assert (settings.host, settings.port) == ("0.0.0.0", 5001)
    assert settings.scoring_timeout_ms == 3_600_000  # SCORING_TIMEOUT_MS's default on Azure
    assert settings.max_queue_wait_ms == MAX_QUEUE_WAIT_MS_LIMIT  # no queue-wait deadline to speak of
    assert (settings.workers, settings.max_concurrent_requests) == (1, 1)
    assert settings.health_port is None and notes == []


def test_flags_win_over_the_environment_which_wins_over_the_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"WORKER_COUNT": 4, "SCORING_TIMEOUT_MS": 1000,
                                                      "AML_CORS_ORIGINS": "https://config.example"}))
    settings, notes = settings_for(tmp_path, "--entry_script", SCRIPT, "--worker_count", "2",
                                   WORKER_COUNT="3", SCORING_TIMEOUT_MS="2000")
    assert settings.workers == 2 and settings.max_concurrent_requests == 2  # the flag
    assert settings.scoring_timeout_ms == 2000  # the environment over the file
    assert settings.cors_origins == ("https://config.example",)  # the file over the default
    assert notes == [f"config file: {tmp_path.resolve() / 'config.json'}"]


def test_the_port_comes_from_the_flag_as_on_azure_where_server_port_is_ignored(tmp_path):
    settings, _ = settings_for(tmp_path, "--entry_script", SCRIPT, SERVER_PORT="7000")
    assert settings.port == 5001
    settings, _ = settings_for(tmp_path, "--entry_script", SCRIPT, "--port", "7001")
    assert settings.port == 7001


def test_config_file_is_found_beside_the_entry_script_or_named_by_flag_or_environment(tmp_path):
    app, scripts, other = tmp_path / "app", tmp_path / "scripts", tmp_path / "other.json"
    app.mkdir()
    scripts.mkdir()
    (scripts / "score.py").write_text("def run(data):\n    return data\n")
    (scripts / "config.json").write_text(json.dumps({"WORKER_COUNT": 3}))
    other.write_text(json.dumps({"WORKER_COUNT": 5}))
    assert settings_for(app, "--entry_script", str(scripts / "score.py"))[0].workers == 3
    assert settings_for(app, "--entry_script", str(scripts / "score.py"), AZUREML_CONFIG_FILE=str(other))[0].workers == 5
    assert settings_for(app, "--entry_script", str(scripts / "score.py"), "--config_file", str(other))[0].workers == 5


def test_entry_script_from_the_config_file_is_taken_against_the_app_root(tmp_path):
    (tmp_path / "score.py").write_text("def run(data):\n    return data\n")
    (tmp_path / "config.json").write_text(json.dumps({"AZUREML_ENTRY_SCRIPT": "score.py"}))
    settings, _ = settings_for(tmp_path)
    assert settings.entry_script == Path("score.py") and settings.app_root == tmp_path.resolve()


@pytest.mark.parametrize(("environ", "argv", "port"), [
    ({"SEPERATE_HEALTH_ENDPOINT": "true"}, (), 5000),
    ({"SEPERATE_HEALTH_ENDPOINT": "true", "HEALTH_PORT": "6000"}, (), 6000),
    ({"SEPERATE_HEALTH_ENDPOINT": "true", "HEALTH_PORT": "6000"}, ("--health_port", "6001"), 6001),
    ({}, ("--health_port", "6001"), None),  # the port alone does nothing, as on Azure
    ({"HEALTH_PORT": "6000"}, (), None),
])
def test_health_port_only_with_seperate_health_endpoint(tmp_path, environ, argv, port):
    settings, _ = settings_for(tmp_path, "--entry_script", SCRIPT, *argv, **environ)
    assert settings.health_port == port


def test_seperate_health_endpoint_from_the_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"SEPERATE_HEALTH_ENDPOINT": True, "HEALTH_PORT": 6002}))
    assert settings_for(tmp_path, "--entry_script", SCRIPT)[0].health_port == 6002


@pytest.mark.parametrize("how", [("--appinsights_instrumentation_key", "k"), ("AML_APP_INSIGHTS_KEY", "k"),
                                 ("AML_APP_INSIGHTS_ENABLED", "true")])
def test_app_insights_is_accepted_with_a_note(tmp_path, how):
    name, value = how
    argv, environ = ((name, value), {}) if name.startswith("--") else ((), {name: value})
    _, notes = settings_for(tmp_path, "--entry_script", SCRIPT, *argv, **environ)
    assert notes == [APP_INSIGHTS_NOTE]


@pytest.mark.parametrize(("argv", "message"), [
    (("--worker_count", "0"), "--worker_count=0: must be between 1 and 256"),
    (("--port", "70000"), "--port=70000: must be between 0 and 65535"),
    (("--health_port", "5001"), "--health_port=5001: the health port must differ from the scoring port (--port)"),
])
def test_bad_values_are_named_by_azures_flags(tmp_path, argv, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        settings_for(tmp_path, "--entry_script", SCRIPT, *argv, SEPERATE_HEALTH_ENDPOINT="true")


def test_no_script_anywhere_is_one_line_saying_how_to_give_one(tmp_path):
    with pytest.raises(SettingsError, match=r"no score script: give --entry_script PATH .* or put main\.py in the "
                                            r"app root"):
        settings_for(tmp_path)


def test_a_config_file_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SettingsError, match=r"config file .*config\.json: not valid JSON"):
        settings_for(tmp_path, "--entry_script", SCRIPT)
