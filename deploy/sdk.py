"""A Python API shaped like the Azure ML SDK's (azureml.core), for people coming from it.

`Model.register`, `Model.get_model_path`, `InferenceConfig`, `LocalWebservice`/`AciWebservice`/
`AksWebservice.deploy_configuration`, `Model.deploy` and the returned `Webservice` keep the SDK's
names and parameters; underneath are the same registry, configs and `deploy.service` functions as
the command line. `workspace` is optional everywhere: it means the local registry, and a
`Workspace` names another registry root.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlscore.deploy import configs, service
from mlscore.deploy.registry import ModelVersion, Registry
from mlscore.scoring.model_path import MODEL_DIR_ENV
from mlscore.scoring.model_path import get_model_path as _model_path_in_container


class Workspace:
    """A registry root; `Workspace()` is the default one (`MLSCORE_HOME`, else ~/.mlscore)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.registry = Registry(path)

    def __repr__(self) -> str:
        return f"Workspace({str(self.registry.root)!r})"


def _registry(workspace: Workspace | None) -> Registry:
    return workspace.registry if workspace is not None else Registry()


class Model:
    """A registered model version: `Model(workspace, name, version=None)` looks one up (the latest
    when no version is given); `Model.register(...)` adds one."""

    def __init__(self, workspace: Workspace | None = None, name: str | None = None, version: int | None = None,
                 *, _record: ModelVersion | None = None) -> None:
        self.workspace = workspace
        if _record is None:
            if name is None:
                raise TypeError("Model(workspace, name, version=None): give the model's name")
            _record = _registry(workspace).get(name if version is None else f"{name}:{version}")
        self._record = _record

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def version(self) -> int:
        return self._record.version

    @property
    def id(self) -> str:
        return self._record.ref

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._record.tags)

    @property
    def description(self) -> str | None:
        return self._record.description

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version})"

    @staticmethod
    def register(workspace: Workspace | None = None, model_path: str | os.PathLike[str] | None = None,
                 model_name: str | None = None, tags: Mapping[str, str] | None = None,
                 description: str | None = None) -> "Model":
        """Copy a file or a folder into the registry as `model_name`'s next version."""
        if model_path is None or model_name is None:
            raise TypeError("Model.register(workspace, model_path=…, model_name=…): both are required")
        record = _registry(workspace).register(model_name, model_path, tags=dict(tags or {}), description=description)
        return Model(workspace, _record=record)

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Workspace | None = None) -> str:
        """Inside a service (`AZUREML_MODEL_DIR` set), the model's path there, as in Azure's containers;
        elsewhere its path in the registry."""
        if _workspace is None and os.environ.get(MODEL_DIR_ENV):
            return _model_path_in_container(model_name, version)
        return str(_registry(_workspace).get(model_name if version is None else f"{model_name}:{version}").path)

    def download(self, target_dir: str | os.PathLike[str] = ".", exist_ok: bool = False) -> str:
        return str(_registry(self.workspace).download(self.id, target_dir, exist_ok=exist_ok))

    def delete(self) -> None:
        _registry(self.workspace).delete(self.id)

    @staticmethod
    def deploy(workspace: Workspace | None = None, name: str | None = None, models: Sequence["Model"] = (),
               inference_config: configs.InferenceConfig | None = None,
               deployment_config: configs.DeploymentConfig | None = None, deployment_target: Any = None,
               overwrite: bool = False, show_output: bool = False) -> "Webservice":
        """Deploy the models as service `name` where `deployment_config`'s compute type says (local
        when none is given). With `overwrite`, a service of that name is updated in place."""
        if name is None or inference_config is None:
            raise TypeError("Model.deploy(workspace, name=…, models=[…], inference_config=…, deployment_config=…)")
        if deployment_target is not None:
            raise ValueError("deployment_target: there are no attached compute targets here; the deployment config's "
                             "computeType picks the target")
        registry = _registry(workspace)
        deployment = deployment_config or LocalWebservice.deploy_configuration()
        refs = [model.id if isinstance(model, Model) else str(model) for model in models]
        webservice = Webservice(workspace, name, _deploying=True)
        try:
            if overwrite and name in {record.name for record in registry.list_services()}:
                service.update(registry, name, refs, inference_config, deployment, progress=webservice._say)
            else:
                service.deploy(registry, name, refs, inference_config, deployment, progress=webservice._say)
        except service.DeployError as error:
            webservice.error = str(error)
        webservice._refresh()
        if show_output:
            webservice.wait_for_deployment(show_output=True)
        return webservice


