"""Inference and deployment configs: every field and its Azure default, every kind of error, notes,
the Azure documents' own examples, and the server settings the configs imply."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from mlscore.deploy.configs import (
    ACI,
    AKS,
    INFERENCE,
    LOCAL,
    AciConfig,
    AksConfig,
    ConfigError,
    InferenceConfig,
    Keys,
    LocalConfig,
    Schema,
    load_deployment_config,
    load_inference_config,
    service_keys,
    to_settings_env,
)
from mlscore.server.settings import Settings

# The documents' examples, copied as they stand ("Deploy models with the Azure Machine Learning service",
# 2019; shared/reference/000_… and 002_…). The inference config's trailing comma is theirs.
DOCUMENT_INFERENCE_CONFIG = """{
   "entryScript": "x/y/score.py",
   "runtime": "python",
   "condaFile": "env/myenv.yml",
   "sourceDirectory":"C:/abc",
}
"""
DOCUMENT_LOCAL_CONFIG = """{
    "computeType": "local",
    "port": 32267
}
"""
DOCUMENT_ACI_CONFIG = """{
    "computeType": "aci",
    "containerResourceRequirements":
    {
        "cpu": 0.5,
        "memoryInGB": 1.0
    },
    "authEnabled": true,
    "sslEnabled": false,
    "appInsightsEnabled": false
}
"""
DOCUMENT_AKS_CONFIG = """{
    "computeType": "aks",
    "autoScaler":
    {
        "autoscaleEnabled": true,
        "minReplicas": 1,
        "maxReplicas": 3,
        "refreshPeriodInSeconds": 1,
        "targetUtilization": 70
    },
    "dataCollection":
    {
        "storageEnabled": true
    },
    "authEnabled": true,
    "containerResourceRequirements":
    {
        "cpu": 0.5,
        "memoryInGB": 1.0
    }
}
"""

# (JSON path, a value to give, the attribute path, what it is read as, the default when absent)
INFERENCE_FIELDS = [
    ("entryScript", "score.py", "entry_script", "score.py", None),  # required: no default
    ("runtime", "Python", "runtime", "python", "python"),
    ("condaFile", "env/myenv.yml", "conda_file", "env/myenv.yml", None),
    ("extraDockerFileSteps", "steps.dockerfile", "extra_docker_file_steps", "steps.dockerfile", None),
    ("sourceDirectory", "src", "source_directory", "src", None),
    ("enableGpu", True, "enable_gpu", True, False),
    ("baseImage", "mcr.microsoft.com/azureml/base:latest", "base_image", "mcr.microsoft.com/azureml/base:latest", None),
    ("baseImageRegistry", "mcr.microsoft.com", "base_image_registry", "mcr.microsoft.com", None),
    ("cudaVersion", "10.0", "cuda_version", "10.0", None),
]
DEPLOYMENT_FIELDS = {
    "local": [
        ("port", 32267, "port", 32267, None),
        ("dataCollection.storageEnabled", True, "data_collection.storage_enabled", True, False),
        ("maxBatchSize", 8, "max_batch_size", 8, 1),
        ("maxBatchDelayMs", 2, "max_batch_delay_ms", 2, 0),
    ],
    "aci": [
        ("containerResourceRequirements.cpu", 2, "container_resource_requirements.cpu", 2.0, 0.1),
        ("dataCollection.storageEnabled", True, "data_collection.storage_enabled", True, False),
        ("containerResourceRequirements.memoryInGB", 1.5, "container_resource_requirements.memory_in_gb", 1.5, 0.5),
        ("location", "westeurope", "location", "westeurope", None),
        ("authEnabled", True, "auth_enabled", True, False),
        ("sslEnabled", False, "ssl_enabled", False, False),
        ("appInsightsEnabled", True, "app_insights_enabled", True, False),
        ("sslCertificate", "cert.pem", "ssl_certificate", "cert.pem", None),
        ("sslKey", "key.pem", "ssl_key", "key.pem", None),
        ("cname", "scoring.example.com", "cname", "scoring.example.com", None),
        ("dnsNameLabel", "myservice", "dns_name_label", "myservice", None),
        ("maxBatchSize", 8, "max_batch_size", 8, 1),
        ("maxBatchDelayMs", 2, "max_batch_delay_ms", 2, 0),
    ],
    "aks": [
        ("autoScaler.autoscaleEnabled", False, "auto_scaler.autoscale_enabled", False, True),
        ("autoScaler.minReplicas", 2, "auto_scaler.min_replicas", 2, 1),
        ("autoScaler.maxReplicas", 4, "auto_scaler.max_replicas", 4, 10),
        ("autoScaler.refreshPeriodInSeconds", 5, "auto_scaler.refresh_period_in_seconds", 5, 1),
        ("autoScaler.targetUtilization", 100, "auto_scaler.target_utilization", 100, 70),
        ("dataCollection.storageEnabled", True, "data_collection.storage_enabled", True, False),
        ("authEnabled", False, "auth_enabled", False, True),
        ("containerResourceRequirements.cpu", 0.25, "container_resource_requirements.cpu", 0.25, 0.1),
        ("containerResourceRequirements.memoryInGB", 4, "container_resource_requirements.memory_in_gb", 4.0, 0.5),
        ("appInsightsEnabled", True, "app_insights_enabled", True, False),
        ("scoringTimeoutMs", 1000, "scoring_timeout_ms", 1000, 60000),
        ("maxConcurrentRequestsPerContainer", 8, "max_concurrent_requests_per_container", 8, 1),
        ("maxQueueWaitMs", 0, "max_queue_wait_ms", 0, 500),
        ("maxBatchSize", 8, "max_batch_size", 8, 1),
        ("maxBatchDelayMs", 2, "max_batch_delay_ms", 2, 0),
        ("numReplicas", 3, "num_replicas", 3, None),
        ("keys.primaryKey", "k1", "keys.primary_key", "k1", None),
        ("keys.secondaryKey", "k2", "keys.secondary_key", "k2", None),
        ("gpuCores", 0, "gpu_cores", 0, 1),
        ("livenessProbeRequirements.periodSeconds", 5, "liveness_probe_requirements.period_seconds", 5, 10),
        ("livenessProbeRequirements.initialDelaySeconds", 0,
         "liveness_probe_requirements.initial_delay_seconds", 0, 310),
        ("livenessProbeRequirements.timeoutSeconds", 1, "liveness_probe_requirements.timeout_seconds", 1, 2),
        ("livenessProbeRequirements.successThreshold", 1, "liveness_probe_requirements.success_threshold", 1, 1),
        ("livenessProbeRequirements.failureThreshold", 5, "liveness_probe_requirements.failure_threshold", 5, 3),
        ("namespace", "prod-scoring", "namespace", "prod-scoring", None),
    ],
}


def nested(path: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} from "a.b"."""
    head, _, rest = path.partition(".")
    return {head: nested(rest, value) if rest else value}


