"""The aci (container) and aks (Kubernetes) targets through `deploy.service`, with the engine and the
cluster stubbed: what is written, what runs, what is recorded, and keys across updates."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlscore.deploy import image, kubernetes, service
from mlscore.deploy.configs import load_deployment_config, load_inference_config
from mlscore.deploy.registry import Registry


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    app = tmp_path / "app"
    app.mkdir()
    (app / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return data\n")
    (tmp_path / "model.txt").write_text("weights")
    registry = Registry(tmp_path / "registry")
    registry.register("m", tmp_path / "model.txt")
    registry.register("m", tmp_path / "model.txt")
    wheel = tmp_path / "mlscore-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    monkeypatch.setattr(image, "build_mlscore_wheel", lambda into: wheel)
    monkeypatch.setattr(kubernetes, "cluster_available", lambda: False)
    inference = load_inference_config({"entryScript": "score.py", "sourceDirectory": "app"}, base_dir=tmp_path)
    return {"registry": registry, "inference": inference, "tmp": tmp_path}


class FakeEngine:
    """Records what the aci target asks of the engine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ready: bool = True) -> None:
        self.calls: list[tuple] = []
        self.ready = ready
        monkeypatch.setattr(image, "find_engine", lambda: "podman")
        monkeypatch.setattr(image, "build", lambda context, engine: self.calls.append(("build", context.image)))
        monkeypatch.setattr(image, "run", self._run)
        monkeypatch.setattr(image, "wait_ready", lambda engine, container, uri, progress: self.ready)
        monkeypatch.setattr(image, "remove", lambda engine, name: self.calls.append(("remove", name)))
        monkeypatch.setattr(image, "logs", lambda engine, container, lines: "init() failed: boom")

    def _run(self, context: image.BuildContext, engine: str, port: int, name: str) -> str:
        self.calls.append(("run", context.image, port, name, dict(context.run_env)))
        return f"container-{len(self.calls)}"


def test_aci_without_an_engine_writes_the_context_and_prints_how_to_build_it(setup, monkeypatch):
    monkeypatch.setattr(image, "find_engine", lambda: None)
    said: list[str] = []
    deployment = load_deployment_config({"computeType": "aci", "authEnabled": True})
    deployed = service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"], deployment,
                              output=setup["tmp"] / "out", progress=said.append)
    assert deployed.record.state == "Written"
    assert (setup["tmp"] / "out" / "Dockerfile").is_file()
    assert (setup["tmp"] / "out" / "azureml-models" / "m" / "1" / "model.txt").read_text() == "weights"
    printed = "\n".join(said)
    assert "no container engine works here" in printed and "docker build --tag mlscore-svc:" in printed
    assert deployed.keys is not None and deployed.keys.primary_key not in printed  # keys never printed
    assert deployed.keys.primary_key not in (setup["tmp"] / "out" / "Dockerfile").read_text()


def test_aci_builds_runs_and_replaces_the_container_on_update(setup, monkeypatch):
    engine = FakeEngine(monkeypatch)
    deployment = load_deployment_config({"computeType": "aci", "authEnabled": True})
    deployed = service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"], deployment,
                              output=setup["tmp"] / "out", progress=lambda line: None)
    assert deployed.record.state == "Healthy"
    (_, built), (_, image_name, port, name, env) = engine.calls
    assert image_name == built and name == "mlscore-svc"
    assert env == {"MLSCORE_AUTH_KEYS": f"{deployed.keys.primary_key},{deployed.keys.secondary_key}"}
    assert deployed.scoring_uri == f"http://127.0.0.1:{port}/score"

    updated = service.update(setup["registry"], "svc", ["m:2"], progress=lambda line: None)
    assert updated.record.models == ("m:2",) and updated.keys == deployed.keys  # keys kept across updates
    assert ("remove", "container-2") in engine.calls
    assert engine.calls[-1][2] == port  # the same port

    keys = service.regenerate_key(setup["registry"], "svc", "secondary", progress=lambda line: None)
    assert keys.primary_key == deployed.keys.primary_key and keys.secondary_key != deployed.keys.secondary_key
    assert engine.calls[-1][4]["MLSCORE_AUTH_KEYS"].endswith(keys.secondary_key)
    assert service.get(setup["registry"], "svc").keys == keys

    service.delete(setup["registry"], "svc", progress=lambda line: None)
    assert engine.calls[-1][0] == "remove"
    assert setup["registry"].list_services() == []


