"""Images built and run for real with podman: the top-level runtime Dockerfile, and examples/diabetes
deployed to the aci target with its own environment, each scoring through the container.

No registry is assumed reachable, so the base is made here: Debian bookworm with python3 by
debootstrap from the host's Debian mirror (cached as a tarball under ~/.cache/mlscore), then
`podman import`. pip inside the builds gets the host's http(s) package index settings as build
arguments and its CA bundle as the build secret `pip-ca`. Slow and opt-in: `make test-slow`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlscore.deploy import image, service
from mlscore.deploy.configs import load_deployment_config, load_inference_config
from mlscore.deploy.registry import Registry, RegistryError

ROOT = Path(__file__).resolve().parent.parent
DIABETES = ROOT / "examples" / "diabetes"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mlscore"
BASE_TARBALL = CACHE / "debian-bookworm-python3.tar"
BASE_IMAGE = "localhost/mlscore-test-base:bookworm"
RUNTIME_IMAGE = "localhost/mlscore-test-runtime:latest"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
READY_TIMEOUT_S = 120
BUILD_TIMEOUT_S = 1800
SAMPLE = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (rootful podman and debootstrap)"
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y podman runc debootstrap)"
    return None


_CANNOT = _why_not()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600), pytest.mark.skipif(_CANNOT is not None, reason=str(_CANNOT))]


# --- podman here ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def podman_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """podman's settings for these tests: ulimits that a VM without CAP_SYS_RESOURCE can set, and runc
    where it is installed; podman and deploy.image's engine commands both inherit them."""
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    text = '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
    if shutil.which("runc"):
        text += '[engine]\nruntime = "runc"\n'
    conf.write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTAINERS_CONF", str(conf))
        yield


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def base_image() -> str:
    """Debian bookworm with python3 and its venv module, imported into podman once and cached."""
    if podman("image", "exists", BASE_IMAGE).returncode == 0:
        return BASE_IMAGE
    if not BASE_TARBALL.is_file():
        _debootstrap(BASE_TARBALL)
    imported = podman("import", str(BASE_TARBALL), BASE_IMAGE, timeout=600)
    assert imported.returncode == 0, imported.stderr
    return BASE_IMAGE


def _debootstrap(tarball: Path) -> None:
    tarball.parent.mkdir(parents=True, exist_ok=True)
    root = tarball.parent / "bookworm-root"
    shutil.rmtree(root, ignore_errors=True)
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(root), _debian_mirror()],
        capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):  # 90 MB the image does not need
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
    partial.rename(tarball)
    shutil.rmtree(root, ignore_errors=True)