def attribute(record: Any, path: str) -> Any:
    for name in path.split("."):
        record = getattr(record, name)
    return record


def problems(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(error.value).splitlines()


def json_paths(schema: Schema, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for spec in schema.fields:
        if isinstance(spec.kind, Schema):
            paths |= json_paths(spec.kind, f"{prefix}{spec.key}.")
        else:
            paths.add(prefix + spec.key)
    return paths


def test_the_field_tables_here_cover_every_field_of_every_config():
    assert {row[0] for row in INFERENCE_FIELDS} == json_paths(INFERENCE)
    for compute_type, schema in (("local", LOCAL), ("aci", ACI), ("aks", AKS)):
        assert {row[0] for row in DEPLOYMENT_FIELDS[compute_type]} == json_paths(schema)


def test_every_record_attribute_is_filled_by_its_table():
    for schema in (INFERENCE, LOCAL, ACI, AKS):
        attributes = {field.name for field in dataclasses.fields(schema.record)} - {"base_dir", "notes"}
        assert attributes == {spec.attr for spec in schema.fields}


@pytest.mark.parametrize("key, value, attr, read_as, default", INFERENCE_FIELDS, ids=[r[0] for r in INFERENCE_FIELDS])
def test_inference_field_is_read_and_defaults_when_absent(key, value, attr, read_as, default):
    given = load_inference_config({"entryScript": "score.py", key: value})
    assert attribute(given, attr) == read_as
    if key != "entryScript":
        assert attribute(load_inference_config({"entryScript": "score.py"}), attr) == default


@pytest.mark.parametrize("compute_type, key, value, attr, read_as, default",
                         [(kind, *row) for kind, rows in DEPLOYMENT_FIELDS.items() for row in rows],
                         ids=[f"{kind}-{row[0]}" for kind, rows in DEPLOYMENT_FIELDS.items() for row in rows])
def test_deployment_field_is_read_and_defaults_when_absent(compute_type, key, value, attr, read_as, default):
    given = load_deployment_config({"computeType": compute_type, **nested(key, value)})
    assert attribute(given, attr) == read_as
    assert attribute(load_deployment_config({"computeType": compute_type}), attr) == default


def test_number_fields_store_floats_and_enum_fields_lowercase():
    config = load_deployment_config({"computeType": "aci", "containerResourceRequirements": {"cpu": 1}})
    assert isinstance(config.container_resource_requirements.cpu, float)
    assert load_inference_config({"entryScript": "s.py", "runtime": "PyThOn"}).runtime == "python"


def test_json_null_reads_as_the_default_as_azures_own_files_write_it():
    config = load_inference_config({"entryScript": "s.py", "sourceDirectory": None, "extraDockerFileSteps": None})
    assert config.source_directory is None and config.extra_docker_file_steps is None
    aks = load_deployment_config({"computeType": "aks", "numReplicas": None, "authEnabled": None})
    assert aks.num_replicas is None and aks.auth_enabled is True


def test_cuda_version_defaults_to_9_1_only_with_gpu():
    assert load_inference_config({"entryScript": "s.py", "enableGpu": True}).cuda_version == "9.1"
    assert load_inference_config({"entryScript": "s.py", "enableGpu": False}).cuda_version is None


def test_azure_clis_spelling_extra_dockerfile_steps_is_the_same_field():
    config = load_inference_config({"entryScript": "s.py", "extraDockerfileSteps": "steps"})
    assert config.extra_docker_file_steps == "steps"
    with pytest.raises(ConfigError, match="given twice, as extraDockerFileSteps and extraDockerfileSteps"):
        load_inference_config({"entryScript": "s.py", "extraDockerFileSteps": "a", "extraDockerfileSteps": "b"})


# --- the documents' own examples ----------------------------------------------------------------------


def test_documents_inference_example_reads_from_its_file_once_its_files_exist(tmp_path):
    (tmp_path / "C:" / "abc" / "x" / "y").mkdir(parents=True)
    (tmp_path / "C:" / "abc" / "x" / "y" / "score.py").write_text("def init(): pass\ndef run(data): return data\n")
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "myenv.yml").write_text("name: project_environment\n")
    path = tmp_path / "inferenceconfig.json"
    path.write_text(DOCUMENT_INFERENCE_CONFIG)
    config = load_inference_config(path)
    assert (config.entry_script, config.runtime, config.conda_file, config.source_directory) == (
        "x/y/score.py", "python", "env/myenv.yml", "C:/abc")
    assert config.base_dir == tmp_path.resolve()
    assert config.source_directory_path == (tmp_path / "C:" / "abc").resolve()
    assert config.entry_script_path == (tmp_path / "C:" / "abc" / "x" / "y" / "score.py").resolve()
    assert config.conda_file_path == (tmp_path / "env" / "myenv.yml").resolve()
    assert config.notes == ()


@pytest.mark.parametrize("text, record", [(DOCUMENT_LOCAL_CONFIG, LocalConfig), (DOCUMENT_ACI_CONFIG, AciConfig),
                                          (DOCUMENT_AKS_CONFIG, AksConfig)], ids=["local", "aci", "aks"])
def test_documents_deployment_examples_read_from_their_files(tmp_path, text, record):
    path = tmp_path / "deploymentconfig.json"
    path.write_text(text)
    config = load_deployment_config(path)
    assert type(config) is record and config.COMPUTE_TYPE == json.loads(text)["computeType"]


def test_documents_examples_read_as_their_values_say():
    assert load_deployment_config(json.loads(DOCUMENT_LOCAL_CONFIG)).port == 32267
    aci = load_deployment_config(json.loads(DOCUMENT_ACI_CONFIG))
    assert (aci.container_resource_requirements.cpu, aci.container_resource_requirements.memory_in_gb) == (0.5, 1.0)
    assert (aci.auth_enabled, aci.ssl_enabled, aci.app_insights_enabled) == (True, False, False)
    aks = load_deployment_config(json.loads(DOCUMENT_AKS_CONFIG))
    assert aks.auto_scaler == dataclasses.replace(aks.auto_scaler, autoscale_enabled=True, min_replicas=1,
                                                  max_replicas=3, refresh_period_in_seconds=1, target_utilization=70)
    assert aks.data_collection.storage_enabled and aks.auth_enabled
    assert aks.notes == ("dataCollection.storageEnabled: model data is written as JSON lines to "
                         "/var/mlscore/model-data on each pod, an emptyDir volume that goes with the pod (mount a "
                         "PersistentVolumeClaim there to keep it), not to Azure Blob storage",)


# --- compute types ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["aks", "AKS", "kubernetes", "Kubernetes"])
def test_aks_and_kubernetes_in_any_case_are_the_same_compute_type(spelling):
    config = load_deployment_config({"computeType": spelling, "numReplicas": 2})
    assert config == load_deployment_config({"computeType": "aks", "numReplicas": 2})
    assert isinstance(config, AksConfig)


def test_aci_compute_type_is_read_in_any_case_as_the_documents_write_it_both_ways():
    assert isinstance(load_deployment_config({"computeType": "ACI"}), AciConfig)


def test_missing_compute_type_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"port": 5001})
    assert problems(error) == ["deployment config: computeType: required: one of local, aci, aks "
                               "(also spelled kubernetes), in any case"]


