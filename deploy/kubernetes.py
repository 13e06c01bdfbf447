"""The `aks` target: a service's Kubernetes manifests, written as YAML files and applied with kubectl.

The server is stateless, so a service is a Deployment of identical replicas behind a Service; keys
live in a Secret, scaling is a HorizontalPodAutoscaler, and a PodDisruptionBudget keeps node drains
from taking every replica at once. Rendering is pure; writing and applying are the only I/O.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mlscore.deploy.configs import CONTAINER_DATA_DIR, SERVER_ENV, AksConfig, InferenceConfig, Keys, to_settings_env
from mlscore.deploy.image import APP_ROOT, CONTAINER_PORT, RUN_AS_USER
from mlscore.deploy.layout import model_dir_within
from mlscore.deploy.registry import ModelVersion
from mlscore.server.settings import SETTINGS

Manifest = dict[str, Any]

CONTAINER_NAME = "mlscore"
PRE_STOP_SLEEP_S = 5  # time for the Service's endpoints to drop a stopping pod before it stops accepting
PROBE_PERIOD_S = 5  # startup and readiness: a replica that turns ready is noticed within 5 s
SHUTDOWN_MARGIN_S = 5
SCALE_UP_PODS = 4  # the HPA's own default scale-up policy, kept beside the percent one
DATA_VOLUME = "model-data"  # dataCollection: an emptyDir at CONTAINER_DATA_DIR, for a PersistentVolumeClaim to replace

_DEFAULTS = {setting.name: setting.default for setting in SETTINGS}
GRACEFUL_TIMEOUT_S = math.ceil(_DEFAULTS["graceful_timeout"])  # the server's default; the manifests keep it
PRIMARY_KEY_ENV = "MLSCORE_AUTH_PRIMARY_KEY"
SECONDARY_KEY_ENV = "MLSCORE_AUTH_SECONDARY_KEY"

# A Service's name is a DNS-1035 label; "-keys" is added for the Secret.
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,56}[a-z0-9])?")
_FILE_NAME = re.compile(r"\d\d-[a-z]+\.yaml")


class KubectlError(RuntimeError):
    """`kubectl apply` failed; the message is kubectl's own."""


# --- rendering -----------------------------------------------------------------------------------------


def render_manifests(service: str, deployment: AksConfig, inference: InferenceConfig, image: str,
                     models: Sequence[ModelVersion], keys: Keys | None = None) -> list[Manifest]:
    """The service's objects in the order to apply them: Namespace (unless the namespace is the
    default or the context's), Secret (with auth on), Deployment, Service, HorizontalPodAutoscaler
    (unless the replica count is fixed), PodDisruptionBudget.

    `keys` (from `service_keys(deployment)`) is needed when authEnabled is true; they reach the
    container from the Secret only. `image` is the reference of the service's built image.
    """
    if not _SERVICE_NAME.fullmatch(service):
        raise ValueError(f"service name {service!r}: Kubernetes needs 1 to 58 lowercase letters, digits or '-', "
                         "starting with a letter and ending with a letter or digit")
    # Raises when auth is on without keys.
    settings_env = to_settings_env(deployment, inference, keys, data_dir=str(CONTAINER_DATA_DIR))
    auth_keys = keys if SERVER_ENV["auth_keys"] in settings_env else None
    namespace = deployment.namespace
    manifests: list[Manifest] = []
    if namespace not in (None, "default"):
        manifests.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    if auth_keys is not None:
        manifests.append(_secret(service, namespace, auth_keys))
    manifests.append(_deployment(service, deployment, inference, image, models, settings_env, auth_keys))
    manifests.append(_service(service, namespace))
    if _autoscaled(deployment):
        manifests.append(_autoscaler(service, deployment))
    manifests.append(_disruption_budget(service, namespace))
    return manifests


def _labels(service: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": service, "app.kubernetes.io/instance": service,
            "app.kubernetes.io/managed-by": "mlscore"}