def test_aci_data_collection_writes_to_a_named_volume_and_app_insights_to_json_logs(setup, monkeypatch):
    monkeypatch.setattr(image, "find_engine", lambda: None)
    said: list[str] = []
    deployment = load_deployment_config({"computeType": "aci", "dataCollection": {"storageEnabled": True},
                                         "appInsightsEnabled": True})
    service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"], deployment, output=setup["tmp"] / "out",
                   progress=said.append)
    dockerfile = (setup["tmp"] / "out" / "Dockerfile").read_text()
    assert 'MLSCORE_COLLECT_DATA="/var/mlscore/model-data"' in dockerfile
    assert 'MLSCORE_LOG_FORMAT="json"' in dockerfile
    assert "chown 1000:1000 /var/mlscore/model-data" in dockerfile and 'VOLUME ["/var/mlscore/model-data"]' in dockerfile
    printed = "\n".join(said)
    assert "--volume mlscore-svc-model-data:/var/mlscore/model-data" in printed
    assert "note: dataCollection.storageEnabled: model data is written as JSON lines to /var/mlscore/model-data" in printed
    assert "note: appInsightsEnabled: no Application Insights here: the server writes JSON log lines to stdout" in printed


def test_aci_container_that_never_turns_ready_fails_with_its_log(setup, monkeypatch):
    FakeEngine(monkeypatch, ready=False)
    deployment = load_deployment_config({"computeType": "aci"})
    with pytest.raises(service.DeployError, match="init\\(\\) failed: boom"):
        service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"], deployment,
                       output=setup["tmp"] / "out", progress=lambda line: None)
    assert service.get(setup["registry"], "svc").record.state == "Failed"


def test_aks_writes_manifests_and_keys_and_regenerating_a_key_rewrites_the_secret(setup):
    said: list[str] = []
    deployment = load_deployment_config({"computeType": "aks", "numReplicas": 2, "namespace": "models",
                                         "keys": {"primaryKey": "given-primary"}})
    deployed = service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"], deployment,
                              output=setup["tmp"] / "out", progress=said.append)
    manifests = setup["tmp"] / "out" / "manifests"
    assert deployed.record.state == "Written" and deployed.keys.primary_key == "given-primary"
    assert "kubectl apply -f" in "\n".join(said)
    assert (setup["tmp"] / "out" / "image" / "Dockerfile").is_file()
    kinds = [yaml.safe_load(path.read_text())["kind"] for path in sorted(manifests.glob("*.yaml"))]
    assert kinds == ["Namespace", "Secret", "Deployment", "Service", "PodDisruptionBudget"]

    def secret() -> dict[str, str]:
        data = yaml.safe_load(next(manifests.glob("*-secret.yaml")).read_text())
        values = data.get("stringData") or {key: base64.b64decode(value).decode()
                                            for key, value in data["data"].items()}
        return values

    assert secret()["primaryKey"] == "given-primary"
    keys = service.regenerate_key(setup["registry"], "svc", "primary", progress=said.append)
    assert keys.primary_key != "given-primary" and secret()["primaryKey"] == keys.primary_key
    assert service.get(setup["registry"], "svc").keys == keys

    said.clear()
    service.delete(setup["registry"], "svc", progress=said.append)
    assert "kubectl delete -f" in "\n".join(said)


def test_an_update_cannot_move_a_service_to_another_compute_type(setup, monkeypatch):
    monkeypatch.setattr(image, "find_engine", lambda: None)
    service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"],
                   load_deployment_config({"computeType": "aci"}), output=setup["tmp"] / "out",
                   progress=lambda line: None)
    with pytest.raises(service.DeployError, match="cannot move it to aks"):
        service.update(setup["registry"], "svc", deployment=load_deployment_config({"computeType": "aks"}),
                       progress=lambda line: None)