@pytest.mark.parametrize("compute_type, shown", [("amlcompute", '"amlcompute"'), (3, "3")])
def test_unknown_compute_type_names_it_and_the_allowed_ones(compute_type, shown):
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": compute_type})
    assert problems(error) == [f"deployment config: computeType: must be one of local, aci, aks (also spelled "
                               f"kubernetes), in any case, got {shown}"]


# --- errors -------------------------------------------------------------------------------------------


def test_unknown_field_suggests_the_closest_name_and_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": "local", "Port": 80})
    assert problems(error) == ["deployment config: Port: unknown field (did you mean port?); the fields of "
                               "computeType local are computeType, dataCollection, maxBatchDelayMs, maxBatchSize, port"]


def test_unknown_nested_field_is_named_by_its_path():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": "aks", "autoScaler": {"maxReplica": 3}})
    assert problems(error) == ["deployment config: autoScaler.maxReplica: unknown field (did you mean maxReplicas?); "
                               "the fields of autoScaler are autoscaleEnabled, maxReplicas, minReplicas, "
                               "refreshPeriodInSeconds, targetUtilization"]


def test_a_field_of_another_compute_type_says_which():
    with pytest.raises(ConfigError, match=r"scoringTimeoutMs: unknown field \(a field of computeType aks, not of "
                                          r"computeType aci\); the fields of computeType aci are "):
        load_deployment_config({"computeType": "aci", "scoringTimeoutMs": 1000})


