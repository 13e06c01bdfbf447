"""Deploying, updating and deleting services: one set of functions under the CLI and the Python API.

A service is recorded in the registry's database with the model versions it uses, its configs (the
JSON that loads back to them), its keys and where it runs. The compute type picks the target:
`local` runs a background process here (`local`), `aci` builds and runs a container image
(`image`), `aks` writes Kubernetes manifests and applies them when a cluster answers (`kubernetes`).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlscore.deploy.configs import (
    AciConfig,
    CONTAINER_DATA_DIR,
    DATA_COLLECTION_DIR,
    SERVER_ENV,
    AksConfig,
    DeploymentConfig,
    InferenceConfig,
    Keys,
    LocalConfig,
    auth_enabled,
    load_deployment_config,
    load_inference_config,
    service_keys,
    to_json,
    to_settings_env,
)
from mlscore.deploy.local import LocalService, LocalServiceError
from mlscore.deploy.registry import check_service_name as service_name_rule
from mlscore.deploy.registry import (
    ModelVersion,
    Registry,
    RegistryError,
    Service,
)
from mlscore.server.settings import TlsError, tls_context

Progress = Callable[[str], None]

KEY_NAMES = ("primary", "secondary")


class DeployError(Exception):
    """A deploy, update or delete that could not be done; the message says why and what to do."""


class MissingPackages(DeployError):
    """A strict deploy refused: the image would lack packages its entry script imports."""


@dataclass(frozen=True, slots=True)
class Deployed:
    """A service's record, read back into its parts."""

    record: Service
    inference: InferenceConfig
    deployment: DeploymentConfig
    keys: Keys | None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def details(self) -> dict[str, Any]:
        return self.record.details

    @property
    def scoring_uri(self) -> str | None:
        return self.details.get("scoring_uri")

    @property
    def swagger_uri(self) -> str | None:
        return self.details.get("swagger_uri")


# --- deploy, update, delete ----------------------------------------------------------------------------


def deploy(registry: Registry, name: str, models: Sequence[str], inference: InferenceConfig,
           deployment: DeploymentConfig, output: Path | None = None, progress: Progress = print,
           strict: bool = False) -> Deployed:
    """Deploy a new service; an existing service of that name is an error (update it, or delete it).
    With `strict`, an image whose entry script imports packages it would lack is not built."""
    check_service_name(name)
    if _exists(registry, name):
        raise DeployError(f"service {name!r} exists already: update it (mlscore service update {name} …) or "
                          f"delete it first")
    versions = model_versions(registry, models)
    check_packages(name, inference, deployment, progress, strict)
    keys = service_keys(deployment)
    return _run(registry, name, versions, inference, deployment, keys, output, progress, previous=None)


def update(registry: Registry, name: str, models: Sequence[str] | None = None,
           inference: InferenceConfig | None = None, deployment: DeploymentConfig | None = None,
           output: Path | None = None, progress: Progress = print) -> Deployed:
    """Serve new model versions or configs under the same name. Locally the new server starts beside
    the old one on the same port and takes over when it is ready, so no request fails in between."""
    current = get(registry, name)
    if deployment is not None and deployment.COMPUTE_TYPE != current.deployment.COMPUTE_TYPE:
        raise DeployError(f"service {name!r} runs on {current.deployment.COMPUTE_TYPE}; an update cannot move it to "
                          f"{deployment.COMPUTE_TYPE}: delete it and deploy again")
    versions = model_versions(registry, models if models is not None else current.record.models)
    deployment = deployment or current.deployment
    check_packages(name, inference or current.inference, deployment, progress)
    return _run(registry, name, versions, inference or current.inference, deployment,
                _keys_after_update(current.keys, deployment), output or _stored_output(current), progress,
                previous=current)


def _keys_after_update(stored: Keys | None, deployment: DeploymentConfig) -> Keys | None:
    """None when auth is off; keys the new config gives (the other generated); else the stored keys,
    or new ones when the service had none."""
    if not auth_enabled(deployment):
        return None
    given = deployment.keys if isinstance(deployment, AksConfig) else Keys()
    if stored is None or given.primary_key or given.secondary_key:
        return service_keys(deployment)
    return stored


def delete(registry: Registry, name: str, progress: Progress = print) -> None:
    """Stop the service where it runs and forget it; its model versions can be deleted afterwards."""
    from mlscore.deploy import image, kubernetes

    current = get(registry, name)
    kind = current.deployment.COMPUTE_TYPE
    if kind == "local":
        folder = Path(current.details["folder"])
        LocalService(folder).stop()
        progress(f"service {name}: stopped")
        if (folder / DATA_COLLECTION_DIR).is_dir():
            progress(f"service {name}: the model data it collected stays in {folder / DATA_COLLECTION_DIR}")
    elif kind == "aci" and current.details.get("container"):
        image.remove(current.details["engine"], current.details["container"])
        progress(f"service {name}: container {current.details['container']} removed")
    elif kind == "aks":
        kubernetes.run_or_print("delete", Path(current.details["output"]), echo=progress)
    registry.remove_service(name)


