"""The Docker build context made from an inference config (no engine needed), the commands around it,
and the top-level runtime Dockerfile."""

from __future__ import annotations

import dataclasses
import io
import json
import ssl
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mlscore.deploy import image
from mlscore.deploy.configs import InferenceConfig, load_inference_config
from mlscore.deploy.image import BuildContext, build_mlscore_wheel, find_engine, write_build_context
from mlscore.deploy.registry import ModelVersion, Registry

ROOT = Path(__file__).resolve().parent.parent
KEYS = "primary-key-1234567890,secondary-key-0987654321"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mlscore wheel for every test here: building it takes seconds."""
    return build_mlscore_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A source directory with the entry script, a helper, a data file and the junk folders of a checkout."""
    source = tmp_path / "src"
    for relative, text in {
        "score.py": "def init():\n    pass\n\ndef run(data):\n    return data\n",
        "helpers/features.py": "SCALE = 2\n",
        "data/labels.txt": "a\nb\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        "__pycache__/score.cpython-311.pyc": "",
        "helpers/__pycache__/features.cpython-311.pyc": "",
        ".venv/bin/python": "",
    }.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(text)
    return source


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def model(registry: Registry, tmp_path: Path, name: str = "regressor") -> ModelVersion:
    path = tmp_path / "incoming" / name / "model.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"model bytes of " + name.encode())
    return registry.register(name, path)


def config(tmp_path: Path, **fields: Any) -> InferenceConfig:
    return load_inference_config({"entryScript": "score.py", "sourceDirectory": "src", **fields}, base_dir=tmp_path)


def write(tmp_path: Path, inference: InferenceConfig, models: Sequence[ModelVersion], wheel: Path,
          env: dict[str, str] | None = None, output: str = "context") -> BuildContext:
    return write_build_context(tmp_path / output, "churn", inference, models, env or {}, wheel=wheel)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments left out."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        found.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def dockerfile_of(context: BuildContext) -> str:
    return (context.path / "Dockerfile").read_text()


def env_of(dockerfile: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in instructions(dockerfile):
        if keyword == "ENV" and '="' in arguments:
            for pair in arguments.split('" '):
                key, _, value = pair.partition("=")
                env[key] = value.strip('"')
    return env


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


# --- the context's files -------------------------------------------------------------------------------


def test_context_holds_dockerfile_app_models_wheel_and_requirements(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)

    assert files_under(context.path) == {
        "Dockerfile", ".dockerignore", image.MARKER, "requirements.txt", f"wheels/{wheel.name}",
        "app/score.py", "app/helpers/features.py", "app/data/labels.txt",
        "azureml-models/regressor/1/model.pkl",
    }
    with zipfile.ZipFile(context.path / "wheels" / wheel.name) as built:
        assert "mlscore/server/cli.py" in built.namelist()
    assert context.image.startswith("mlscore-churn:") and context.service == "churn"


def test_app_copy_leaves_out_version_control_caches_and_virtual_environments(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)

    copied = files_under(context.path / "app")
    assert not [name for name in copied if ".git/" in name or "__pycache__" in name or ".venv/" in name]
    assert "**/__pycache__" in (context.path / ".dockerignore").read_text().splitlines()


def test_context_written_inside_the_source_directory_does_not_copy_itself(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel, output="src/build")

    assert not (context.path / "app" / "build").exists()


def test_without_source_directory_the_entry_scripts_folder_is_the_app(tmp_path, app, registry, wheel):
    inference = load_inference_config({"entryScript": "src/helpers/features.py"}, base_dir=tmp_path)

    context = write(tmp_path, inference, [model(registry, tmp_path)], wheel)

    assert files_under(context.path / "app") == {"features.py"}
    assert env_of(dockerfile_of(context))["AZUREML_ENTRY_SCRIPT"] == "features.py"


def test_entry_script_in_a_subfolder_keeps_its_path_under_the_app_root(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path, entryScript="helpers/features.py"), [model(registry, tmp_path)], wheel)

    assert env_of(dockerfile_of(context))["AZUREML_ENTRY_SCRIPT"] == "helpers/features.py"