def test_unknown_field_without_a_close_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="environment: unknown field; the fields of the inference config are "
                                          "baseImage, baseImageRegistry, condaFile, cudaVersion, enableGpu, "
                                          "entryScript, extraDockerFileSteps, runtime, sourceDirectory$"):
        load_inference_config({"entryScript": "s.py", "environment": {}})


@pytest.mark.parametrize("compute_type, key, value, message", [
    ("local", "port", "5001", 'port: must be an integer from 1 to 65535, got "5001" (a string)'),
    ("local", "port", True, "port: must be an integer from 1 to 65535, got true (a boolean)"),
    ("local", "port", 5001.0, "port: must be an integer from 1 to 65535, got 5001.0 (a number)"),
    ("aci", "authEnabled", "true", 'authEnabled: must be a boolean, got "true" (a string)'),
    ("aci", "authEnabled", 1, "authEnabled: must be a boolean, got 1 (a number)"),
    ("aci", "containerResourceRequirements.cpu", "1", "containerResourceRequirements.cpu: must be a number more "
                                                      'than 0 (cores; fractions allowed), got "1" (a string)'),
    ("aci", "containerResourceRequirements", [1, 2], "containerResourceRequirements: must be an object with the "
                                                     "fields cpu, memoryInGB, got [1, 2] (an array)"),
    ("aks", "autoScaler.maxReplicas", "3", 'autoScaler.maxReplicas: must be an integer at least 1, got "3" (a string)'),
    ("aks", "namespace", 7, "namespace: must be a string of 1 to 63 lowercase letters, digits or '-', starting and "
                            "ending with a letter or digit (a Kubernetes namespace: an RFC 1123 label), got 7 "
                            "(a number)"),
])
def test_wrong_type_names_the_field_what_is_allowed_and_what_came(compute_type, key, value, message):
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": compute_type, **nested(key, value)})
    assert problems(error) == [f"deployment config: {message}"]