def regenerate_key(registry: Registry, name: str, which: str, progress: Progress = print) -> Keys:
    """Replace the primary or the secondary key, and redeploy so the service answers to the new one."""
    if which not in KEY_NAMES:
        raise DeployError(f"--regenerate: one of {', '.join(KEY_NAMES)}, got {which!r}")
    current = get(registry, name)
    if current.keys is None:
        raise DeployError(f"service {name!r} has auth off, so it has no keys to regenerate")
    fresh = secrets.token_urlsafe(32)
    keys = replace(current.keys, **{f"{which}_key": fresh})
    deployment = current.deployment
    if isinstance(deployment, AksConfig):  # keys given in its config would win over the stored ones
        deployment = replace(deployment, keys=Keys())
    _run(registry, name, model_versions(registry, current.record.models), current.inference, deployment, keys,
         _stored_output(current), progress, previous=current)
    return keys


# --- reading -------------------------------------------------------------------------------------------


def get(registry: Registry, name: str) -> Deployed:
    check_service_name(name)
    try:
        record = registry.get_service(name)
    except RegistryError as error:
        raise DeployError(str(error)) from None
    details = record.details
    inference = load_inference_config(details["inference"], details.get("inference_base_dir"))
    deployment = load_deployment_config(details["deployment"], details.get("deployment_base_dir"))
    stored = details.get("keys")
    keys = Keys(stored["primaryKey"], stored.get("secondaryKey")) if stored else None
    return Deployed(_with_live_state(registry, record), inference, deployment, keys)


def list_services(registry: Registry) -> list[Service]:
    return [_with_live_state(registry, record) for record in registry.list_services()]


def logs(registry: Registry, name: str, lines: int | None = None) -> str:
    """The server's log: the local process's file, the container's output, or how to read the pods'."""
    from mlscore.deploy import image

    current = get(registry, name)
    kind = current.deployment.COMPUTE_TYPE
    if kind == "local":
        return LocalService(Path(current.details["folder"])).logs(lines)
    if kind == "aci" and current.details.get("container"):
        return image.logs(current.details["engine"], current.details["container"], lines or 100_000)
    namespace = current.details.get("namespace")
    where = f" -n {namespace}" if namespace else ""
    return (f"service {name} runs on Kubernetes: read its logs with "
            f"kubectl logs{where} -l app.kubernetes.io/instance={name} --tail={lines or 200}\n")


# --- the targets ---------------------------------------------------------------------------------------


def check_packages(name: str, inference: InferenceConfig, deployment: DeploymentConfig, progress: Progress,
                   strict: bool = False) -> None:
    """Before an image is made (aci, aks): one warning line when the app imports packages the image would
    lack, MissingPackages instead with `strict`; one line naming the condaFile's conda-only packages.
    A local service runs in this environment, which the check does not describe."""
    from mlscore.deploy import dependencies

    if isinstance(deployment, LocalConfig):
        return
    try:
        found = dependencies.check(inference)
    except ValueError as error:  # a condaFile that is not one, a config without its folder
        raise DeployError(f"service {name}: {error}") from None
    conda_only = found.conda_only_line()
    if conda_only is not None:
        progress(f"warning: service {name}: {conda_only}")
    missing = found.missing_line()
    if missing is None:
        return
    if strict:
        raise MissingPackages(f"service {name}: {missing} (strict: no image is built without them)")
    progress(f"warning: service {name}: {missing}")


def _run(registry: Registry, name: str, versions: list[ModelVersion], inference: InferenceConfig,
         deployment: DeploymentConfig, keys: Keys | None, output: Path | None, progress: Progress,
         previous: Deployed | None) -> Deployed:
    for note in (*inference.notes, *deployment.notes):
        progress(f"note: {note}")
    details: dict[str, Any] = {
        "inference": to_json(inference),
        "inference_base_dir": str(inference.base_dir) if inference.base_dir else None,
        "deployment": _without_keys(to_json(deployment)),
        "deployment_base_dir": str(deployment.base_dir) if deployment.base_dir else None,
        "keys": {"primaryKey": keys.primary_key, "secondaryKey": keys.secondary_key} if keys else None,
    }
    if isinstance(deployment, LocalConfig):
        details |= _run_local(registry, name, versions, inference, deployment, keys, progress, previous)
    elif isinstance(deployment, AciConfig):
        details |= _run_container(registry, name, versions, inference, deployment, keys, output, progress, previous)
    else:
        details |= _run_kubernetes(registry, name, versions, inference, deployment, keys, output, progress)
    state = details.pop("state")
    record = registry.record_service(name, versions, deployment.COMPUTE_TYPE, state, details)
    deployed = Deployed(record, inference, deployment, keys)
    if state == "Failed":
        raise DeployError(details.get("message") or f"service {name} failed")
    return deployed