def _selector(service: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": service, "app.kubernetes.io/instance": service}


def _metadata(name: str, service: str, namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = _labels(service)
    return metadata


def _secret_name(service: str) -> str:
    return f"{service}-keys"


def _secret(service: str, namespace: str | None, keys: Keys) -> Manifest:
    # Azure's names for the keys, so that reading them back reads like `az ml service get-keys`.
    data = {name: base64.b64encode(key.encode()).decode("ascii")
            for name, key in (("primaryKey", keys.primary_key), ("secondaryKey", keys.secondary_key)) if key}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _metadata(_secret_name(service), service, namespace),
            "type": "Opaque", "data": data}


def _autoscaled(deployment: AksConfig) -> bool:
    return deployment.num_replicas is None and deployment.auto_scaler.autoscale_enabled is not False


def _deployment(service: str, deployment: AksConfig, inference: InferenceConfig, image: str,
                models: Sequence[ModelVersion], settings_env: Mapping[str, str], keys: Keys | None) -> Manifest:
    spec: dict[str, Any] = {}
    if not _autoscaled(deployment):
        spec["replicas"] = deployment.num_replicas or deployment.auto_scaler.min_replicas
    # With the HPA on, replicas is left out: each apply would otherwise reset the count it chose.
    pod_annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(CONTAINER_PORT),
                       "prometheus.io/path": "/metrics"}
    if keys is not None:
        # Keys reach the container at its start only: a change of keys changes the pod template, so
        # the pods are replaced (Helm's checksum idiom).
        key_list = settings_env[SERVER_ENV["auth_keys"]]  # the keys, as the server is given them
        pod_annotations["mlscore/keys-sha256"] = hashlib.sha256(key_list.encode()).hexdigest()
    metadata = _metadata(service, service, deployment.namespace)
    if models:
        metadata["annotations"] = {"mlscore/models": ",".join(model.ref for model in models)}
    spec |= {
        "selector": {"matchLabels": _selector(service)},
        "template": {
            "metadata": {"labels": _labels(service), "annotations": pod_annotations},
            "spec": {
                # The kubelet sends SIGTERM after preStop; the server then finishes what it accepted
                # within its graceful timeout.
                "terminationGracePeriodSeconds": PRE_STOP_SLEEP_S + GRACEFUL_TIMEOUT_S + SHUTDOWN_MARGIN_S,
                "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
                # Service links would add <SERVICE>_PORT variables, and a Service named mlscore-… would
                # collide with the server's MLSCORE_* settings.
                "enableServiceLinks": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [_container(service, deployment, inference, image, models, settings_env, keys)],
            },
        },
    }
    if deployment.data_collection.storage_enabled:
        pod = spec["template"]["spec"]
        # An emptyDir lasts as long as the pod: to keep the data, replace it with a PersistentVolumeClaim.
        # fsGroup makes such a volume writable by the server's user.
        pod["securityContext"]["fsGroup"] = RUN_AS_USER
        pod["volumes"] = [{"name": DATA_VOLUME, "emptyDir": {}}]
        pod["containers"][0]["volumeMounts"] = [{"name": DATA_VOLUME, "mountPath": str(CONTAINER_DATA_DIR)}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def _container(service: str, deployment: AksConfig, inference: InferenceConfig, image: str,
               models: Sequence[ModelVersion], settings_env: Mapping[str, str], keys: Keys | None) -> dict[str, Any]:
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": _environment(service, models, settings_env, keys),
        "resources": _resources(deployment, inference),
        **_probes(deployment),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SLEEP_S)]}}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _environment(service: str, models: Sequence[ModelVersion], settings_env: Mapping[str, str],
                 keys: Keys | None) -> list[dict[str, Any]]:
    env = [{"name": SERVER_ENV["host"], "value": "0.0.0.0"},  # the server's default, loopback, is unreachable in a pod
           {"name": SERVER_ENV["port"], "value": str(CONTAINER_PORT)},
           {"name": SERVER_ENV["service_name"], "value": service}]
    if models:
        env.append({"name": SERVER_ENV["model_dir"], "value": str(APP_ROOT / model_dir_within(models))})
    env += [{"name": name, "value": value} for name, value in settings_env.items() if name != SERVER_ENV["auth_keys"]]
    if keys is None:
        return env
    parts = [(PRIMARY_KEY_ENV, "primaryKey")] + ([(SECONDARY_KEY_ENV, "secondaryKey")] if keys.secondary_key else [])
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": _secret_name(service), "key": key}}}
            for name, key in parts]
    # Kubernetes expands $(NAME) from the variables above, so the keys never appear in the Deployment.
    env.append({"name": SERVER_ENV["auth_keys"], "value": ",".join(f"$({name})" for name, _ in parts)})
    return env


def _resources(deployment: AksConfig, inference: InferenceConfig) -> dict[str, Any]:
    needs = deployment.container_resource_requirements
    memory = f"{max(1, round(needs.memory_in_gb * 1024))}Mi"  # Azure's memoryInGB, read as GiB
    requests = {"cpu": f"{max(1, round(needs.cpu * 1000))}m", "memory": memory}
    # Memory: limit = request, so a replica that outgrows what it asked for is restarted on its own
    # instead of pressing the node into evicting its neighbours.
    # CPU: no limit; a limit throttles scoring bursts, and the request already reserves the cores.
    limits: dict[str, Any] = {"memory": memory}
    if inference.enable_gpu and deployment.gpu_cores > 0:
        # gpuCores defaults to 1 for every config, so it is asked for only when the model runs on a
        # GPU; an extended resource's request equals its limit.
        limits["nvidia.com/gpu"] = deployment.gpu_cores
    return {"requests": requests, "limits": limits}