@pytest.mark.parametrize("compute_type, key, value, allowed", [
    ("local", "port", 0, "an integer from 1 to 65535"),
    ("local", "port", 65536, "an integer from 1 to 65535"),
    ("aci", "containerResourceRequirements.cpu", 0, "a number more than 0 (cores; fractions allowed)"),
    ("aci", "containerResourceRequirements.memoryInGB", -1, "a number more than 0"),
    ("aks", "autoScaler.minReplicas", 0, "an integer at least 1"),
    ("aks", "autoScaler.maxReplicas", 0, "an integer at least 1"),
    ("aks", "autoScaler.refreshPeriodInSeconds", 0, "an integer at least 1"),
    ("aks", "autoScaler.targetUtilization", 0, "an integer from 1 to 100 (percent)"),
    ("aks", "autoScaler.targetUtilization", 101, "an integer from 1 to 100 (percent)"),
    ("aks", "scoringTimeoutMs", 0, "an integer from 1 to 86400000 (the server's limit: 24 h)"),
    ("aks", "maxConcurrentRequestsPerContainer", 0, "an integer from 1 to 1000 (the server's limit)"),
    ("aks", "maxQueueWaitMs", -1, "an integer from 0 to 3600000 (the server's limit: 1 h)"),
    ("aks", "numReplicas", 0, "an integer at least 1"),
    ("aks", "gpuCores", -1, "an integer at least 0"),
    ("aks", "livenessProbeRequirements.periodSeconds", 0, "an integer at least 1"),
    ("aks", "livenessProbeRequirements.initialDelaySeconds", -1, "an integer at least 0"),
    ("aks", "livenessProbeRequirements.timeoutSeconds", 0, "an integer at least 1"),
    ("aks", "livenessProbeRequirements.successThreshold", 2,
     "an integer equal to 1 (Kubernetes takes no other value for a liveness probe)"),
    ("aks", "livenessProbeRequirements.failureThreshold", 0, "an integer at least 1"),
])
def test_value_out_of_range_names_the_field_and_the_range(compute_type, key, value, allowed):
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": compute_type, **nested(key, value)})
    assert problems(error) == [f"deployment config: {key}: must be {allowed}, got {value}"]


def test_not_a_finite_number_is_refused():
    with pytest.raises(ConfigError, match=r"cpu: must be a number more than 0 \(cores; fractions allowed\), "
                                          r"got Infinity \(a number\)"):
        load_deployment_config({"computeType": "aci", "containerResourceRequirements": {"cpu": float("inf")}})


@pytest.mark.parametrize("namespace", ["Default", "-scoring", "scoring-", "a_b", "a.b", "", "a" * 64])
def test_namespace_must_be_a_kubernetes_namespace(namespace):
    with pytest.raises(ConfigError, match=r"namespace: must be a string of 1 to 63 lowercase letters, digits or "
                                          r"'-', starting and ending with a letter or digit"):
        load_deployment_config({"computeType": "aks", "namespace": namespace})


@pytest.mark.parametrize("namespace", ["a", "0", "prod-scoring-2", "a" * 63])
def test_valid_kubernetes_namespaces_are_taken(namespace):
    assert load_deployment_config({"computeType": "aks", "namespace": namespace}).namespace == namespace


def test_spark_py_runtime_is_not_supported():
    with pytest.raises(ConfigError) as error:
        load_inference_config({"entryScript": "s.py", "runtime": "spark-py"})
    assert problems(error) == ['inference config: runtime: "spark-py" is not supported: mlscore runs Python entry '
                               'scripts; must be one of python']


def test_unknown_runtime_lists_the_one_allowed():
    with pytest.raises(ConfigError, match='runtime: must be one of python, got "r"$'):
        load_inference_config({"entryScript": "s.py", "runtime": "r"})


@pytest.mark.parametrize("data", [{}, {"entryScript": None}, {"entryScript": "  "}], ids=["absent", "null", "blank"])
def test_entry_script_is_required(data):
    with pytest.raises(ConfigError, match="entryScript: (required: )?(must be )?a string that is not blank"):
        load_inference_config(data)


def test_num_replicas_with_autoscale_enabled_is_a_conflict():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": "aks", "numReplicas": 3, "autoScaler": {"autoscaleEnabled": True}})
    assert problems(error) == ["deployment config: numReplicas: cannot be given with autoScaler.autoscaleEnabled "
                               "true: give a fixed numReplicas, or autoscale between autoScaler.minReplicas and "
                               "maxReplicas"]


def test_autoscaling_is_on_unless_num_replicas_is_given():
    assert load_deployment_config({"computeType": "aks"}).auto_scaler.autoscale_enabled is True
    fixed = load_deployment_config({"computeType": "aks", "numReplicas": 3})
    assert fixed.auto_scaler.autoscale_enabled is False and fixed.num_replicas == 3
    off = load_deployment_config({"computeType": "aks", "numReplicas": 3, "autoScaler": {"autoscaleEnabled": False}})
    assert off == fixed


def test_min_replicas_above_max_replicas_is_refused():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": "aks", "autoScaler": {"minReplicas": 12}})
    assert problems(error) == ["deployment config: autoScaler.minReplicas: must be at most autoScaler.maxReplicas "
                               "(10), got 12"]