def test_an_output_folder_holding_other_files_is_refused(setup, monkeypatch):
    monkeypatch.setattr(image, "find_engine", lambda: None)
    (setup["tmp"] / "busy").mkdir()
    (setup["tmp"] / "busy" / "thesis.tex").write_text("precious")
    with pytest.raises(service.DeployError, match="not empty"):
        service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"],
                       load_deployment_config({"computeType": "aci"}), output=setup["tmp"] / "busy",
                       progress=lambda line: None)
    assert (setup["tmp"] / "busy" / "thesis.tex").read_text() == "precious"


def test_aci_with_ssl_runs_the_container_with_the_pair_mounted_and_scores_over_https(setup, monkeypatch):
    from test_tls import make_certificate

    cert, key = make_certificate(setup["tmp"])
    engine = FakeEngine(monkeypatch)
    contexts: list[image.BuildContext] = []
    recorded_run = image.run
    monkeypatch.setattr(image, "run", lambda context, *args: contexts.append(context) or recorded_run(context, *args))
    deployment = load_deployment_config({"computeType": "aci", "sslEnabled": True, "sslCertificate": cert.name,
                                         "sslKey": key.name}, base_dir=setup["tmp"])
    deployed = service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"], deployment,
                              output=setup["tmp"] / "out", progress=lambda line: None)
    port = engine.calls[-1][2]
    assert deployed.scoring_uri == f"https://127.0.0.1:{port}/score"
    command = contexts[0].run_command("podman", port, "mlscore-svc")
    assert f"{cert}:/etc/mlscore/tls/cert.pem:ro" in command and f"{key}:/etc/mlscore/tls/key.pem:ro" in command
    assert key.read_bytes() not in b"".join(path.read_bytes() for path in (setup["tmp"] / "out").rglob("*")
                                            if path.is_file())
    updated = service.update(setup["registry"], "svc", ["m:2"], progress=lambda line: None)  # the pair is kept
    assert updated.scoring_uri.startswith("https://") and contexts[-1].tls == (cert, key)


def test_aci_with_a_mismatched_ssl_pair_fails_before_building(setup, monkeypatch):
    from test_tls import make_certificate

    cert, _ = make_certificate(setup["tmp"], "one")
    _, other_key = make_certificate(setup["tmp"], "two")
    engine = FakeEngine(monkeypatch)
    deployment = load_deployment_config({"computeType": "aci", "sslEnabled": True, "sslCertificate": cert.name,
                                         "sslKey": other_key.name}, base_dir=setup["tmp"])
    with pytest.raises(service.DeployError, match="the key does not belong to the certificate"):
        service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"], deployment,
                       output=setup["tmp"] / "out", progress=lambda line: None)
    assert engine.calls == []


def test_an_update_turning_auth_off_drops_the_keys_and_turning_it_on_makes_them(setup, monkeypatch):
    engine = FakeEngine(monkeypatch)
    quiet = lambda line: None  # noqa: E731
    service.deploy(setup["registry"], "svc", ["m:1"], setup["inference"],
                   load_deployment_config({"computeType": "aci", "authEnabled": True}), output=setup["tmp"] / "out",
                   progress=quiet)
    off = service.update(setup["registry"], "svc", deployment=load_deployment_config({"computeType": "aci"}),
                         progress=quiet)
    assert off.keys is None and engine.calls[-1][4] == {}
    on = service.update(setup["registry"], "svc",
                        deployment=load_deployment_config({"computeType": "aci", "authEnabled": True}), progress=quiet)
    assert on.keys is not None and on.keys.primary_key and on.keys.secondary_key
    assert engine.calls[-1][4]["MLSCORE_AUTH_KEYS"] == f"{on.keys.primary_key},{on.keys.secondary_key}"
