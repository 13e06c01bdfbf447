"""Settings: sources in order (CLI, environment, config file, deployment config, defaults) and validation."""

from __future__ import annotations

import json

import pytest

from mlscore.server.settings import Settings, SettingsError


def test_defaults_follow_the_deployment_config_documents():
    settings = Settings.build({}, environ={})
    assert (settings.max_concurrent_requests, settings.max_queue_wait_ms, settings.scoring_timeout_ms) == (1, 500, 60000)
    assert (settings.host, settings.port, settings.executor, settings.max_queue_size) == ("127.0.0.1", 5001, "processes", 1024)
    assert settings.workers == 1  # the concurrency limit


def test_cli_beats_environment_beats_config_file_beats_deploy_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"MLSCORE_MAX_QUEUE_WAIT_MS": "300", "SCORING_TIMEOUT_MS": 2000}))
    deploy = tmp_path / "deploymentconfig.json"
    deploy.write_text(json.dumps({"maxQueueWaitMs": 100, "scoringTimeoutMs": 1000, "maxConcurrentRequestsPerContainer": 4}))
    settings = Settings.build({"max_queue_wait_ms": "700"}, environ={"MLSCORE_MAX_QUEUE_WAIT_MS": "600"},
                              config_file=config, deploy_config=deploy)
    assert settings.max_queue_wait_ms == 700
    assert settings.scoring_timeout_ms == 2000
    assert settings.max_concurrent_requests == 4 and settings.workers == 4
    assert settings.sources["scoring_timeout_ms"] == "SCORING_TIMEOUT_MS (config file)"


def test_azure_scoring_timeout_variable_is_honoured():
    assert Settings.build({}, environ={"SCORING_TIMEOUT_MS": "1234"}).scoring_timeout_ms == 1234


def test_worker_count_variable_sets_the_workers():
    assert Settings.build({}, environ={"WORKER_COUNT": "3"}).workers == 3


def test_graceful_timeout_is_30_seconds_unless_set_in_seconds_with_fractions():
    assert Settings.build({}, environ={}).graceful_timeout == 30.0
    assert Settings.build({}, environ={"MLSCORE_GRACEFUL_TIMEOUT": "2.5"}).graceful_timeout == 2.5
    assert Settings.build({"graceful_timeout": "0.5"}, environ={"MLSCORE_GRACEFUL_TIMEOUT": "2.5"}).graceful_timeout == 0.5
    with pytest.raises(SettingsError, match="MLSCORE_GRACEFUL_TIMEOUT=-1: must be more than 0"):
        Settings.build({}, environ={"MLSCORE_GRACEFUL_TIMEOUT": "-1"})


def test_auth_keys_from_environment_and_are_redacted():
    settings = Settings.build({}, environ={"MLSCORE_AUTH_KEYS": "primary-secret,secondary-secret"})
    assert settings.auth_keys == ("primary-secret", "secondary-secret")
    assert "secret" not in repr(settings.redacted())


@pytest.mark.parametrize(
    "cli, message",
    [
        ({"max_concurrent_requests": "many"}, "--max-concurrent-requests='many': must be an integer"),
        ({"workers": "0"}, "--workers=0: must be between 1 and 256"),
        ({"executor": "gpu"}, "must be one of processes, threads, inline"),
        ({"auth_key": ["a", "b", "c"]}, "at most two keys"),
        ({"graceful_timeout": "0"}, "--graceful-timeout=0: must be more than 0 and at most 86400 seconds"),
        ({"graceful_timeout": "soon"}, "--graceful-timeout='soon': must be a number of seconds"),
    ],
)
def test_bad_values_name_the_setting_and_what_is_allowed(cli, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("*", r"\*")):
        Settings.build(cli, environ={})


@pytest.mark.parametrize(("cli", "environ", "label"), [
    ({"auth_key": [""]}, {}, "--auth-key"),
    ({"auth_key": ["   "]}, {}, "--auth-key"),
    ({"auth_key": ["good-key", ""]}, {}, "--auth-key"),
    ({}, {"MLSCORE_AUTH_KEYS": " "}, "MLSCORE_AUTH_KEYS"),
    ({}, {"MLSCORE_AUTH_KEYS": "good-key,"}, "MLSCORE_AUTH_KEYS"),
])
def test_a_blank_auth_key_is_refused_rather_than_turning_auth_off(cli, environ, label):
    """Issue 16, item 2: `--auth-key ""` started with 0 keys and answered /score without one."""
    with pytest.raises(SettingsError, match=f"^{label}: a key is empty or blank, which would turn authentication off"):
        Settings.build(cli, environ=environ)


def test_unreadable_config_file_is_named(tmp_path):
    broken = tmp_path / "bad.json"
    broken.write_text("{nope")
    with pytest.raises(SettingsError, match="not valid JSON"):
        Settings.build({}, environ={}, config_file=broken)
    with pytest.raises(SettingsError, match="file not found"):
        Settings.build({}, environ={}, config_file=tmp_path / "missing.json")


def test_device_from_flag_environment_or_the_inference_configs_enable_gpu(tmp_path):
    assert Settings.build({}, environ={}).device == "auto"
    inference = tmp_path / "inferenceconfig.json"
    inference.write_text(json.dumps({"entryScript": "score.py", "sourceDirectory": "src", "enableGpu": True}))
    from_file = Settings.build({}, environ={}, inference_config=inference)
    assert from_file.device == "gpu" and from_file.sources["device"] == "enableGpu (inference config)"
    assert str(from_file.entry_script) == "score.py" and str(from_file.source_directory) == "src"
    inference.write_text(json.dumps({"enableGpu": False}))
    assert Settings.build({}, environ={}, inference_config=inference).device == "cpu"
    assert Settings.build({}, environ={"MLSCORE_DEVICE": "OpenCL"}, inference_config=inference).device == "opencl"
    assert Settings.build({"device": "cpu"}, environ={"MLSCORE_DEVICE": "gpu"}).device == "cpu"
    with pytest.raises(SettingsError, match="--device='tpu': must be one of auto, cpu, gpu, opencl"):
        Settings.build({"device": "tpu"}, environ={})


def test_model_name_defaults_to_the_files_stem_and_excludes_a_script():
    settings = Settings.build({"model": "models/digits_mlp.onnx"}, environ={})
    assert settings.model_name == "digits_mlp" and settings.entry_script is None
    with pytest.raises(SettingsError, match="serve an entry script or a model, not both"):
        Settings.build({"model": "m.onnx", "entry_script": "score.py"}, environ={})
    with pytest.raises(SettingsError, match="--model-name='a b'"):
        Settings.build({"model": "m.onnx", "model_name": "a b"}, environ={})