def InferenceConfig(entry_script: str, runtime: str | None = None, conda_file: str | None = None,  # noqa: N802
                    extra_docker_file_steps: str | None = None, source_directory: str | None = None,
                    enable_gpu: bool | None = None, base_image: str | None = None,
                    base_image_registry: str | None = None, cuda_version: str | None = None,
                    description: str | None = None) -> configs.InferenceConfig:
    """The inference config, as the SDK's constructor takes it (relative paths from the current
    folder), checked by the same tables as the JSON file."""
    data = {"entryScript": entry_script, "runtime": runtime, "condaFile": conda_file,
            "extraDockerFileSteps": extra_docker_file_steps, "sourceDirectory": source_directory,
            "enableGpu": enable_gpu, "baseImage": base_image, "baseImageRegistry": base_image_registry,
            "cudaVersion": cuda_version}
    return configs.load_inference_config(_given(data), base_dir=Path.cwd())


class LocalWebservice:
    @staticmethod
    def deploy_configuration(port: int | None = None) -> configs.LocalConfig:
        config = configs.load_deployment_config(_given({"computeType": "local", "port": port}))
        assert isinstance(config, configs.LocalConfig)
        return config


class AciWebservice:
    @staticmethod
    def deploy_configuration(cpu_cores: float | None = None, memory_gb: float | None = None,
                             tags: Mapping[str, str] | None = None, properties: Mapping[str, str] | None = None,
                             description: str | None = None, location: str | None = None,
                             auth_enabled: bool | None = None, ssl_enabled: bool | None = None,
                             enable_app_insights: bool | None = None, ssl_cert_pem_file: str | None = None,
                             ssl_key_pem_file: str | None = None, ssl_cname: str | None = None,
                             dns_name_label: str | None = None,
                             collect_model_data: bool | None = None) -> configs.AciConfig:
        data = {"computeType": "aci", "containerResourceRequirements": _given({"cpu": cpu_cores,
                                                                                 "memoryInGB": memory_gb}),
                "dataCollection": _given({"storageEnabled": collect_model_data}),
                "location": location, "authEnabled": auth_enabled, "sslEnabled": ssl_enabled,
                "appInsightsEnabled": enable_app_insights, "sslCertificate": ssl_cert_pem_file,
                "sslKey": ssl_key_pem_file, "cname": ssl_cname, "dnsNameLabel": dns_name_label}
        config = configs.load_deployment_config(_given(data), base_dir=Path.cwd())
        assert isinstance(config, configs.AciConfig)
        return config


class AksWebservice:
    @staticmethod
    def deploy_configuration(autoscale_enabled: bool | None = None, autoscale_min_replicas: int | None = None,
                             autoscale_max_replicas: int | None = None, autoscale_refresh_seconds: int | None = None,
                             autoscale_target_utilization: int | None = None, collect_model_data: bool | None = None,
                             auth_enabled: bool | None = None, cpu_cores: float | None = None,
                             memory_gb: float | None = None, enable_app_insights: bool | None = None,
                             scoring_timeout_ms: int | None = None, replica_max_concurrent_requests: int | None = None,
                             max_request_wait_time: int | None = None, num_replicas: int | None = None,
                             primary_key: str | None = None, secondary_key: str | None = None,
                             tags: Mapping[str, str] | None = None, properties: Mapping[str, str] | None = None,
                             description: str | None = None, gpu_cores: int | None = None,
                             period_seconds: int | None = None, initial_delay_seconds: int | None = None,
                             timeout_seconds: int | None = None, success_threshold: int | None = None,
                             failure_threshold: int | None = None, namespace: str | None = None) -> configs.AksConfig:
        data = {
            "computeType": "aks",
            "autoScaler": _given({"autoscaleEnabled": autoscale_enabled, "minReplicas": autoscale_min_replicas,
                                  "maxReplicas": autoscale_max_replicas,
                                  "refreshPeriodInSeconds": autoscale_refresh_seconds,
                                  "targetUtilization": autoscale_target_utilization}),
            "dataCollection": _given({"storageEnabled": collect_model_data}),
            "authEnabled": auth_enabled,
            "containerResourceRequirements": _given({"cpu": cpu_cores, "memoryInGB": memory_gb}),
            "appInsightsEnabled": enable_app_insights, "scoringTimeoutMs": scoring_timeout_ms,
            "maxConcurrentRequestsPerContainer": replica_max_concurrent_requests,
            "maxQueueWaitMs": max_request_wait_time, "numReplicas": num_replicas,
            "keys": _given({"primaryKey": primary_key, "secondaryKey": secondary_key}), "gpuCores": gpu_cores,
            "livenessProbeRequirements": _given({"periodSeconds": period_seconds,
                                                 "initialDelaySeconds": initial_delay_seconds,
                                                 "timeoutSeconds": timeout_seconds,
                                                 "successThreshold": success_threshold,
                                                 "failureThreshold": failure_threshold}),
            "namespace": namespace,
        }
        config = configs.load_deployment_config(_given(data))
        assert isinstance(config, configs.AksConfig)
        return config


