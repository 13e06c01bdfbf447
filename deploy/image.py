"""A service's container image: the Docker build context made from its inference config, and the
engine (docker or podman, whichever works here) that builds and runs it.

The context holds a self-contained Dockerfile: FROM the config's base image, a virtual environment
with mlscore (a wheel of this checkout, so no package index needs to know mlscore) and the conda
file's packages (pip requirements, as `dependencies` translates them), the extra Docker steps, the
app files and the models as Azure lays them out.
Auth keys are never written into it: they reach the container at run time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shlex
import ssl
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlscore.deploy.configs import SERVER_ENV, InferenceConfig
from mlscore.deploy.dependencies import Requirements, conda_requirements
from mlscore.deploy.layout import MODELS_FOLDER, lay_out_models, model_dir_within
from mlscore.deploy.registry import ModelVersion

APP_ROOT = PurePosixPath("/var/azureml-app")  # as on Azure: the app, and azureml-models beside it
CONTAINER_PORT = 5001
RUN_AS_USER = 1000  # numeric, so that Kubernetes' runAsNonRoot can check it
DEFAULT_BASE_IMAGE = "python:3.11-slim"
# onnxruntime-gpu on PyPI is built for CUDA 12 and cuDNN 9; this base carries both. cudaVersion is
# not used: Azure's default (9.1) and anything before CUDA 12 could not run that build.
GPU_BASE_IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
ENGINES = ("docker", "podman")
RUN_TIME_ONLY = frozenset({SERVER_ENV["auth_keys"]})  # secrets: given to `run`, never baked into a layer
COLLECT_DATA_ENV = SERVER_ENV["collect_data"]  # dataCollection: the folder in the container, made a volume
TLS_DIR = PurePosixPath("/etc/mlscore/tls")  # sslEnabled: the certificate and key, mounted read-only at run time
READY_TIMEOUT_S = 310.0  # Azure's initialDelaySeconds: how long a service's init() may take to be ready
READY_POLL_S = 0.5
MARKER = ".mlscore-build-context"  # lets a later write replace a context, and nothing else

_JUNK = (".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv", "venv", ".pytest_cache", ".mypy_cache",
         ".ipynb_checkpoints", ".DS_Store")
_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest a zip can say: the same sources give the same wheel


class ImageError(RuntimeError):
    """An engine command failed; the message names the command and carries the end of its output."""


@dataclass(frozen=True)
class BuildContext:
    """A written build context and what it takes to build and run its image."""

    path: Path
    service: str
    image: str  # mlscore-<service>:<digest of the context>, so an unchanged service keeps its tag
    gpu: bool
    run_env: Mapping[str, str] = field(repr=False)  # given to the container when it starts: the keys
    data_dir: str | None = None  # dataCollection's folder in the container: a named volume there keeps the data
    tls: tuple[Path, Path] | None = None  # sslEnabled: the certificate and key files here, never in the image

    def build_command(self, engine: str = "docker") -> list[str]:
        return [engine, "build", "--tag", self.image, str(self.path)]

    def run_command(self, engine: str, port: int, name: str) -> list[str]:
        """`--env NAME` without a value takes the value from the engine command's environment, so the
        command can be shown without showing a key."""
        command = [engine, "run", "--detach", "--name", name, "--publish", f"{port}:{CONTAINER_PORT}"]
        for key in sorted(self.run_env):
            command += ["--env", key]
        if self.data_dir is not None:  # kept across updates, which replace the container
            command += ["--volume", f"mlscore-{self.service}-model-data:{self.data_dir}"]
        if self.tls is not None:
            for path, inside, env in zip(self.tls, (TLS_DIR / "cert.pem", TLS_DIR / "key.pem"),
                                         (SERVER_ENV["ssl_cert"], SERVER_ENV["ssl_key"])):
                command += ["--volume", f"{path}:{inside}:ro", "--env", f"{env}={inside}"]
        if self.gpu:
            command += ["--gpus", "all"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
        return [*command, self.image]

    def build_command_text(self, engine: str = "docker") -> str:
        return shlex.join(self.build_command(engine))

    def run_command_text(self, port: int, engine: str = "docker") -> str:
        """The run command to show, container `mlscore-<service>`; says which variables to set first."""
        text = shlex.join(self.run_command(engine, port, f"mlscore-{self.service}"))
        if not self.run_env:
            return text
        return f"{text}  # with {', '.join(sorted(self.run_env))} set to the service's keys"


# --- the build context ---------------------------------------------------------------------------------


def write_build_context(output: Path, service: str, inference: InferenceConfig, models: Sequence[ModelVersion],
                        env: Mapping[str, str], wheel: Path | None = None) -> BuildContext:
    """Write the build context of `service` into `output`, which must be empty, absent or an earlier
    context. `env` is the server's settings (`to_settings_env`); `wheel` a prebuilt mlscore wheel,
    else one is built from this checkout."""
    if inference.entry_script_path is None:
        raise ValueError("the inference config's paths are unresolved: load it from a file, or give base_dir")
    source = inference.source_directory_path or inference.entry_script_path.parent
    try:
        entry_script = inference.entry_script_path.relative_to(source)
    except ValueError:
        raise ValueError(f"entryScript {inference.entry_script_path} is outside sourceDirectory {source}") from None
    if not _IMAGE_NAME.fullmatch(service):
        raise ValueError(f"service name {service!r} cannot name an image: use lowercase letters, digits, '.', '_', '-'")
    requirements = conda_requirements(inference.conda_file_path)
    extra_steps = (inference.extra_docker_file_steps_path.read_text(encoding="utf-8")
                   if inference.extra_docker_file_steps_path else None)
    output = Path(output).resolve()
    _prepare_output(output)
    (output / MARKER).write_text(f"{service}\n", encoding="utf-8")  # first, so a half-written context is replaceable

    _copy_app(source, output / "app", skip=output)
    model_dir: PurePosixPath | None = None
    if models:
        lay_out_models(models, output)
        model_dir = APP_ROOT / model_dir_within(models)
    wheel_name = _place_wheel(wheel, output / "wheels")
    (output / "requirements.txt").write_text("".join(f"{line}\n" for line in requirements.pip), encoding="utf-8")

    image_env = {key: value for key, value in env.items() if key not in RUN_TIME_ONLY}
    image_env |= {
        SERVER_ENV["app_root"]: str(APP_ROOT),
        SERVER_ENV["entry_script"]: entry_script.as_posix(),
        SERVER_ENV["port"]: str(CONTAINER_PORT),
    }
    if model_dir is not None:
        image_env[SERVER_ENV["model_dir"]] = str(model_dir)
    dockerfile = _dockerfile(
        service=service,
        base_image=_base_image(inference),
        wheel_name=wheel_name,
        requirements=requirements,
        extra_steps=extra_steps,
        extra_steps_source=inference.extra_docker_file_steps,
        has_models=bool(models),
        gpu=inference.enable_gpu,
        image_env=image_env,
    )
    (output / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    (output / ".dockerignore").write_text("".join(f"**/{pattern}\n" for pattern in _JUNK), encoding="utf-8")
    _make_readable(output)
    run_env = {key: value for key, value in env.items() if key in RUN_TIME_ONLY}
    return BuildContext(output, service, f"mlscore-{service}:{_digest(output)[:12]}", inference.enable_gpu, run_env,
                        image_env.get(COLLECT_DATA_ENV))


def _base_image(inference: InferenceConfig) -> str:
    """baseImage (behind baseImageRegistry when given), else the CUDA base with enableGpu, else python's."""
    if inference.base_image is None:
        return GPU_BASE_IMAGE if inference.enable_gpu else DEFAULT_BASE_IMAGE
    registry = (inference.base_image_registry or "").rstrip("/")
    if not registry or inference.base_image.startswith(registry + "/"):
        return inference.base_image
    return f"{registry}/{inference.base_image}"


