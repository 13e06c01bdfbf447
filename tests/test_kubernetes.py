"""The `aks` target's manifests: each passes kubernetes-validate --strict, each deployment-config
setting lands where Kubernetes reads it, the files are written for `kubectl apply -f`, and without
a cluster the command is printed instead."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlscore.deploy import kubernetes
from mlscore.deploy.configs import InferenceConfig, Keys, load_deployment_config
from mlscore.deploy.kubernetes import (
    KubectlError,
    run_or_print,
    cluster_available,
    render_manifests,
    to_yaml,
    write_manifests,
)
from mlscore.deploy.registry import ModelVersion
from mlscore.server.settings import Settings

KEYS = Keys("primary-secret-value", "secondary-secret-value")
CPU = InferenceConfig(entry_script="score.py")
GPU = InferenceConfig(entry_script="score.py", enable_gpu=True)
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
KUBERNETES_VERSIONS = ("1.30", "1.37")  # the oldest AKS still supports, and the newest bundled


def model(name: str = "diabetes", version: int = 3) -> ModelVersion:
    return ModelVersion(name, version, None, {}, datetime.now(timezone.utc), "/src", 1, "0" * 64,
                        Path(f"/registry/models/{name}/{version}/model.onnx"))


def render(fields: dict[str, Any] | None = None, inference: InferenceConfig = CPU, keys: Keys | None = KEYS,
           models: list[ModelVersion] | None = None) -> dict[str, dict[str, Any]]:
    """The manifests of service `svc`, by kind."""
    deployment = load_deployment_config({"computeType": "aks", **(fields or {})})
    manifests = render_manifests("svc", deployment, inference, "mlscore-svc:1",
                                 [model()] if models is None else models, keys)
    return {manifest["kind"]: manifest for manifest in manifests}


def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def environment(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container(manifests)["env"]}


# --- validity ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written_variants(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The files of every shape of service: autoscaled with auth, a namespace and a GPU; fixed replicas
    without auth in the default namespace; the context's namespace with one key."""
    root = tmp_path_factory.mktemp("manifests")
    variants = [
        ({"namespace": "models", "containerResourceRequirements": {"cpu": 1.5, "memoryInGB": 4},
          "gpuCores": 2}, GPU, KEYS, [model(), model("other", 1)]),
        ({"namespace": "default", "numReplicas": 3, "authEnabled": False, "dataCollection": {"storageEnabled": True},
          "appInsightsEnabled": True}, CPU, None, [model()]),
        ({"autoScaler": {"autoscaleEnabled": False}}, CPU, Keys("only-key"), []),
    ]
    paths: list[Path] = []
    for index, (fields, inference, keys, models) in enumerate(variants):
        deployment = load_deployment_config({"computeType": "aks", **fields})
        manifests = render_manifests("svc", deployment, inference, "registry.example/mlscore-svc:1", models, keys)
        paths += write_manifests(manifests, root / str(index))
    return paths


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(written_variants: list[Path], version: str) -> None:
    result = subprocess.run([str(VALIDATE), "--strict", "-k", version, *map(str, written_variants)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed ") == len(written_variants)


def test_written_yaml_reads_back_as_the_rendered_objects(tmp_path: Path) -> None:
    manifests = list(render({"namespace": "models"}, GPU).values())
    for path, manifest in zip(write_manifests(manifests, tmp_path), manifests):
        assert yaml.safe_load(path.read_text()) == manifest


@pytest.mark.parametrize("text", ["yes", "No", "on", "null", "~", "1.0", "0x1F", "1e3", "012", "2024-01-01", "",
                                  "a: b", "#x", "- x", "*ref", "{x}", "tab\there", "two\nlines", 'say "hi"',
                                  "naïve", "100m", "$(VAR),$(OTHER)", "/metrics", "app.kubernetes.io/name"])
def test_yaml_keeps_strings_that_yaml_would_read_as_something_else(text: str) -> None:
    document = {text: [text, {"value": text}], "number": 5001, "flag": False, "empty": {}, "none": []}
    assert yaml.safe_load(to_yaml(document)) == document


# --- objects and order ---------------------------------------------------------------------------------


def test_objects_come_in_apply_order_namespace_first() -> None:
    assert list(render({"namespace": "models"})) == [
        "Namespace", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]


@pytest.mark.parametrize(("namespace", "object_expected"), [(None, False), ("default", False), ("models", True)])
def test_namespace_object_only_for_a_namespace_other_than_default(namespace: str | None,
                                                                  object_expected: bool) -> None:
    manifests = render({"namespace": namespace} if namespace else {})
    assert ("Namespace" in manifests) is object_expected
    for kind, manifest in manifests.items():
        if kind != "Namespace":
            assert manifest["metadata"].get("namespace") == namespace


def test_service_name_that_kubernetes_refuses_is_refused() -> None:
    deployment = load_deployment_config({"computeType": "aks"})
    with pytest.raises(ValueError, match="service name 'Bad_Name'"):
        render_manifests("Bad_Name", deployment, CPU, "image:1", [model()], KEYS)


def test_labels_and_selectors_tie_every_object_to_the_deployments_pods() -> None:
    manifests = render()
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    assert pod_labels["app.kubernetes.io/managed-by"] == "mlscore"
    assert selector.items() <= pod_labels.items()
    assert selector == {"app.kubernetes.io/name": "svc", "app.kubernetes.io/instance": "svc"}
    assert manifests["Service"]["spec"]["selector"] == selector
    assert manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "svc"}
    for manifest in manifests.values():
        assert manifest["metadata"]["labels"] == pod_labels


def test_service_sends_port_80_to_the_servers_port() -> None:
    manifests = render()
    assert manifests["Service"]["spec"]["type"] == "ClusterIP"
    assert manifests["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert container(manifests)["ports"] == [{"name": "http", "containerPort": 5001, "protocol": "TCP"}]
    assert environment(manifests)["MLSCORE_HOST"] == "0.0.0.0"
    assert environment(manifests)["MLSCORE_PORT"] == "5001"


def test_disruption_budget_lets_one_replica_go_at_a_time() -> None:
    assert render()["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


# --- keys ----------------------------------------------------------------------------------------------


def test_keys_live_in_the_secret_and_reach_the_container_by_reference() -> None:
    manifests = render()
    secret = manifests["Secret"]
    assert secret["metadata"]["name"] == "svc-keys"
    assert secret["data"] == {"primaryKey": "cHJpbWFyeS1zZWNyZXQtdmFsdWU=",
                              "secondaryKey": "c2Vjb25kYXJ5LXNlY3JldC12YWx1ZQ=="}
    env = environment(manifests)
    assert env["MLSCORE_AUTH_PRIMARY_KEY"] == {"secretKeyRef": {"name": "svc-keys", "key": "primaryKey"}}
    assert env["MLSCORE_AUTH_SECONDARY_KEY"] == {"secretKeyRef": {"name": "svc-keys", "key": "secondaryKey"}}
    assert env["MLSCORE_AUTH_KEYS"] == "$(MLSCORE_AUTH_PRIMARY_KEY),$(MLSCORE_AUTH_SECONDARY_KEY)"
    deployment_text = to_yaml(manifests["Deployment"])
    assert KEYS.primary_key not in deployment_text and KEYS.secondary_key not in deployment_text


def test_a_single_key_is_the_only_key_the_server_accepts() -> None:
    manifests = render(keys=Keys("only-key"))
    assert list(manifests["Secret"]["data"]) == ["primaryKey"]
    assert environment(manifests)["MLSCORE_AUTH_KEYS"] == "$(MLSCORE_AUTH_PRIMARY_KEY)"


def test_new_keys_replace_the_pods() -> None:
    template = render()["Deployment"]["spec"]["template"]
    rotated = render(keys=Keys("new-primary", "new-secondary"))["Deployment"]["spec"]["template"]
    assert template != rotated
    assert render()["Deployment"]["spec"]["template"] == template


def test_auth_off_has_no_secret_and_no_keys_in_the_environment() -> None:
    manifests = render({"authEnabled": False}, keys=None)
    assert "Secret" not in manifests
    assert not [name for name in environment(manifests) if "AUTH" in name]


def test_auth_on_without_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="no keys were given"):
        render(keys=None)


# --- the server's settings -----------------------------------------------------------------------------


def test_the_server_reads_the_admission_and_auth_settings_from_the_container_environment() -> None:
    manifests = render({"maxConcurrentRequestsPerContainer": 4, "maxQueueWaitMs": 250, "scoringTimeoutMs": 9000})
    secret = {"primaryKey": KEYS.primary_key, "secondaryKey": KEYS.secondary_key}
    resolved: dict[str, str] = {}
    for name, value in environment(manifests).items():  # as the kubelet does: secrets, then $(NAME)
        if isinstance(value, dict):
            value = secret[value["secretKeyRef"]["key"]]
        for known, known_value in resolved.items():
            value = value.replace(f"$({known})", known_value)
        resolved[name] = value
    settings = Settings.build(environ=resolved)
    assert (settings.max_concurrent_requests, settings.max_queue_wait_ms, settings.scoring_timeout_ms) == (4, 250, 9000)
    assert settings.auth_keys == (KEYS.primary_key, KEYS.secondary_key)
    assert (settings.host, settings.port, settings.device, settings.service_name) == ("0.0.0.0", 5001, "cpu", "svc")


@pytest.mark.parametrize(("models", "model_dir"), [
    ([model("diabetes", 3)], "/var/azureml-app/azureml-models/diabetes/3"),
    ([model("diabetes", 3), model("other", 1)], "/var/azureml-app/azureml-models"),
])
def test_model_dir_points_into_the_images_azureml_models(models: list[ModelVersion], model_dir: str) -> None:
    manifests = render(models=models)
    assert environment(manifests)["AZUREML_MODEL_DIR"] == model_dir
    assert manifests["Deployment"]["metadata"]["annotations"]["mlscore/models"] == ",".join(m.ref for m in models)


# --- resources -----------------------------------------------------------------------------------------


def test_resources_request_the_configured_cpu_and_memory_and_cap_memory_only() -> None:
    resources = container(render({"containerResourceRequirements": {"cpu": 0.25, "memoryInGB": 1.5}}))["resources"]
    assert resources == {"requests": {"cpu": "250m", "memory": "1536Mi"}, "limits": {"memory": "1536Mi"}}


def test_azure_defaults_request_a_tenth_of_a_core_and_half_a_gibibyte() -> None:
    assert container(render())["resources"]["requests"] == {"cpu": "100m", "memory": "512Mi"}


@pytest.mark.parametrize(("inference", "gpu_cores", "expected"), [(GPU, 2, 2), (GPU, None, 1), (CPU, 2, None),
                                                                   (CPU, None, None), (GPU, 0, None)])
def test_gpus_are_asked_for_only_for_a_model_that_runs_on_a_gpu(inference: InferenceConfig, gpu_cores: int | None,
                                                                expected: int | None) -> None:
    manifests = render({} if gpu_cores is None else {"gpuCores": gpu_cores}, inference)
    assert container(manifests)["resources"]["limits"].get("nvidia.com/gpu") == expected
    assert environment(manifests)["MLSCORE_DEVICE"] == ("gpu" if inference.enable_gpu else "cpu")


# --- probes and shutdown -------------------------------------------------------------------------------


def test_liveness_probe_on_health_live_takes_liveness_probe_requirements() -> None:
    probe = container(render({"livenessProbeRequirements": {
        "periodSeconds": 7, "initialDelaySeconds": 60, "timeoutSeconds": 4, "failureThreshold": 5}}))["livenessProbe"]
    assert probe == {"httpGet": {"path": "/health/live", "port": "http"}, "periodSeconds": 7, "timeoutSeconds": 4,
                     "successThreshold": 1, "failureThreshold": 5}


@pytest.mark.parametrize(("requirements", "failure_threshold"), [
    ({}, 68),  # Azure's 310 s delay and 3 failures 10 s apart: 340 s
    ({"initialDelaySeconds": 600, "periodSeconds": 10, "failureThreshold": 3}, 126),
    ({"initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 1}, 1),
])
def test_startup_probe_waits_for_readiness_as_long_as_azure_waits_for_init(requirements: dict[str, int],
                                                                           failure_threshold: int) -> None:
    probe = container(render({"livenessProbeRequirements": requirements}))["startupProbe"]
    assert probe["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert (probe["periodSeconds"], probe["failureThreshold"]) == (5, failure_threshold)


def test_readiness_probe_asks_health_ready() -> None:
    assert container(render())["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}


def test_pods_stop_after_endpoints_drain_and_the_graceful_timeout() -> None:
    manifests = render()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert container(manifests)["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 5  # preStop, the server's 30 s, a margin


def test_pods_run_as_non_root_without_extra_privileges() -> None:
    manifests = render()
    assert manifests["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container(manifests)["securityContext"] == {"allowPrivilegeEscalation": False,
                                                       "capabilities": {"drop": ["ALL"]}}


# --- replicas ------------------------------------------------------------------------------------------


def test_data_collection_writes_to_an_empty_dir_volume_the_servers_user_can_write() -> None:
    manifests = render({"dataCollection": {"storageEnabled": True}})
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "model-data", "emptyDir": {}}]
    assert container(manifests)["volumeMounts"] == [{"name": "model-data", "mountPath": "/var/mlscore/model-data"}]
    assert pod["securityContext"]["fsGroup"] == 1000  # so that a PersistentVolumeClaim put there is writable too
    env = environment(manifests)
    assert env["MLSCORE_COLLECT_DATA"] == "/var/mlscore/model-data"
    without = render()
    assert "volumes" not in without["Deployment"]["spec"]["template"]["spec"]
    assert "MLSCORE_COLLECT_DATA" not in environment(without)


def test_app_insights_turns_on_json_request_logs() -> None:
    assert environment(render({"appInsightsEnabled": True}))["MLSCORE_LOG_FORMAT"] == "json"
    assert "MLSCORE_LOG_FORMAT" not in environment(render())


def test_fixed_replicas_set_the_deployment_and_leave_out_the_autoscaler() -> None:
    manifests = render({"numReplicas": 4})
    assert manifests["Deployment"]["spec"]["replicas"] == 4
    assert "HorizontalPodAutoscaler" not in manifests


def test_autoscaler_takes_auto_scaler_and_leaves_replicas_to_itself() -> None:
    manifests = render({"autoScaler": {"minReplicas": 2, "maxReplicas": 6, "targetUtilization": 55,
                                       "refreshPeriodInSeconds": 20}})
    assert "replicas" not in manifests["Deployment"]["spec"]
    spec = manifests["HorizontalPodAutoscaler"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    assert spec["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}}]
    assert {policy["periodSeconds"] for policy in spec["behavior"]["scaleUp"]["policies"]} == {20}


def test_autoscaling_turned_off_runs_min_replicas() -> None:
    manifests = render({"autoScaler": {"autoscaleEnabled": False, "minReplicas": 2}})
    assert manifests["Deployment"]["spec"]["replicas"] == 2
    assert "HorizontalPodAutoscaler" not in manifests


# --- files and kubectl ---------------------------------------------------------------------------------


def test_one_file_per_object_numbered_in_apply_order_with_a_private_secret(tmp_path: Path) -> None:
    paths = write_manifests(list(render({"namespace": "models"}).values()), tmp_path)
    assert [path.name for path in paths] == ["00-namespace.yaml", "01-secret.yaml", "02-deployment.yaml",
                                             "03-service.yaml", "04-horizontalpodautoscaler.yaml",
                                             "05-poddisruptionbudget.yaml"]
    assert sorted(tmp_path.iterdir()) == paths
    assert (tmp_path / "01-secret.yaml").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "02-deployment.yaml").stat().st_mode & 0o777 == 0o644


def test_rewriting_removes_objects_the_service_no_longer_has_and_keeps_other_files(tmp_path: Path) -> None:
    write_manifests(list(render({"namespace": "models"}).values()), tmp_path)
    (tmp_path / "README.md").write_text("mine")
    paths = write_manifests(list(render({"numReplicas": 2, "authEnabled": False}, keys=None).values()), tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([*paths, tmp_path / "README.md"])
    assert [path.name for path in paths] == ["00-deployment.yaml", "01-service.yaml", "02-poddisruptionbudget.yaml"]


def test_without_a_cluster_the_apply_command_is_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes, "cluster_available", lambda: False)
    monkeypatch.setattr(kubernetes.subprocess, "run", _must_not_run)
    said: list[str] = []
    assert run_or_print("apply", tmp_path / "my manifests", said.append) is False
    assert said[0].endswith(f"kubectl apply -f '{tmp_path / 'my manifests'}'")


def test_with_a_cluster_kubectl_applies_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []

    def kubectl(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "deployment.apps/svc created\n", "")

    monkeypatch.setattr(kubernetes, "cluster_available", lambda: True)
    monkeypatch.setattr(kubernetes.subprocess, "run", kubectl)
    said: list[str] = []
    assert run_or_print("apply", tmp_path, said.append) is True
    assert commands == [["kubectl", "apply", "-f", str(tmp_path)]]
    assert said == ["deployment.apps/svc created"]
    assert run_or_print("delete", tmp_path, said.append) is True
    assert commands[-1] == ["kubectl", "delete", "-f", str(tmp_path), "--ignore-not-found"]


def test_a_failed_apply_raises_with_kubectls_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes, "cluster_available", lambda: True)
    monkeypatch.setattr(kubernetes.subprocess, "run", lambda command, **options: subprocess.CompletedProcess(
        command, 1, "", "error: namespaces \"models\" is forbidden\n"))
    with pytest.raises(KubectlError, match="is forbidden"):
        run_or_print("apply", tmp_path, lambda line: None)


def test_no_cluster_without_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes.shutil, "which", lambda name: None)
    monkeypatch.setattr(kubernetes.subprocess, "run", _must_not_run)
    assert cluster_available() is False


@pytest.mark.parametrize("answer", [subprocess.CompletedProcess([], 1, b"", b"connection refused"),
                                    subprocess.TimeoutExpired("kubectl", 10)])
def test_no_cluster_when_kubectl_cannot_reach_one(monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
    def kubectl(command: list[str], **options: Any) -> subprocess.CompletedProcess[bytes]:
        assert command == ["kubectl", "version", "--request-timeout=3s"]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(kubernetes.shutil, "which", lambda name: "/usr/bin/kubectl")
    monkeypatch.setattr(kubernetes.subprocess, "run", kubectl)
    assert cluster_available() is False


def _must_not_run(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("no command should run")