def test_one_model_is_laid_out_and_azureml_model_dir_names_its_version_folder(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)

    dockerfile = dockerfile_of(context)
    assert ("COPY", "azureml-models/ /var/azureml-app/azureml-models/") in instructions(dockerfile)
    assert env_of(dockerfile)["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/regressor/1"


def test_several_models_share_azureml_models_as_the_model_dir(tmp_path, app, registry, wheel):
    models = [model(registry, tmp_path, "regressor"), model(registry, tmp_path, "encoder")]

    context = write(tmp_path, config(tmp_path), models, wheel)

    assert {"regressor/1/model.pkl", "encoder/1/model.pkl"} == files_under(context.path / "azureml-models")
    assert env_of(dockerfile_of(context))["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models"


def test_every_file_is_readable_by_the_images_user(tmp_path, app, registry, wheel):
    (app / "score.py").chmod(0o600)

    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)

    assert (context.path / "app" / "score.py").stat().st_mode & 0o004


# --- the Dockerfile --------------------------------------------------------------------------------------


def test_default_base_is_python_slim_and_the_image_serves_as_a_non_root_user(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)

    steps = instructions(dockerfile_of(context))
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert steps[-5:] == [
        ("WORKDIR", "/var/azureml-app"),
        ("USER", "1000"),
        ("EXPOSE", "5001"),
        ("HEALTHCHECK", steps[-2][1]),
        ("CMD", '["mlscore", "serve", "--host", "0.0.0.0"]'),
    ]
    assert "/health/live" in steps[-2][1]
    env = env_of(dockerfile_of(context))
    assert env["AML_APP_ROOT"] == "/var/azureml-app" and env["MLSCORE_PORT"] == "5001"
    assert not context.gpu


def test_base_image_from_the_config_goes_behind_its_registry(tmp_path, app, registry, wheel):
    inference = config(tmp_path, baseImage="team/scoring-base:2", baseImageRegistry="registry.example.com/")

    context = write(tmp_path, inference, [model(registry, tmp_path)], wheel)

    assert instructions(dockerfile_of(context))[0] == ("FROM", "registry.example.com/team/scoring-base:2")


def test_base_image_that_already_names_its_registry_is_kept(tmp_path, app, registry, wheel):
    inference = config(tmp_path, baseImage="registry.example.com/base:1", baseImageRegistry="registry.example.com")

    context = write(tmp_path, inference, [model(registry, tmp_path)], wheel)

    assert instructions(dockerfile_of(context))[0] == ("FROM", "registry.example.com/base:1")


def test_gpu_builds_on_a_cuda_base_with_onnxruntime_gpu(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path, enableGpu=True), [model(registry, tmp_path)], wheel,
                    env={"MLSCORE_DEVICE": "gpu"})

    dockerfile = dockerfile_of(context)
    assert instructions(dockerfile)[0] == ("FROM", image.GPU_BASE_IMAGE)
    assert image.GPU_BASE_IMAGE.startswith("nvidia/cuda:12.") and "cudnn-runtime-ubuntu" in image.GPU_BASE_IMAGE
    runs = [arguments for keyword, arguments in instructions(dockerfile) if keyword == "RUN"]
    assert any("pip uninstall --yes onnxruntime" in run and "pip install" in run and "onnxruntime-gpu" in run
               for run in runs)
    assert "apt-get install" in runs[0] and "python3-venv" in runs[0]  # CUDA bases carry no Python
    assert env_of(dockerfile)["MLSCORE_DEVICE"] == "gpu"
    assert context.gpu and "--gpus" in context.run_command("docker", 8080, "churn")


def test_gpu_with_its_own_base_image_keeps_that_base(tmp_path, app, registry, wheel):
    inference = config(tmp_path, enableGpu=True, baseImage="mycompany/cuda-python:12")

    context = write(tmp_path, inference, [model(registry, tmp_path)], wheel)

    assert instructions(dockerfile_of(context))[0] == ("FROM", "mycompany/cuda-python:12")


CONDA_FILE = """\
name: project_environment
channels:
  - conda-forge
dependencies:
  - python=3.8.5
  - pip
  - scikit-learn=1.3
  - conda-forge::joblib 1.3.2 pyhd8ed1ab_0
  - numpy>=1.24,<3
  - pytorch
  - pip:
    - azureml-defaults==1.40.0
    - inference-schema[numpy-support]>=1.7
    - --extra-index-url https://example.com/simple
"""