def _dockerfile(*, service: str, base_image: str, wheel_name: str, requirements: Requirements,
                extra_steps: str | None, extra_steps_source: str | None, has_models: bool, gpu: bool,
                image_env: Mapping[str, str]) -> str:
    """The context's Dockerfile. Slow-changing steps come first, so editing the app rebuilds little."""
    pip_ca = ('--mount=type=secret,id=pip-ca \\\n'
              '    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \\\n    && ')
    lines = [
        f"# Generated by mlscore for the service {service}. Build it here: docker build --tag mlscore-{service} .",
        "# Behind a proxy that re-signs TLS, give pip its CA bundle as the build secret `pip-ca`",
        "# (--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt); no layer keeps it.",
        f"FROM {base_image}",
        "ARG PIP_INDEX_URL",
        "ARG PIP_EXTRA_INDEX_URL",
        "ARG PIP_TRUSTED_HOST",
        "ENV VIRTUAL_ENV=/opt/mlscore PATH=/opt/mlscore/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
        "USER root",
        "# A virtual environment works the same on every base; python3 and venv come from apt where missing.",
        "RUN python3 -m venv /opt/mlscore 2>/dev/null || { apt-get update \\",
        "    && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends python3 python3-venv \\",
        "    && rm -rf /var/lib/apt/lists/* && python3 -m venv --clear /opt/mlscore; } \\",
        f"    && (getent passwd {RUN_AS_USER} >/dev/null"
        f" || useradd --uid {RUN_AS_USER} --create-home --shell /usr/sbin/nologin mlscore)",
        *_conda_comment(requirements),
        "COPY wheels/ requirements.txt /tmp/mlscore-build/",
        f"RUN {pip_ca}pip install --no-cache-dir --disable-pip-version-check /tmp/mlscore-build/{wheel_name}"
        " --requirement /tmp/mlscore-build/requirements.txt \\\n    && rm -rf /tmp/mlscore-build",
    ]
    if gpu:
        lines += [
            "# enableGpu: onnxruntime's CUDA build in place of the CPU one (both install the same module).",
            f"RUN {pip_ca}pip uninstall --yes onnxruntime"
            " && pip install --no-cache-dir --disable-pip-version-check onnxruntime-gpu",
        ]
    if extra_steps is not None:
        lines += [f"# extraDockerFileSteps ({extra_steps_source}), as written:", extra_steps.rstrip("\n")]
    lines.append(f"COPY app/ {APP_ROOT}/")
    if has_models:
        lines.append(f"COPY {MODELS_FOLDER}/ {APP_ROOT / MODELS_FOLDER}/")
    data_dir = image_env.get(COLLECT_DATA_ENV)
    if data_dir is not None:
        lines += ["# dataCollection: model data goes to this folder, a volume (owned by the server's user)",
                  f"RUN mkdir -p {shlex.quote(data_dir)} && chown {RUN_AS_USER}:{RUN_AS_USER} {shlex.quote(data_dir)}",
                  f"VOLUME {json.dumps([data_dir])}"]
    lines += [
        "ENV " + " \\\n    ".join(f"{key}={_quoted(value)}" for key, value in sorted(image_env.items())),
        f"WORKDIR {APP_ROOT}",
        f"USER {RUN_AS_USER}",
        f"EXPOSE {CONTAINER_PORT}",
        "HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \\",
        '    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(\'http://127.0.0.1:\' + '
        "os.environ.get('MLSCORE_PORT', '5001') + '/health/live', timeout=2)\"]",
        'CMD ["mlscore", "serve", "--host", "0.0.0.0"]',
    ]
    return "\n".join(lines) + "\n"


