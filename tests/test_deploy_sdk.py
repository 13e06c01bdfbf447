"""The Python API shaped like Azure's SDK, end to end on the local target, and its config builders."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from mlscore.deploy import (
    AciWebservice,
    AksWebservice,
    DeployError,
    InferenceConfig,
    LocalWebservice,
    Model,
    Webservice,
    Workspace,
)
from mlscore.deploy.configs import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIABETES_MODEL = EXAMPLES / "diabetes" / "models" / "sklearn_regression_model.pkl"
ROW = [[0.04, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02]]


def test_register_deploy_run_update_and_delete_like_the_azure_sdk(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(EXAMPLES / "diabetes")
    ws = Workspace(tmp_path / "registry")
    first = Model.register(workspace=ws, model_path=str(DIABETES_MODEL), model_name="sklearn_regression_model.pkl",
                           tags={"area": "diabetes"}, description="ridge")
    second = Model.register(ws, model_path=str(DIABETES_MODEL), model_name="sklearn_regression_model.pkl")
    assert (first.id, second.version, first.tags, first.description) == (
        "sklearn_regression_model.pkl:1", 2, {"area": "diabetes"}, "ridge")
    assert Model(ws, "sklearn_regression_model.pkl").version == 2
    assert Model.get_model_path("sklearn_regression_model.pkl", version=1, _workspace=ws).endswith(
        "/1/sklearn_regression_model.pkl")

    inference_config = InferenceConfig(entry_script="score.py", runtime="python")
    deployment_config = LocalWebservice.deploy_configuration()
    service = Model.deploy(ws, "diabetes", [first], inference_config, deployment_config)
    try:
        service.wait_for_deployment(show_output=True)
        assert "Healthy" in capsys.readouterr().out
        assert service.state == "Healthy" and service.compute_type == "local"
        assert service.scoring_uri.endswith("/score") and service.swagger_uri.endswith("/swagger.json")
        prediction = service.run(json.dumps({"data": ROW}))
        assert isinstance(prediction, list) and len(prediction) == 1
        assert service.run({"data": ROW}) == prediction  # a value is encoded for you
        assert "paths" in httpx.get(service.swagger_uri).json()
        assert "serving" in service.get_logs()
        with pytest.raises(DeployError, match="auth off"):
            service.get_keys()
        with pytest.raises(DeployError, match="answered 400"):
            service.run({"data": "not a table"})

        service.update(models=[second])
        assert service.error is None and [model.id for model in service.models] == ["sklearn_regression_model.pkl:2"]
        assert service.run({"data": ROW}) == prediction
        assert Webservice(ws, "diabetes").state == "Healthy"
    finally:
        service.delete()
    with pytest.raises(DeployError, match="no service named 'diabetes'"):
        Webservice(ws, "diabetes")


def test_a_failed_deploy_raises_from_wait_for_deployment(tmp_path, monkeypatch):
    (tmp_path / "score.py").write_text("def init():\n    raise RuntimeError('no model here')\n\n"
                                       "def run(data):\n    return data\n")
    (tmp_path / "m.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path / "registry")
    model = Model.register(ws, model_path="m.txt", model_name="m")
    service = Model.deploy(ws, "broken", [model], InferenceConfig(entry_script="score.py"),
                           LocalWebservice.deploy_configuration())
    try:
        assert service.state == "Failed"
        with pytest.raises(DeployError, match="no model here"):
            service.wait_for_deployment()
    finally:
        service.delete()


def test_inference_config_is_checked_like_the_json_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="entryScript"):
        InferenceConfig(entry_script="missing.py")
    with pytest.raises(ConfigError, match="spark-py"):
        InferenceConfig(entry_script="missing.py", runtime="spark-py")


def test_aci_deploy_configuration_takes_the_sdk_parameter_names():
    config = AciWebservice.deploy_configuration(cpu_cores=2, memory_gb=3.5, auth_enabled=True, location="westeurope")
    assert config.container_resource_requirements.cpu == 2
    assert config.container_resource_requirements.memory_in_gb == 3.5
    assert config.auth_enabled is True and config.location == "westeurope"
    assert any(note.startswith("location") for note in config.notes)


def test_aks_deploy_configuration_takes_the_sdk_parameter_names():
    config = AksWebservice.deploy_configuration(
        autoscale_enabled=True, autoscale_min_replicas=2, autoscale_max_replicas=5, autoscale_target_utilization=60,
        cpu_cores=1.5, memory_gb=2, scoring_timeout_ms=5000, replica_max_concurrent_requests=4,
        max_request_wait_time=250, primary_key="p1", secondary_key="s1", gpu_cores=0, period_seconds=7,
        failure_threshold=5, namespace="models")
    assert (config.auto_scaler.min_replicas, config.auto_scaler.max_replicas, config.auto_scaler.target_utilization) \
        == (2, 5, 60)
    assert config.max_concurrent_requests_per_container == 4 and config.max_queue_wait_ms == 250
    assert config.scoring_timeout_ms == 5000 and config.gpu_cores == 0 and config.namespace == "models"
    assert (config.keys.primary_key, config.keys.secondary_key) == ("p1", "s1")
    assert config.liveness_probe_requirements.period_seconds == 7
    assert config.liveness_probe_requirements.failure_threshold == 5
    assert config.auth_enabled is True  # AKS's default
    with pytest.raises(ConfigError, match="namespace"):
        AksWebservice.deploy_configuration(namespace="Not_Valid")
    with pytest.raises(ConfigError, match="minReplicas"):
        AksWebservice.deploy_configuration(autoscale_min_replicas=0)