def test_conda_dependencies_become_pip_requirements_and_the_dockerfile_says_which(tmp_path, app, registry, wheel):
    (tmp_path / "env.yml").write_text(CONDA_FILE)

    context = write(tmp_path, config(tmp_path, condaFile="env.yml"), [model(registry, tmp_path)], wheel)

    assert (context.path / "requirements.txt").read_text().splitlines() == [
        "scikit-learn==1.3.*",
        "joblib==1.3.2",
        "numpy>=1.24,<3",
        "torch",
        "inference-schema[numpy-support]>=1.7",
        "--extra-index-url https://example.com/simple",
    ]
    dockerfile = dockerfile_of(context)
    assert "# condaFile: scikit-learn=1.3 -> pip scikit-learn==1.3.*" in dockerfile
    assert "# condaFile: python=3.8.5 skipped: the image's own Python runs mlscore" in dockerfile
    assert "# condaFile: azureml-defaults==1.40.0 skipped: the server is mlscore" in dockerfile
    assert "conda-forge not used" in dockerfile
    install = next(run for keyword, run in instructions(dockerfile) if keyword == "RUN" and "pip install" in run)
    assert f"/tmp/mlscore-build/{wheel.name} --requirement /tmp/mlscore-build/requirements.txt" in install


def test_conda_only_packages_stay_out_of_requirements_and_the_dockerfile_says_so(tmp_path, app, registry, wheel):
    (tmp_path / "env.yml").write_text("dependencies:\n  - libgomp\n  - scikit-learn\n")

    context = write(tmp_path, config(tmp_path, condaFile="env.yml"), [model(registry, tmp_path)], wheel)

    assert (context.path / "requirements.txt").read_text() == "scikit-learn\n"
    assert ("# condaFile: libgomp skipped: conda-only (no PyPI package of that name): not installed; add it with "
            "extraDockerFileSteps") in dockerfile_of(context)


def test_the_diabetes_examples_context_installs_joblib_and_scikit_learn(tmp_path, registry, wheel):
    diabetes = ROOT / "examples" / "diabetes"
    (tmp_path / "model.pkl").write_bytes(b"a pickled Ridge")
    models = [registry.register("sklearn_regression_model.pkl", tmp_path / "model.pkl")]

    context = write_build_context(tmp_path / "context", "diabetes",
                                  load_inference_config(diabetes / "inferenceconfig.json"), models, {}, wheel=wheel)

    requirements = (context.path / "requirements.txt").read_text().splitlines()
    assert [line.split(">=")[0] for line in requirements] == ["joblib", "scikit-learn"]
    dockerfile = dockerfile_of(context)
    install = next(run for keyword, run in instructions(dockerfile) if keyword == "RUN" and "pip install" in run)
    assert "--requirement /tmp/mlscore-build/requirements.txt" in install
    assert "# condaFile: python=3.11 skipped: the image's own Python runs mlscore" in dockerfile


def test_conda_file_without_a_dependency_list_is_refused(tmp_path, app, registry, wheel):
    (tmp_path / "env.yml").write_text("dependencies: numpy\n")

    with pytest.raises(ValueError, match="dependencies"):
        write(tmp_path, config(tmp_path, condaFile="env.yml"), [model(registry, tmp_path)], wheel)


def test_extra_docker_steps_go_in_verbatim_after_the_packages_and_before_the_app(tmp_path, app, registry, wheel):
    steps = "RUN apt-get update && apt-get install -y libgomp1 \\\n    && rm -rf /var/lib/apt/lists/*\nENV OMP_NUM_THREADS=1\n"
    (tmp_path / "steps.dockerfile").write_text(steps)

    context = write(tmp_path, config(tmp_path, extraDockerFileSteps="steps.dockerfile"),
                    [model(registry, tmp_path)], wheel)

    dockerfile = dockerfile_of(context)
    assert steps in dockerfile
    assert dockerfile.index("pip install") < dockerfile.index(steps) < dockerfile.index("COPY app/")


def test_pip_gets_the_ca_bundle_from_a_build_secret_and_the_mirror_from_build_args(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)

    steps = instructions(dockerfile_of(context))
    assert {("ARG", "PIP_INDEX_URL"), ("ARG", "PIP_EXTRA_INDEX_URL"), ("ARG", "PIP_TRUSTED_HOST")} <= set(steps)
    install = next(run for keyword, run in steps if keyword == "RUN" and "pip install" in run)
    assert install.startswith("--mount=type=secret,id=pip-ca ")