def test_a_check_across_fields_is_skipped_when_one_of_its_fields_was_refused():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": "aks", "autoScaler": {"minReplicas": 12, "maxReplicas": "3"}})
    assert problems(error) == ['deployment config: autoScaler.maxReplicas: must be an integer at least 1, '
                               'got "3" (a string)']


def test_ssl_without_certificate_and_key_is_refused():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": "aci", "sslEnabled": True})
    assert problems(error) == ["deployment config: sslCertificate: required when sslEnabled is true (a PEM file)",
                               "deployment config: sslKey: required when sslEnabled is true (a PEM file)"]


def test_ssl_files_are_checked_only_where_the_configs_folder_is_known(tmp_path):
    data = {"computeType": "aci", "sslEnabled": True, "sslCertificate": "cert.pem", "sslKey": "key.pem"}
    assert load_deployment_config(data).ssl_certificate_path is None
    with pytest.raises(ConfigError) as error:
        load_deployment_config(data, base_dir=tmp_path)
    assert problems(error) == [f"deployment config: sslCertificate: no such file: {tmp_path.resolve() / 'cert.pem'}",
                               f"deployment config: sslKey: no such file: {tmp_path.resolve() / 'key.pem'}"]
    (tmp_path / "cert.pem").write_text("certificate")
    (tmp_path / "key.pem").write_text("key")
    config = load_deployment_config(data, base_dir=tmp_path)
    assert config.ssl_certificate_path == tmp_path.resolve() / "cert.pem"
    assert config.ssl_key == "key.pem"


def test_key_values_never_appear_in_messages():
    with pytest.raises(ConfigError) as error:
        load_deployment_config({"computeType": "aks", "keys": {"primaryKey": "s3cret with space"}})
    assert "s3cret" not in str(error.value)
    assert problems(error) == ["deployment config: keys.primaryKey: must be a string without whitespace or commas "
                               "(MLSCORE_AUTH_KEYS separates keys with commas), got a string of 17 characters"]


def test_every_problem_in_a_file_is_reported_together_one_per_line_naming_the_file(tmp_path):
    path = tmp_path / "deploymentconfig.json"
    path.write_text(json.dumps({
        "computeType": "aks",
        "autoScaler": {"minReplicas": 0, "targetUtilisation": 70},
        "numReplicas": 2,
        "maxQueueWaitMs": "500",
        "namespace": "Prod",
        "liveness": {},
    }))
    with pytest.raises(ConfigError) as error:
        load_deployment_config(path)
    lines = problems(error)
    assert [line.split(": ")[1] for line in lines] == [
        "autoScaler.minReplicas", "autoScaler.targetUtilisation", "maxQueueWaitMs", "namespace", "liveness"]
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert error.value.source == str(path) and len(error.value.problems) == 5
    assert isinstance(error.value, ValueError)


# --- files --------------------------------------------------------------------------------------------


def test_inference_paths_resolve_from_the_config_files_folder_and_must_exist(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "inferenceconfig.json"
    path.write_text(json.dumps({"entryScript": "score.py", "sourceDirectory": "../src", "condaFile": "env.yml",
                                "extraDockerfileSteps": "steps"}))
    with pytest.raises(ConfigError) as error:
        load_inference_config(path)
    assert problems(error) == [
        f"{path}: sourceDirectory: no such folder: {(tmp_path / 'src').resolve()}",
        f"{path}: condaFile: no such file: {(tmp_path / 'configs' / 'env.yml').resolve()}",
        f"{path}: extraDockerFileSteps: no such file: {(tmp_path / 'configs' / 'steps').resolve()}",
    ]  # the entry script is looked for once its folder is there
    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError) as error:
        load_inference_config(path)
    assert problems(error)[0] == f"{path}: entryScript: no such file: {(tmp_path / 'src' / 'score.py').resolve()}"


def test_a_dict_keeps_its_paths_unresolved_unless_given_a_folder(tmp_path):
    data = {"entryScript": "score.py"}
    assert load_inference_config(data).entry_script_path is None
    (tmp_path / "score.py").write_text("")
    config = load_inference_config(data, base_dir=tmp_path)
    assert config.entry_script == "score.py" and config.entry_script_path == (tmp_path / "score.py").resolve()


def test_trailing_commas_are_taken_and_strings_are_left_alone(tmp_path):
    path = tmp_path / "inferenceconfig.json"
    path.write_text('{"entryScript": "a,}.py", "enableGpu": true,}')
    (tmp_path / "a,}.py").write_text("")
    assert load_inference_config(path).entry_script == "a,}.py"


