"""A service name is checked before anything touches the disk or starts a process (issue 16, item 1):
`-n /some/dir`, `..` or `../../x` once wrote into that folder, the registry root or past it, and left
a server running that no `service` command could find."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlscore.deploy import service
from mlscore.deploy.configs import InferenceConfig, LocalConfig
from mlscore.deploy.registry import Registry

SCRIPT = "def init():\n    pass\n\ndef run(data):\n    return data\n"
RULE = "use 3 to 32 lowercase letters, digits or '-'"
BAD_NAMES = ["..", "../../x", "a/b", "", "a" * 33, "Fraud_API"]


def mlscore(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlscore", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "MLSCORE_HOME": str(home)})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Configs for a local deploy, and a registry holding model `m`."""
    (tmp_path / "score.py").write_text(SCRIPT)
    (tmp_path / "ic.json").write_text(json.dumps({"entryScript": "score.py"}))
    (tmp_path / "dc.json").write_text(json.dumps({"computeType": "local"}))
    (tmp_path / "model.txt").write_text("one")
    assert mlscore(tmp_path / "home", "model", "register", "-n", "m", "-p", str(tmp_path / "model.txt")).returncode == 0
    return tmp_path


def deploy(project: Path, name: str) -> subprocess.CompletedProcess[str]:
    return mlscore(project / "home", "deploy", "-n", name, "-m", "m", "--ic", str(project / "ic.json"),
                   "--dc", str(project / "dc.json"))


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under `folder` with its content (a link's target, a folder's marker); the registry's
    database files left out, since reading the registry may checkpoint them."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if relative.startswith("registry.db"):
            continue
        if path.is_symlink():
            found[relative] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[relative] = "<dir>"
        else:
            found[relative] = path.read_bytes()
    return found


def processes_mentioning(*folders: Path) -> list[str]:
    """Command lines of live processes naming any of `folders` (a service's host and server do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(str(folder) in command for folder in folders):
            found.append(command)
    return found


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], name: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlscore: error: invalid service name {name!r}: {RULE}"), lines
    assert done.stdout == ""


def assert_nothing_deployed(project: Path) -> None:
    listing = mlscore(project / "home", "service", "list", "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout) == []
    assert not (project / "home" / "services").exists()
    assert not (project / "home" / "build").exists()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_deploy_with_a_bad_name_exits_1_and_writes_nothing(project, name):
    home = project / "home"
    before = snapshot(home)

    done = deploy(project, name)

    assert_refused_in_one_line(done, name)
    assert snapshot(home) == before
    assert_nothing_deployed(project)
    assert processes_mentioning(home) == []
    assert not (project / "x").exists()  # `../../x` from home/services


def test_deploy_named_as_an_existing_folder_leaves_it_untouched(project, tmp_path_factory):
    target = tmp_path_factory.mktemp("someone-elses")
    (target / "generation-1").mkdir()
    (target / "generation-1" / "model.txt").write_text("theirs")
    (target / "state.json").write_text('{"theirs": true}')
    (target / "host.pid").write_text("1")
    before, home_before = snapshot(target), snapshot(project / "home")

    done = deploy(project, str(target))

    assert_refused_in_one_line(done, str(target))
    assert snapshot(target) == before
    assert snapshot(project / "home") == home_before
    assert_nothing_deployed(project)
    assert processes_mentioning(target, project / "home") == []


@pytest.mark.parametrize("command", [["show"], ["logs"], ["delete"], ["keys"], ["update", "-m", "m"]])
def test_service_commands_refuse_a_bad_name_before_reading_it(project, command):
    home = project / "home"
    before = snapshot(home)

    done = mlscore(home, "service", command[0], "../x", *command[1:])

    assert_refused_in_one_line(done, "../x")
    assert snapshot(home) == before


def test_python_api_refuses_a_bad_name(project):
    registry = Registry(project / "home")
    inference = InferenceConfig(entry_script="score.py", base_dir=project)

    with pytest.raises(service.DeployError, match=r"^invalid service name '\.\./x': use 3 to 32"):
        service.deploy(registry, "../x", ["m"], inference, LocalConfig(), progress=lambda line: None)
    with pytest.raises(service.DeployError, match=r"^invalid service name '\.\./x'"):
        service.get(registry, "../x")
    assert not (project / "home" / "services").exists() and not (project / "home" / "x").exists()
    assert processes_mentioning(project / "home") == []


def test_service_folder_refuses_a_link_out_of_the_registry(tmp_path):
    registry = Registry(tmp_path / "home")
    (registry.root / "services").mkdir()
    (registry.root / "services" / "fraud-api").symlink_to(tmp_path, target_is_directory=True)

    with pytest.raises(service.DeployError, match="would lie outside"):
        service.service_folder(registry, "services", "fraud-api")
    assert service.service_folder(registry, "services", "scoring-api") == registry.root / "services" / "scoring-api"