def _conda_comment(requirements: Requirements) -> list[str]:
    lines = [f"# condaFile: {spec} -> pip {requirement}" for spec, requirement in requirements.mapped]
    lines += [f"# condaFile: {spec} skipped: {why}" for spec, why in requirements.skipped]
    if requirements.channels:
        lines.append(f"# condaFile: channels {', '.join(requirements.channels)} not used: packages come from pip")
    return lines


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _prepare_output(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        if not (output / MARKER).is_file():
            raise ValueError(f"{output} is not empty and holds no earlier build context: give an empty folder")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def _copy_app(source: Path, target: Path, skip: Path) -> None:
    """Copy the app's folder without version-control, cache and virtual-environment folders, nor the
    build context itself when it is written inside the app."""
    junk = shutil.ignore_patterns(*_JUNK)

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(junk(folder, names)) | {name for name in names if Path(folder, name).resolve() == skip}

    shutil.copytree(source, target, ignore=ignore)


def _place_wheel(wheel: Path | None, into: Path) -> str:
    into.mkdir()
    if wheel is None:
        return build_mlscore_wheel(into).name
    shutil.copy2(wheel, into / wheel.name)
    return wheel.name


def build_mlscore_wheel(into: Path) -> Path:
    """A wheel of the mlscore checkout this module runs from, built into `into` (pip and setuptools,
    fetched by pip as the build needs). The checkout is copied first, so a build leaves it untouched."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "pyproject.toml").is_file():
        raise ImageError(f"mlscore at {checkout} is not a source checkout (no pyproject.toml): pass a wheel")
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlscore-wheel-") as scratch:
        source = Path(scratch, "mlscore")
        shutil.copytree(checkout, source, ignore=shutil.ignore_patterns(
            *_JUNK, "*.egg-info", "build", "dist", "models", ".work", ".whl"))
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(into), str(source)]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH})
    if done.returncode != 0:
        raise ImageError(f"building the mlscore wheel failed: {_tail(done.stderr or done.stdout)}")
    return next(into.glob("mlscore-*.whl"))


def _make_readable(folder: Path) -> None:
    """Files are copied with their modes; the image's non-root user must be able to read every one."""
    for current, _, names in os.walk(folder):
        os.chmod(current, os.stat(current).st_mode | 0o555)
        for name in names:
            path = Path(current, name)
            os.chmod(path, path.stat().st_mode | 0o444)


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MARKER):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --- the engine -----------------------------------------------------------------------------------------