@pytest.mark.parametrize("text, problem", [
    ('{"computeType": "local" "port": 1}', "not valid JSON: Expecting ',' delimiter at line 1, column 25"),
    ("[]", "must hold a JSON object, not an array"),
])
def test_a_file_that_is_not_a_json_object_is_refused(tmp_path, text, problem):
    path = tmp_path / "deploymentconfig.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_deployment_config(path)
    assert problems(error) == [f"{path}: {problem}"]


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: no such file$"):
        load_inference_config(tmp_path / "nope.json")


# --- notes --------------------------------------------------------------------------------------------


def test_azure_only_fields_are_taken_with_a_note_of_what_happens_instead():
    config = load_deployment_config({"computeType": "aci", "location": "westeurope", "dnsNameLabel": "svc",
                                     "appInsightsEnabled": True, "cname": "svc.example.com"})
    assert config.notes == (
        "location: ignored: the service runs where its deploy target runs it, not in an Azure region",
        "dnsNameLabel: ignored: the service is reached at the address its deploy target reports",
        "appInsightsEnabled: no Application Insights here: the server writes JSON log lines to stdout instead (a "
        "line per request with its id, status and timings), for a collector such as the Azure Monitor agent or "
        "Fluent Bit, and metrics to GET /metrics (Prometheus)",
        "cname: ignored: point your own DNS name at the address the deploy target reports",
    )
    assert all("\n" not in note for note in config.notes)


def test_ssl_enabled_notes_that_the_container_serves_https_with_the_files_mounted(tmp_path):
    (tmp_path / "c.pem").write_text("")
    (tmp_path / "k.pem").write_text("")
    config = load_deployment_config({"computeType": "aci", "sslEnabled": True, "sslCertificate": "c.pem",
                                     "sslKey": "k.pem"}, base_dir=tmp_path)
    assert config.notes == ("sslEnabled: the container serves HTTPS itself: sslCertificate and sslKey are mounted "
                            "into it read-only when it starts (never copied into the image), and must be readable "
                            "by its user (uid 1000)",)


def test_switches_left_off_give_no_note():
    assert load_deployment_config({"computeType": "aks", "appInsightsEnabled": False,
                                   "dataCollection": {"storageEnabled": False}}).notes == ()
    assert load_deployment_config({"computeType": "aci", "sslEnabled": False}).notes == ()


def test_cuda_version_given_notes_that_it_is_ignored():
    config = load_inference_config({"entryScript": "s.py", "enableGpu": True, "cudaVersion": "10.0"})
    assert config.notes == ("cudaVersion: ignored: GPU scoring uses the CUDA libraries onnxruntime was built with",)
    assert load_inference_config({"entryScript": "s.py", "enableGpu": True}).notes == ()


# --- what the configs mean for the server -------------------------------------------------------------


def test_aks_settings_pass_to_the_server_as_its_environment():
    config = load_deployment_config({"computeType": "aks", "authEnabled": False, "scoringTimeoutMs": 2000,
                                     "maxConcurrentRequestsPerContainer": 4, "maxQueueWaitMs": 100})
    inference = load_inference_config({"entryScript": "s.py", "enableGpu": True})
    env = to_settings_env(config, inference)
    # 0.5 GB (the default memoryInGB): 80 % of 512 MiB shared by 4 workers and one being started
    assert env == {"MLSCORE_DEVICE": "gpu", "MLSCORE_MAX_CONCURRENT_REQUESTS": "4", "MLSCORE_MAX_QUEUE_WAIT_MS": "100",
                   "MLSCORE_SCORING_TIMEOUT_MS": "2000", "MLSCORE_WORKER_MAX_RSS_MB": "81"}
    settings = Settings.build({}, environ=env)
    assert (settings.device, settings.max_concurrent_requests, settings.max_queue_wait_ms,
            settings.scoring_timeout_ms, settings.workers, settings.worker_max_rss_mb) == ("gpu", 4, 100, 2000, 4, 81)


def test_aks_defaults_pass_on_as_the_documents_defaults():
    env = to_settings_env(load_deployment_config({"computeType": "aks", "authEnabled": False}))
    assert env == {"MLSCORE_MAX_CONCURRENT_REQUESTS": "1", "MLSCORE_MAX_QUEUE_WAIT_MS": "500",
                   "MLSCORE_SCORING_TIMEOUT_MS": "60000", "MLSCORE_WORKER_MAX_RSS_MB": "204"}