class Webservice:
    """A deployed service: `Webservice(workspace, name)` looks one up; `Model.deploy` returns one."""

    def __init__(self, workspace: Workspace | None = None, name: str | None = None, *, _deploying: bool = False) -> None:
        if name is None:
            raise TypeError("Webservice(workspace, name): give the service's name")
        self.workspace = workspace
        self.name = name
        self.error: str | None = None
        self._output: list[str] = []
        self._deployed: service.Deployed | None = None
        if not _deploying:
            self._refresh()

    def _say(self, line: str) -> None:
        self._output.append(line)

    def _refresh(self) -> None:
        try:
            self._deployed = service.get(_registry(self.workspace), self.name)
        except service.DeployError:
            if self.error is None:
                raise
            self._deployed = None

    @property
    def state(self) -> str:
        """Healthy, Transitioning, Failed, Written (aci/aks without an engine or a cluster) or Stopped."""
        if self._deployed is None:
            return "Failed"
        self._refresh()
        assert self._deployed is not None
        return self._deployed.record.state

    @property
    def compute_type(self) -> str | None:
        return self._deployed.record.compute_type if self._deployed else None

    @property
    def scoring_uri(self) -> str | None:
        return self._deployed.scoring_uri if self._deployed else None

    @property
    def swagger_uri(self) -> str | None:
        return self._deployed.swagger_uri if self._deployed else None

    @property
    def models(self) -> list[Model]:
        if self._deployed is None:
            return []
        return [Model(self.workspace, _record=_registry(self.workspace).get(ref)) for ref in self._deployed.record.models]

    def __repr__(self) -> str:
        return f"Webservice(name={self.name!r}, state={self.state!r}, scoring_uri={self.scoring_uri!r})"

    def wait_for_deployment(self, show_output: bool = False) -> None:
        """The deployment has finished when this is called (deploys wait); prints what it said with
        `show_output`, and raises DeployError when the service failed."""
        if show_output:
            for line in self._output:
                print(line)
            self._output.clear()
            print(f"state: {self.state}")
        if self.error is not None:
            raise service.DeployError(self.error)

    def run(self, input_data: str | bytes | Mapping[str, Any] | Sequence[Any]) -> Any:
        """POST `input_data` (a JSON string, as the SDK takes it, or a value to encode) to the scoring
        URI with the service's key; the decoded answer. A non-2xx answer raises DeployError."""
        if self.scoring_uri is None:
            raise service.DeployError(f"service {self.name!r} has no scoring URI here (state {self.state})")
        body = input_data.encode() if isinstance(input_data, str) else input_data if isinstance(
            input_data, bytes) else json.dumps(input_data).encode()
        headers = {"Content-Type": "application/json"}
        keys = self._deployed.keys if self._deployed else None
        if keys is not None:
            headers["Authorization"] = f"Bearer {keys.primary_key}"
        request = urllib.request.Request(self.scoring_uri, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=90) as answer:
                text = answer.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", errors="replace")
            raise service.DeployError(f"service {self.name!r} answered {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise service.DeployError(f"service {self.name!r} at {self.scoring_uri}: {error.reason}") from None
        try:
            return json.loads(text)
        except ValueError:
            return text

    def get_logs(self, num_lines: int = 5000) -> str:
        return service.logs(_registry(self.workspace), self.name, num_lines)

    def get_keys(self) -> tuple[str | None, str | None]:
        keys = self._deployed.keys if self._deployed else None
        if keys is None:
            raise service.DeployError(f"service {self.name!r} has auth off: it has no keys")
        return keys.primary_key, keys.secondary_key

    def regen_key(self, key: str) -> None:
        """`key` is "Primary" or "Secondary", as in the SDK."""
        service.regenerate_key(_registry(self.workspace), self.name, key.lower(), progress=self._say)
        self._refresh()

    def update(self, models: Sequence[Model] | None = None,
               inference_config: configs.InferenceConfig | None = None, **deployment_fields: Any) -> None:
        """Serve other model versions or another inference config; a local service switches with no
        failed request."""
        if deployment_fields:
            raise TypeError(f"update() here takes models and inference_config; to change "
                            f"{', '.join(sorted(deployment_fields))}, delete and deploy again")
        refs = [model.id for model in models] if models is not None else None
        self.error = None
        try:
            service.update(_registry(self.workspace), self.name, refs, inference_config, progress=self._say)
        except service.DeployError as error:
            self.error = str(error)
        self._refresh()

    def delete(self) -> None:
        service.delete(_registry(self.workspace), self.name, progress=self._say)
        self._deployed = None


def _given(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that were given: the SDK's None means "the default"."""
    return {key: value for key, value in data.items() if value is not None and value != {}}