def _probes(deployment: AksConfig) -> dict[str, Any]:
    """Liveness on /health/live from livenessProbeRequirements (not `/`, which like Azure's means ready:
    a replica busy with a long init() or stuck slots is alive); readiness on /health/ready; a startup probe
    that gives init() and the warm-up the time Azure's liveness probe would have given them.

    Azure delays its liveness probe by initialDelaySeconds (310 s) so that init() can finish; here
    the startup probe waits that long plus the liveness probe's own failures for /health/ready, and
    liveness starts once it passed, without a delay of its own.
    """
    probe = deployment.liveness_probe_requirements
    init_budget_s = probe.initial_delay_seconds + probe.failure_threshold * probe.period_seconds
    return {
        "startupProbe": {
            "httpGet": {"path": "/health/ready", "port": "http"},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": probe.timeout_seconds,
            "failureThreshold": max(1, math.ceil(init_budget_s / PROBE_PERIOD_S)),
        },
        "livenessProbe": {
            "httpGet": {"path": "/health/live", "port": "http"},
            "periodSeconds": probe.period_seconds,
            "timeoutSeconds": probe.timeout_seconds,
            "successThreshold": probe.success_threshold,  # configs allow only 1, as Kubernetes does
            "failureThreshold": probe.failure_threshold,
        },
        "readinessProbe": {
            "httpGet": {"path": "/health/ready", "port": "http"},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": probe.timeout_seconds,
            "failureThreshold": 2,
        },
    }


def _service(service: str, namespace: str | None) -> Manifest:
    # ClusterIP: reachable inside the cluster at http://SERVICE.NAMESPACE/score. To expose it, put an
    # Ingress in front (TLS ends there) or `kubectl port-forward service/SERVICE 8080:80` to try it.
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(service, service, namespace),
            "spec": {"type": "ClusterIP", "selector": _selector(service),
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}


def _autoscaler(service: str, deployment: AksConfig) -> Manifest:
    """Azure's autoscaler scales on requests in flight per replica; the HPA here scales on CPU use
    relative to the CPU request, the closest built-in metric. The HPA controller's own sync period
    (15 s by default) sets how often it looks; refreshPeriodInSeconds becomes the period of the
    scale-up policies, so that a burst can double the replicas that often."""
    scaler = deployment.auto_scaler
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(service, service, deployment.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": service},
            "minReplicas": scaler.min_replicas,
            "maxReplicas": scaler.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaler.target_utilization}}}],
            "behavior": {"scaleUp": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": scaler.refresh_period_in_seconds},
                    {"type": "Pods", "value": SCALE_UP_PODS, "periodSeconds": scaler.refresh_period_in_seconds},
                ],
            }},
        },
    }


def _disruption_budget(service: str, namespace: str | None) -> Manifest:
    # maxUnavailable rather than minAvailable: with one replica, minAvailable 1 would block node drains.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _metadata(service, service, namespace),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(service)}}}


# --- writing -------------------------------------------------------------------------------------------


def write_manifests(manifests: Sequence[Manifest], output_dir: Path) -> list[Path]:
    """One YAML file per object, `NN-kind.yaml`, numbered in apply order (kubectl applies a folder's
    files by name). Files of an earlier render that this one has no object for are removed; other
    files are left alone. The Secret's file is readable by its owner only."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [output_dir / f"{index:02d}-{manifest['kind'].lower()}.yaml" for index, manifest in enumerate(manifests)]
    for stale in output_dir.iterdir():
        if _FILE_NAME.fullmatch(stale.name) and stale not in written:
            stale.unlink()
    for path, manifest in zip(written, manifests):
        mode = 0o600 if manifest["kind"] == "Secret" else 0o644
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(descriptor, mode)  # an existing file keeps its mode through O_CREAT
        with open(descriptor, "w", encoding="utf-8") as file:
            file.write(to_yaml(manifest))
    return written


def to_yaml(document: Any) -> str:
    """Block-style YAML, keys in the order the manifest builds them."""
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --- applying ------------------------------------------------------------------------------------------


def kubectl_command(verb: str, output_dir: Path) -> list[str]:
    """`kubectl apply -f DIR` or `kubectl delete -f DIR` (delete tolerates objects already gone)."""
    extra = ["--ignore-not-found"] if verb == "delete" else []
    return ["kubectl", verb, "-f", str(output_dir), *extra]


def cluster_available() -> bool:
    """kubectl is installed and its current context answers (the server's /version, which every
    user may read, within 3 seconds)."""
    if shutil.which("kubectl") is None:
        return False
    try:
        answer = subprocess.run(["kubectl", "version", "--request-timeout=3s"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return answer.returncode == 0


def run_or_print(verb: str, output_dir: Path, echo: Callable[[str], None] = print) -> bool:
    """`kubectl apply` (or `delete`) the written manifests when a cluster is configured (True),
    echoing what kubectl says; otherwise echo the command to run later (False). Raises
    KubectlError when kubectl fails."""
    command = kubectl_command(verb, output_dir)
    if not cluster_available():
        echo(f"no Kubernetes cluster configured: {verb} the manifests with\n  {shlex.join(command)}")
        return False
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise KubectlError(result.stderr.strip() or f"kubectl {verb} exited with status {result.returncode}")
    echo(result.stdout.rstrip())
    return True