def serve_args(inference: InferenceConfig) -> list[str]:
    script = inference.entry_script_path
    if script is None:
        raise DeployError("the inference config has no folder to find its entryScript in: load it from a file, or "
                          "give base_dir")
    app_root = inference.source_directory_path or script.parent
    return ["--entry-script", str(script), "--app-root", str(app_root)]


def _server_env(name: str, inference: InferenceConfig, deployment: DeploymentConfig,
                keys: Keys | None, data_dir: str) -> dict[str, str]:
    return {**to_settings_env(deployment, inference, keys, data_dir), SERVER_ENV["service_name"]: name}


def _run_local(registry: Registry, name: str, versions: list[ModelVersion], inference: InferenceConfig,
               deployment: LocalConfig, keys: Keys | None, progress: Progress,
               previous: Deployed | None) -> dict[str, Any]:
    folder = service_folder(registry, "services", name)
    service = LocalService(folder)
    args = serve_args(inference)
    env = _server_env(name, inference, deployment, keys, str(folder / DATA_COLLECTION_DIR))
    try:
        if previous is not None and service.host_running():
            generation = service.next_generation(int(previous.details.get("generation", 1)))
            progress(f"service {name}: starting generation {generation} beside the one serving")
            service.replace(generation, versions, args, env)
        else:
            generation = 1
            port = deployment.port or (previous.details.get("port") if previous else None)
            progress(f"service {name}: starting the server" + (f" on port {port}" if port else ""))
            service.start(generation, versions, args, env, port)
        outcome, state = service.wait(generation, lambda step: step == "Transitioning" and progress(
            f"service {name}: Transitioning (the server runs init() and the warm-up)"))
    except LocalServiceError as error:
        raise DeployError(f"service {name}: {error}") from None
    uri = f"http://127.0.0.1:{state.port}"
    details = {"folder": str(folder), "port": state.port, "scoring_uri": f"{uri}/score",
               "swagger_uri": f"{uri}/swagger.json"}
    if outcome == "Healthy":
        progress(f"service {name}: Healthy, scoring at {uri}/score")
        return details | {"state": "Healthy", "generation": generation}
    message = (state.update or {}).get("message") if state.state == "Healthy" else state.message
    if state.state == "Healthy":  # an update that failed: the old generation still serves
        raise DeployError(f"service {name}: the update failed and generation {state.generation} still serves: "
                          f"{message}")
    progress(f"service {name}: Failed: {message}")
    return details | {"state": "Failed", "generation": generation, "message": f"service {name} failed: {message}"}


def _run_container(registry: Registry, name: str, versions: list[ModelVersion], inference: InferenceConfig,
                   deployment: AciConfig, keys: Keys | None, output: Path | None, progress: Progress,
                   previous: Deployed | None) -> dict[str, Any]:
    from mlscore.deploy import image

    output = output or service_folder(registry, "build", name)
    env = _server_env(name, inference, deployment, keys, str(CONTAINER_DATA_DIR))
    context = _write_context(output, name, inference, versions, env)
    if deployment.ssl_enabled:
        context = replace(context, tls=_tls_files(name, deployment))
    progress(f"service {name}: build context written to {context.path}")
    engine = image.find_engine()
    if engine is None:
        progress(f"service {name}: no container engine works here; build and run it with:\n"
                 f"  {context.build_command_text()}\n  {context.run_command_text(_port_for(previous))}")
        return {"state": "Written", "context": str(context.path), "image": context.image}
    progress(f"service {name}: building {context.image} with {engine}")
    image.build(context, engine)
    if previous is not None and previous.details.get("container"):
        image.remove(previous.details["engine"], previous.details["container"])
    port = _port_for(previous)
    container = image.run(context, engine, port, f"mlscore-{name}")
    uri = f"{'https' if context.tls else 'http'}://127.0.0.1:{port}"
    ready = image.wait_ready(engine, container, uri, progress)
    state = "Healthy" if ready else "Failed"
    progress(f"service {name}: {state}" + (f", scoring at {uri}/score" if ready else ""))
    return {"state": state, "context": str(context.path), "image": context.image, "engine": engine,
            "container": container, "port": port, "scoring_uri": f"{uri}/score", "swagger_uri": f"{uri}/swagger.json",
            **({} if ready else {"message": f"service {name} failed:\n{image.logs(engine, container, 30)}"})}