def _debian_mirror() -> str:
    """The host's Debian mirror, from its apt sources (deb822 or one-line), else deb.debian.org."""
    sources = sorted(Path("/etc/apt").glob("sources.list.d/*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w+):\s*(.+)$", stanza, re.MULTILINE))
            if "bookworm" in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt").glob("sources.list.d/*.list"))]:
        if path.is_file():
            match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", path.read_text(), re.MULTILINE)
            if match:
                return match.group(1)
    return DEFAULT_MIRROR


def _pip_build_args() -> list[str]:
    """The host's package index settings (http and https ones: file:// paths are not in the build) as
    build arguments, and its CA bundle as the build secret `pip-ca`."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    config = {key.split(".", 1)[1]: value.strip("'\"") for key, _, value in
              (line.partition("=") for line in listed.splitlines()) if "." in key}
    args: list[str] = []
    for key, arg in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                     ("trusted-host", "PIP_TRUSTED_HOST")):
        values = (os.environ.get(arg) or config.get(key) or "").split()
        usable = [value for value in values if key == "trusted-host" or value.startswith(("http://", "https://"))]
        if usable:
            args += ["--build-arg", f"{arg}={' '.join(usable)}"]
    bundles = [os.environ.get("PIP_CERT"), config.get("cert"), os.environ.get("SSL_CERT_FILE"), *CA_BUNDLES]
    bundle = next((path for path in bundles if path and Path(path).is_file()), None)
    if bundle:
        args += ["--secret", f"id=pip-ca,src={bundle}"]
    return args


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(name: str, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        if state != "true":
            break
        time.sleep(0.5)
    logs = podman("logs", name)
    raise AssertionError(f"{name} not ready at {url}:\n{logs.stdout[-4000:]}{logs.stderr[-4000:]}")


@pytest.fixture
def built_images() -> Iterator[list[str]]:
    """Images a test builds, removed after it: each is most of a gigabyte, and a rebuild starts from
    the checkout anyway."""
    images: list[str] = []
    yield images
    for tag in images:
        podman("rmi", "--force", tag)


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"mlscore-test-{os.getpid()}-{time.monotonic_ns()}"
    yield name
    image.remove("podman", name)


@pytest.fixture
def deployed_here(tmp_path: Path) -> Iterator[tuple[Registry, str]]:
    """A registry and a service name; the service's container and image are removed after the test."""
    registry, name = Registry(tmp_path / "registry"), f"diabetes-test-{os.getpid()}"
    yield registry, name
    image.remove("podman", f"mlscore-{name}")
    try:
        podman("rmi", "--force", registry.get_service(name).details["image"])
    except (RegistryError, KeyError):
        pass  # never recorded, or recorded without an image


def _predictions(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list) and body and all(isinstance(value, float) for value in body), body
    return body


# --- the tests -------------------------------------------------------------------------------------------


def test_runtime_image_from_the_top_level_dockerfile_scores_the_diabetes_example(
        base_image, built_images, container_name):
    built_images.append(RUNTIME_IMAGE)
    built = subprocess.run(
        ["podman", "build", "--format", "docker", "--isolation", "chroot", "--tag", RUNTIME_IMAGE,
         "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", "MLSCORE_EXTRAS=examples",
         *_pip_build_args(), "--file", str(ROOT / "Dockerfile"), str(ROOT)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, built.stdout[-6000:] + built.stderr[-3000:]
    port = _free_port()

    started = podman("run", "--detach", "--name", container_name,
                     "--publish", f"127.0.0.1:{port}:5001",
                     "--volume", f"{DIABETES}:/var/azureml-app:ro",
                     "--env", "AZUREML_MODEL_DIR=/var/azureml-app/models", RUNTIME_IMAGE)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    _wait_ready(container_name, url)

    assert len(_predictions(httpx.post(f"{url}/score", json=SAMPLE, timeout=30))) == 1
    assert podman("exec", container_name, "id", "-u").stdout.strip() == "1000"
    assert podman("healthcheck", "run", container_name).returncode == 0


def test_the_diabetes_example_deploys_with_its_own_environment_to_an_image_that_scores_with_a_key(
        base_image, deployed_here, tmp_path, monkeypatch):
    """`mlscore deploy` of examples/diabetes as its inferenceconfig.json gives it (environment.yml with
    joblib and scikit-learn as its condaFile), on the aci target with podman: the image has what
    score.py and the pickled model need, so init() loads it and /score answers."""
    registry, name = deployed_here
    inference = dataclasses.replace(load_inference_config(DIABETES / "inferenceconfig.json"), base_image=base_image)
    registry.register("diabetes", DIABETES / "models" / "sklearn_regression_model.pkl")
    build = image.build
    monkeypatch.setattr(image, "find_engine", lambda: "podman")
    monkeypatch.setattr(image, "build", lambda context, engine: build(
        context, engine, ["--format", "docker", "--isolation", "chroot", *_pip_build_args()]))
    said: list[str] = []

    deployed = service.deploy(registry, name, ["diabetes:1"], inference,
                              load_deployment_config({"computeType": "aci", "authEnabled": True}),
                              output=tmp_path / "context", progress=said.append)

    assert deployed.record.state == "Healthy", "\n".join(said)
    assert not [line for line in said if line.startswith("warning:")], said  # the check found nothing missing
    assert (tmp_path / "context" / "requirements.txt").read_text().splitlines() == ["joblib>=1.3", "scikit-learn>=1.3"]
    url = deployed.scoring_uri
    assert httpx.post(url, json=SAMPLE, timeout=30).status_code == 401
    key = deployed.keys.primary_key
    scored = httpx.post(url, json=SAMPLE, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert len(_predictions(scored)) == 1
    inspected = podman("image", "inspect", "--format", "{{.Config.Env}}", deployed.details["image"]).stdout
    assert key not in inspected and "AZUREML_MODEL_DIR=/var/azureml-app/azureml-models/diabetes/1" in inspected