# --- keys ------------------------------------------------------------------------------------------------


def test_auth_keys_are_never_written_into_the_context(tmp_path, app, registry, wheel):
    env = {"MLSCORE_AUTH_KEYS": KEYS, "MLSCORE_MAX_QUEUE_WAIT_MS": "250"}

    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel, env=env)

    for path in context.path.rglob("*"):
        if path.is_file():
            assert b"primary-key" not in path.read_bytes(), path
    assert "MLSCORE_AUTH_KEYS" not in dockerfile_of(context)
    assert env_of(dockerfile_of(context))["MLSCORE_MAX_QUEUE_WAIT_MS"] == "250"
    assert "primary-key" not in repr(context)


def test_run_command_names_the_key_variable_and_run_passes_its_value(tmp_path, app, registry, wheel, monkeypatch):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel, env={"MLSCORE_AUTH_KEYS": KEYS})
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        calls.append((command, kwargs["env"]))
        return subprocess.CompletedProcess(command, 0, "abc123\n", "")

    monkeypatch.setattr(image.subprocess, "run", fake_run)
    container = image.run(context, "podman", 8080, "churn")

    command, env = calls[0]
    assert container == "abc123"
    assert command == ["podman", "run", "--detach", "--name", "churn", "--publish", "8080:5001",
                       "--env", "MLSCORE_AUTH_KEYS", context.image]
    assert env["MLSCORE_AUTH_KEYS"] == KEYS


def test_tls_files_are_mounted_read_only_at_run_time_never_copied_into_the_context(tmp_path, app, registry, wheel):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("CERTIFICATE")
    key.write_text("PRIVATE KEY MATERIAL")
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)
    context = dataclasses.replace(context, tls=(cert, key))

    command = context.run_command("podman", 8443, "churn")
    assert command[command.index(f"{cert}:/etc/mlscore/tls/cert.pem:ro") - 1] == "--volume"
    assert command[command.index(f"{key}:/etc/mlscore/tls/key.pem:ro") - 1] == "--volume"
    assert "MLSCORE_SSL_CERT=/etc/mlscore/tls/cert.pem" in command and "MLSCORE_SSL_KEY=/etc/mlscore/tls/key.pem" in command
    assert command[-1] == context.image
    for path in context.path.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY MATERIAL" not in path.read_bytes(), path
    assert "MLSCORE_SSL" not in dockerfile_of(context)


def test_wait_ready_probes_https_without_checking_the_certificate(monkeypatch):
    seen: list[Any] = []

    class Answer:
        status = 200

        def __enter__(self) -> "Answer":
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

    def fake_urlopen(url: str, timeout: float, context: Any = None) -> Answer:
        seen.append((url, context))
        return Answer()

    monkeypatch.setattr(image.urllib.request, "urlopen", fake_urlopen)
    assert image.wait_ready("podman", "abc123", "https://127.0.0.1:9", lambda line: None) is True
    [(url, context)] = seen
    assert url == "https://127.0.0.1:9/health/ready"
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


# --- rewriting, tags, engines ------------------------------------------------------------------------------


def test_tag_is_the_same_for_the_same_inputs_and_changes_with_the_app(tmp_path, app, registry, wheel):
    models = [model(registry, tmp_path)]
    first = write(tmp_path, config(tmp_path), models, wheel)
    again = write(tmp_path, config(tmp_path), models, wheel)
    (app / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return 2\n")
    changed = write(tmp_path, config(tmp_path), models, wheel)

    assert first.image == again.image != changed.image


def test_a_non_empty_folder_that_holds_no_context_is_refused(tmp_path, app, registry, wheel):
    (tmp_path / "context").mkdir()
    (tmp_path / "context" / "notes.txt").write_text("mine")

    with pytest.raises(ValueError, match="not empty"):
        write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel)
    assert (tmp_path / "context" / "notes.txt").read_text() == "mine"


def test_entry_script_outside_the_source_directory_is_refused(tmp_path, app, registry, wheel):
    (tmp_path / "elsewhere.py").write_text("")

    with pytest.raises(ValueError, match="outside sourceDirectory"):
        write(tmp_path, config(tmp_path, entryScript="../elsewhere.py"), [model(registry, tmp_path)], wheel)