def find_engine() -> str | None:
    """docker or podman, the first whose `info` answers (a docker client without a daemon does not)."""
    for engine in ENGINES:
        if shutil.which(engine) is None:
            continue
        try:
            done = subprocess.run([engine, "info"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return engine
    return None


def build(context: BuildContext, engine: str, extra_args: Sequence[str] = ()) -> None:
    """Build the context's image; the engine's progress goes to stderr. `extra_args` are the engine's
    own build flags (`--secret id=pip-ca,src=…`, `--build-arg PIP_INDEX_URL=…`)."""
    command = context.build_command(engine)
    command[-1:-1] = extra_args
    returncode = _run_to_stderr(command)
    if returncode != 0:
        raise ImageError(f"{shlex.join(command)} failed (exit {returncode}); its output is above")


def _run_to_stderr(command: list[str]) -> int:
    """Run `command` with its output on stderr as it comes: straight to the file descriptor, or copied
    line by line where stderr has none (captured in memory, as pytest's sys capture does)."""
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        descriptor = None
    if descriptor is not None:
        return subprocess.run(command, stdout=descriptor, stderr=subprocess.STDOUT).returncode
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
        for line in process.stdout:
            sys.stderr.write(line)
    return process.returncode


def run(context: BuildContext, engine: str, port: int, name: str) -> str:
    """Start the image as container `name`, published on `port`; the container's id."""
    command = context.run_command(engine, port, name)
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **context.run_env})
    if done.returncode != 0:
        raise ImageError(f"{shlex.join(command)} failed (exit {done.returncode}): {_tail(done.stderr)}")
    return done.stdout.strip()


def wait_ready(engine: str, container: str, uri: str, progress: Callable[[str], Any],
               timeout: float = READY_TIMEOUT_S) -> bool:
    """Wait until `uri`/health/ready answers 200; False when the container stops or `timeout` passes."""
    progress(f"waiting for {uri}/health/ready")
    # The probe asks the container just started, on loopback, whose certificate names the service's
    # public host: it checks readiness, not identity.
    context = _unverified_tls() if uri.startswith("https:") else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health/ready", timeout=2, context=context) as response:
                if response.status == 200:
                    return True
        except (OSError, http.client.HTTPException):
            pass  # not listening yet, or 503 while init() runs
        if not _running(engine, container):
            return False
        time.sleep(READY_POLL_S)
    return False


def _unverified_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def logs(engine: str, container: str, lines: int) -> str:
    """The container's last `lines` lines of output."""
    done = subprocess.run([engine, "logs", "--tail", str(lines), container], capture_output=True, text=True)
    return (done.stdout + done.stderr).rstrip()


def remove(engine: str, name: str) -> None:
    """Stop and remove container `name` (a name or an id); one that is not there is fine."""
    subprocess.run([engine, "rm", "--force", name], capture_output=True)


def _running(engine: str, container: str) -> bool:
    done = subprocess.run([engine, "inspect", "--format", "{{.State.Running}}", container],
                          capture_output=True, text=True)
    return done.stdout.strip() == "true"


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