def test_app_insights_turns_on_json_logs_with_a_line_per_request():
    for compute_type in ("aci", "aks"):
        config = load_deployment_config({"computeType": compute_type, "authEnabled": False,
                                         "appInsightsEnabled": True})
        env = to_settings_env(config)
        assert env["MLSCORE_LOG_FORMAT"] == "json"
        settings = Settings.build({}, environ=env)
        assert (settings.log_format, settings.access_log) == ("json", True)
    assert "MLSCORE_LOG_FORMAT" not in to_settings_env(load_deployment_config({"computeType": "aci"}))


@pytest.mark.parametrize("compute_type", ["local", "aci", "aks"])
def test_data_collection_storage_turns_on_data_collection_where_the_target_says(compute_type):
    config = load_deployment_config({"computeType": compute_type, "dataCollection": {"storageEnabled": True}})
    keys = service_keys(config)
    assert to_settings_env(config, keys=keys)["MLSCORE_COLLECT_DATA"] == "model-data"  # the working directory's
    env = to_settings_env(config, keys=keys, data_dir="/var/mlscore/model-data")
    assert Settings.build({}, environ=env).collect_data == Path("/var/mlscore/model-data")
    assert len(config.notes) == 1 and "model data is written as JSON lines" in config.notes[0]
    off = load_deployment_config({"computeType": compute_type, "dataCollection": {"storageEnabled": False}})
    assert "MLSCORE_COLLECT_DATA" not in to_settings_env(off, keys=service_keys(off))


def test_enable_gpu_false_or_absent_means_cpu():
    local = load_deployment_config({"computeType": "local", "port": 8890})
    assert to_settings_env(local, load_inference_config({"entryScript": "s.py"})) == {"MLSCORE_DEVICE": "cpu"}
    assert to_settings_env(local) == {}


def test_auth_keys_come_from_the_config_and_missing_ones_are_generated():
    config = load_deployment_config({"computeType": "aks", "keys": {"primaryKey": "first"}})
    keys = service_keys(config)
    assert keys.primary_key == "first" and keys.secondary_key
    assert keys.secondary_key != service_keys(config).secondary_key  # made afresh: the caller stores them
    env = to_settings_env(config, keys=keys)
    assert env["MLSCORE_AUTH_KEYS"] == f"first,{keys.secondary_key}"
    assert Settings.build({}, environ=env).auth_keys == ("first", keys.secondary_key)


def test_aci_with_auth_gets_generated_keys_and_without_auth_none():
    aci = load_deployment_config({"computeType": "aci", "authEnabled": True})
    keys = service_keys(aci)
    assert len({keys.primary_key, keys.secondary_key}) == 2
    assert to_settings_env(aci, keys=keys) == {"MLSCORE_AUTH_KEYS": f"{keys.primary_key},{keys.secondary_key}",
                                               "MLSCORE_WORKER_MAX_RSS_MB": "204"}
    assert service_keys(load_deployment_config({"computeType": "aci"})) is None
    assert service_keys(LocalConfig()) is None
    assert to_settings_env(load_deployment_config({"computeType": "aci"}), keys=Keys("unused")) == {
        "MLSCORE_WORKER_MAX_RSS_MB": "204"}


def test_auth_on_without_keys_is_a_programming_error():
    with pytest.raises(ValueError, match=r"authEnabled is true but no keys were given: pass service_keys\(config\)"):
        to_settings_env(load_deployment_config({"computeType": "aks"}))


def test_records_are_frozen():
    config = load_inference_config({"entryScript": "s.py"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.entry_script = "other.py"  # type: ignore[misc]
    assert isinstance(config, InferenceConfig)


@pytest.mark.parametrize("data", [
    {"entryScript": "score.py", "runtime": "python", "enableGpu": True, "baseImage": "x/y:1"},
    {"computeType": "local", "port": 6789},
    {"computeType": "aci", "containerResourceRequirements": {"cpu": 2, "memoryInGB": 3.5}, "authEnabled": True},
    {"computeType": "aks", "numReplicas": 3, "keys": {"primaryKey": "p", "secondaryKey": "s"}, "namespace": "ml",
     "livenessProbeRequirements": {"periodSeconds": 7}},
])
def test_to_json_loads_back_to_the_same_config(data):
    from mlscore.deploy.configs import to_json
    load = load_inference_config if "entryScript" in data else load_deployment_config
    config = load(data)
    # notes may differ: a default filled in (cudaVersion with enableGpu) is given explicitly the second time
    assert dataclasses.replace(load(to_json(config)), notes=()) == dataclasses.replace(config, notes=())