def test_config_without_a_folder_to_resolve_paths_is_refused(tmp_path, registry, wheel):
    with pytest.raises(ValueError, match="unresolved"):
        write(tmp_path, load_inference_config({"entryScript": "score.py"}), [], wheel)


def test_commands_to_show_build_the_context_and_run_it_without_showing_keys(tmp_path, app, registry, wheel):
    context = write(tmp_path, config(tmp_path), [model(registry, tmp_path)], wheel, env={"MLSCORE_AUTH_KEYS": KEYS})

    assert context.build_command_text() == f"docker build --tag {context.image} {context.path}"
    shown = context.run_command_text(8080)
    assert shown.startswith(f"docker run --detach --name mlscore-churn --publish 8080:5001 --env MLSCORE_AUTH_KEYS "
                            f"{context.image}")
    assert "MLSCORE_AUTH_KEYS set to the service's keys" in shown and "primary-key" not in shown


def test_wait_ready_gives_up_when_the_container_has_stopped(monkeypatch):
    monkeypatch.setattr(image.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, 0, "false\n", ""))
    said: list[str] = []

    assert image.wait_ready("podman", "abc123", "http://127.0.0.1:9", said.append, timeout=30) is False
    assert said == ["waiting for http://127.0.0.1:9/health/ready"]


@pytest.mark.parametrize("status", [0, 3])
def test_build_output_reaches_a_stderr_that_has_no_file_descriptor(tmp_path, monkeypatch, status):
    engine = tmp_path / "engine"
    engine.write_text(f"#!/bin/sh\necho \"STEP 1/9: $1 $2 $3\"\necho to-stderr >&2\nexit {status}\n")
    engine.chmod(0o755)
    captured = io.StringIO()  # as under pytest's sys capture: fileno() raises
    monkeypatch.setattr(sys, "stderr", captured)
    context = BuildContext(tmp_path, "churn", "mlscore-churn:abc", False, {})

    if status:
        with pytest.raises(image.ImageError, match="failed \\(exit 3\\)"):
            image.build(context, str(engine))
    else:
        image.build(context, str(engine))

    assert captured.getvalue() == "STEP 1/9: build --tag mlscore-churn:abc\nto-stderr\n"


def test_find_engine_passes_over_a_docker_client_without_a_daemon(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name: f"/usr/bin/{name}")
    answers = {"docker": 1, "podman": 0}
    monkeypatch.setattr(image.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, answers[command[0]], b"", b""))

    assert find_engine() == "podman"


def test_find_engine_is_none_when_no_engine_answers(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name: None)

    assert find_engine() is None


# --- the top-level runtime Dockerfile ------------------------------------------------------------------


def test_runtime_dockerfile_builds_on_python_slim_and_serves_the_app_root_as_non_root():
    steps = instructions((ROOT / "Dockerfile").read_text())

    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    users = [arguments for keyword, arguments in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "5001") in steps
    healthcheck = next(arguments for keyword, arguments in steps if keyword == "HEALTHCHECK")
    assert "/health/live" in healthcheck
    command = json.loads(next(arguments for keyword, arguments in steps if keyword == "CMD"))
    assert command[:2] == ["mlscore", "serve"] and command[command.index("--host") + 1] == "0.0.0.0"
    assert ("WORKDIR", "/var/azureml-app") in steps
    assert any(keyword == "ENV" and "AML_APP_ROOT=/var/azureml-app" in arguments for keyword, arguments in steps)
    assert ("COPY", ". /src") in steps
    assert any(keyword == "RUN" and "pip install" in arguments and "/src" in arguments for keyword, arguments in steps)


def test_runtime_dockerignore_keeps_the_virtualenv_and_built_models_out():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()

    assert {".git", ".venv", "benchmarks/.work", "examples/*/models"} <= set(ignored)


def test_service_name_that_cannot_name_an_image_is_refused(tmp_path, app, registry, wheel):
    with pytest.raises(ValueError, match="cannot name an image"):
        write_build_context(tmp_path / "context", "Churn Model", config(tmp_path), [], {}, wheel=wheel)
    assert not (tmp_path / "context").exists()