def _tls_files(name: str, deployment: AciConfig) -> tuple[Path, Path]:
    """sslCertificate and sslKey, checked as the server will check them, so a bad pair fails here
    rather than in a container that never turns ready."""
    cert, key = deployment.ssl_certificate_path, deployment.ssl_key_path
    if cert is None or key is None:
        raise DeployError(f"service {name}: sslEnabled needs sslCertificate and sslKey, in a deployment config "
                          "loaded from a file (or with base_dir)")
    try:
        tls_context(cert, key, None)
    except TlsError as error:
        raise DeployError(f"service {name}: sslCertificate {cert} and sslKey {key}: {error}") from None
    return cert, key


def _run_kubernetes(registry: Registry, name: str, versions: list[ModelVersion], inference: InferenceConfig,
                    deployment: AksConfig, keys: Keys | None, output: Path | None,
                    progress: Progress) -> dict[str, Any]:
    from mlscore.deploy import kubernetes

    output = output or service_folder(registry, "build", name)
    context = _write_context(output / "image", name, inference, versions, {})
    manifests = kubernetes.render_manifests(name, deployment, inference, context.image, versions, keys)
    written = kubernetes.write_manifests(manifests, output / "manifests")
    progress(f"service {name}: {len(written)} manifests written to {output / 'manifests'}; the image's build "
             f"context to {context.path}:\n  {context.build_command_text()}\n  (push it where the cluster pulls "
             f"from, or load it into the cluster's nodes)")
    applied = kubernetes.run_or_print("apply", output / "manifests", echo=progress)
    namespace = deployment.namespace
    return {"state": "Transitioning" if applied else "Written", "output": str(output / "manifests"),
            "context": str(context.path), "image": context.image, "applied": applied, "namespace": namespace}


def _write_context(output: Path, name: str, inference: InferenceConfig, versions: list[ModelVersion],
                   env: dict[str, str]) -> Any:
    from mlscore.deploy import image

    try:
        return image.write_build_context(output, name, inference, versions, env)
    except ValueError as error:  # an output folder holding something else, a script outside its folder
        raise DeployError(f"service {name}: {error}") from None


# --- helpers -------------------------------------------------------------------------------------------


def check_service_name(name: object) -> str:
    """`name` when it is a valid service name, else DeployError naming it and the rule. Every entry
    point (deploy, and `get` under update, delete, keys and logs) checks here before it touches the
    disk (the registry's rule, which record_service enforces too)."""
    try:
        return service_name_rule(name)
    except RegistryError as error:
        raise DeployError(str(error)) from None


def service_folder(registry: Registry, kind: str, name: str) -> Path:
    """`<registry>/<kind>/<name>`, refused unless it is a folder directly inside `<registry>/<kind>`:
    a second guard behind the name's rule, so no name can reach outside the registry."""
    folder = registry.root / kind / check_service_name(name)
    parent = (registry.root / kind).resolve()
    if folder.resolve().parent != parent:
        raise DeployError(f"service {name!r}: its folder {folder} would lie outside {parent}")
    return folder


def model_versions(registry: Registry, refs: Sequence[str]) -> list[ModelVersion]:
    """The registered versions `refs` name (NAME alone: the latest); DeployError naming what is missing."""
    if not refs:
        raise DeployError("give at least one model: -m NAME:VERSION")
    try:
        return [registry.get(ref) for ref in refs]
    except RegistryError as error:
        raise DeployError(str(error)) from None


def _exists(registry: Registry, name: str) -> bool:
    try:
        registry.get_service(name)
    except RegistryError:
        return False
    return True


def _with_live_state(registry: Registry, record: Service) -> Service:
    """A local service's state as its host reports it now (it may have died since the record)."""
    if record.compute_type != "local" or "folder" not in record.details:
        return record
    service = LocalService(Path(record.details["folder"]))
    state = service.state()
    if state is None:
        return replace(record, state="Failed")
    if not service.host_running():
        return replace(record, state="Failed" if state.state != "Stopped" else "Stopped")
    return replace(record, state=state.state)


def _without_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key != "keys"}


def _stored_output(current: Deployed) -> Path | None:
    output = current.details.get("output")
    return Path(output).parent if output else None


def _port_for(previous: Deployed | None) -> int:
    if previous is not None and previous.details.get("port"):
        return int(previous.details["port"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
