"""The embedded model registry: versions, files, services that pin models, concurrency, crashes, the CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlscore.deploy import ModelVersion, Registry, RegistryError
from mlscore.deploy import registry as registry_module
from mlscore.deploy.model_cli import add_model_commands, run_model_command
from mlscore.scoring.model_path import get_model_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def registry(root: Path) -> Registry:
    return Registry(root)


def write_file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def model_folder(path: Path) -> Path:
    write_file(path / "config.json", b'{"layers": 2}')
    write_file(path / "weights" / "b.bin", b"\x01" * 3000)
    write_file(path / "weights" / "a.bin", b"\x00" * 5000)
    return path


def sha256_of(path: Path) -> str:
    """The digest as documented: a file's bytes, or a folder's sorted `<sha256>  <path>` manifest."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(file.relative_to(path).as_posix() for file in path.rglob("*") if file.is_file())
    manifest = "".join(f"{hashlib.sha256((path / file).read_bytes()).hexdigest()}  {file}\n" for file in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


def staging_entries(root: Path) -> list[Path]:
    return list((root / "tmp").iterdir())


# registering


def test_register_file_stores_a_copy_with_its_size_and_sha256(registry, root, tmp_path):
    source = write_file(tmp_path / "model.onnx", b"onnx bytes")

    model = registry.register("digits", source)

    assert (model.name, model.version, model.ref) == ("digits", 1, "digits:1")
    assert model.path == root / "models" / "digits" / "1" / "model.onnx"
    assert model.path.read_bytes() == b"onnx bytes"
    assert model.size_bytes == len(b"onnx bytes")
    assert model.sha256 == hashlib.sha256(b"onnx bytes").hexdigest()
    assert model.source_path == str(source)
    assert model.created_at.utcoffset().total_seconds() == 0
    assert registry.get("digits:1") == model
    assert len({model, registry.get("digits")}) == 1
    assert staging_entries(root) == []


def test_register_folder_keeps_its_tree_and_hashes_its_sorted_manifest(registry, root, tmp_path):
    source = model_folder(tmp_path / "bert")

    model = registry.register("bert", source)

    assert model.path == root / "models" / "bert" / "1" / "bert"
    assert (model.path / "weights" / "a.bin").read_bytes() == b"\x00" * 5000
    assert model.size_bytes == 13 + 3000 + 5000
    assert model.sha256 == sha256_of(source) == sha256_of(model.path)


def test_versions_count_up_per_name_independently(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")

    refs = [registry.register(name, source).ref for name in ("a", "a", "b", "a", "b")]

    assert refs == ["a:1", "a:2", "b:1", "a:3", "b:2"]


def test_tags_and_description_are_stored(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")

    registry.register("m", source, tags={"stage": "prod", "team": "fraud"}, description="first cut")

    model = registry.get("m")
    assert model.tags == {"stage": "prod", "team": "fraud"}
    assert model.description == "first cut"


def test_list_filters_by_name_and_by_tag(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("a", source, tags={"stage": "prod"})
    registry.register("a", source, tags={"stage": "dev"})
    registry.register("b", source, tags={"stage": "prod", "gpu": "yes"})

    assert [model.ref for model in registry.list()] == ["a:1", "a:2", "b:1"]
    assert [model.ref for model in registry.list(name="a")] == ["a:1", "a:2"]
    assert [model.ref for model in registry.list(tags={"stage": "prod"})] == ["a:1", "b:1"]
    assert [model.ref for model in registry.list(tags={"gpu": None})] == ["b:1"]
    assert [model.ref for model in registry.list(name="a", tags={"stage": "prod"})] == ["a:1"]
    assert registry.list(name="absent") == []


def test_bare_name_gets_the_latest_and_name_colon_version_that_version(registry, tmp_path):
    registry.register("m", write_file(tmp_path / "1" / "m.bin", b"one"))
    registry.register("m", write_file(tmp_path / "2" / "m.bin", b"two"))

    assert registry.get("m").version == 2
    assert registry.get("m:1").path.read_bytes() == b"one"


def test_model_path_is_what_the_server_resolves_from_the_registry_layout(registry, tmp_path):
    registry.register("m", write_file(tmp_path / "1" / "model.onnx", b"one"))
    registry.register("m", write_file(tmp_path / "2" / "model.onnx", b"two"))
    registry.register("bert", model_folder(tmp_path / "bert"))

    assert registry.model_path("m") == registry.models_dir / "m" / "2" / "model.onnx"
    assert registry.model_path("m", 1) == registry.models_dir / "m" / "1" / "model.onnx"
    for name, version in (("m", None), ("m", 1), ("bert", None)):
        assert str(registry.model_path(name, version)) == get_model_path(name, version, root=registry.models_dir)


# downloading


def test_download_copies_identical_content(registry, tmp_path):
    file_model = registry.register("m", write_file(tmp_path / "model.onnx", b"onnx bytes"))
    folder_model = registry.register("bert", model_folder(tmp_path / "bert"))
    target = tmp_path / "out"

    file_copy = registry.download("m", target)
    folder_copy = registry.download("bert:1", target)

    assert file_copy == target / "model.onnx" and sha256_of(file_copy) == file_model.sha256
    assert folder_copy == target / "bert" and sha256_of(folder_copy) == folder_model.sha256
    assert sorted(entry.name for entry in target.iterdir()) == ["bert", "model.onnx"]


def test_download_over_an_existing_copy_needs_exist_ok(registry, tmp_path):
    registry.register("bert", model_folder(tmp_path / "bert"))
    target = tmp_path / "out"
    registry.download("bert", target)
    write_file(target / "bert" / "stale.txt", b"old")

    with pytest.raises(RegistryError, match="already exists; pass exist_ok=True"):
        registry.download("bert", target)
    registry.download("bert", target, exist_ok=True)

    assert not (target / "bert" / "stale.txt").exists()


def test_download_refuses_a_damaged_stored_copy(registry, tmp_path):
    model = registry.register("m", write_file(tmp_path / "model.onnx", b"onnx bytes"))
    model.path.write_bytes(b"tampered")

    with pytest.raises(RegistryError, match="no longer match their recorded sha256"):
        registry.download("m", tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


# deleting


def test_delete_one_version_removes_its_row_and_files_and_its_number_is_not_reused(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("m", source)
    second = registry.register("m", source)

    assert registry.delete("m:2") == second

    assert [model.ref for model in registry.list()] == ["m:1"]
    assert not second.path.parent.exists()
    assert registry.register("m", source).version == 3


def test_delete_all_versions_removes_the_model(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("m", source)
    registry.register("m", source)
    registry.register("other", source)

    deleted = registry.delete_all_versions("m")

    assert [model.ref for model in deleted] == ["m:1", "m:2"]
    assert [model.ref for model in registry.list()] == ["other:1"]
    assert not (registry.models_dir / "m").exists()


def test_delete_of_a_bare_name_is_refused_rather_than_guessed(registry, tmp_path):
    registry.register("m", write_file(tmp_path / "m.bin", b"x"))

    with pytest.raises(RegistryError, match=r"delete needs a version: m:VERSION .* delete_all_versions\('m'\)"):
        registry.delete("m")
    assert registry.get("m:1")


def test_delete_is_refused_while_a_recorded_service_uses_the_version(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("m", source)
    registry.register("m", source)
    registry.record_service("fraud-api", ["m:1"], "local", "Healthy", {"port": 32001})

    with pytest.raises(RegistryError, match=r"cannot delete m:1: it is used by service\(s\) fraud-api \(uses m:1\)"):
        registry.delete("m:1")
    with pytest.raises(RegistryError, match="fraud-api"):
        registry.delete_all_versions("m")
    registry.delete("m:2")  # not used: allowed

    registry.remove_service("fraud-api")
    registry.delete("m:1")
    assert registry.list() == []


# services


def test_record_service_pins_a_bare_name_to_the_latest_version(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("m", source)
    registry.register("m", source)
    registry.register("encoder", source)

    service = registry.record_service("fraud-api", ["m", "encoder:1"], "docker", "Transitioning",
                                      {"port": 32001, "keys": ["k1", "k2"]})

    assert service.models == ("encoder:1", "m:2")
    assert (service.compute_type, service.state, service.details) == ("docker", "Transitioning",
                                                                      {"port": 32001, "keys": ["k1", "k2"]})
    assert registry.get_service("fraud-api") == service
    assert registry.services_using("m:2") == ["fraud-api"]
    assert registry.services_using("m:1") == []
    assert registry.services_using("m") == ["fraud-api"]


def test_record_service_again_replaces_its_state_and_models(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("m", source)
    registry.register("m", source)
    first = registry.record_service("fraud-api", ["m:1"], "local", "Transitioning")

    second = registry.record_service("fraud-api", ["m:2"], "local", "Healthy", {"port": 1})

    assert second.models == ("m:2",) and second.state == "Healthy"
    assert second.created_at == first.created_at
    assert [service.name for service in registry.list_services()] == ["fraud-api"]
    registry.delete("m:1")


def test_record_service_refuses_unknown_models_and_bad_names(registry, tmp_path):
    registry.register("m", write_file(tmp_path / "m.bin", b"x"))

    with pytest.raises(RegistryError, match="model 'm' has no version 7; its versions: 1"):
        registry.record_service("fraud-api", ["m:7"], "local", "Healthy")
    with pytest.raises(RegistryError, match="invalid service name 'Fraud_API': use 3 to 32 lowercase letters"):
        registry.record_service("Fraud_API", ["m"], "local", "Healthy")
    with pytest.raises(RegistryError, match="must be JSON-serialisable"):
        registry.record_service("fraud-api", ["m"], "local", "Healthy", {"when": object()})
    assert registry.list_services() == []


def test_unknown_service_lists_the_recorded_ones(registry, tmp_path):
    registry.register("m", write_file(tmp_path / "m.bin", b"x"))
    registry.record_service("fraud-api", ["m"], "local", "Healthy")

    with pytest.raises(RegistryError, match=r"no service named 'other-api' .* recorded: fraud-api"):
        registry.remove_service("other-api")


# validation and errors


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "has space", "a/b", "ü", "x" * 256, "a:b"])
def test_invalid_model_names_are_rejected_naming_the_rule(registry, tmp_path, name):
    source = write_file(tmp_path / "m.bin", b"x")

    with pytest.raises(RegistryError, match=r"use 1 to 255 letters, digits, '-', '_' or '.', starting with a letter"):
        registry.register(name, source)


def test_valid_model_names_include_dots_dashes_underscores_and_255_characters(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")

    for name in ("sklearn_mnist.v2-final", "0model", "a" * 255):
        assert registry.register(name, source).name == name


def test_a_name_differing_from_a_registered_one_only_in_case_is_refused(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("digits", source)

    with pytest.raises(RegistryError, match="'Digits' differs from the registered 'digits' only in case"):
        registry.register("Digits", source)
    registry.delete_all_versions("digits")
    assert registry.register("Digits", source).ref == "Digits:1"


@pytest.mark.parametrize("ref", ["m:", "m:0", "m:-1", "m:latest", "m:1:2", "m:01", "m:9223372036854775808",
                                 "m:99999999999999999999999", "m:" + "9" * 5000])
def test_invalid_references_are_rejected_naming_the_forms(registry, ref):
    with pytest.raises(RegistryError, match="expected NAME or NAME:VERSION, VERSION a whole number from 1"):
        registry.get(ref)


@pytest.mark.parametrize(("tags", "message"), [
    ({"": "x"}, "invalid tag key '': a tag key is a non-blank string"),
    ({"k": 3}, "invalid value 3 for tag 'k': tag values are strings"),
    ({"a=b": "c"}, "without '='"),
])
def test_invalid_tags_are_rejected(registry, tmp_path, tags, message):
    with pytest.raises(RegistryError, match=message):
        registry.register("m", write_file(tmp_path / "m.bin", b"x"), tags=tags)


def test_tag_strings_need_key_equals_value():
    assert registry_module.parse_tags(["stage=prod", "note=a=b", "empty="]) == {"stage": "prod", "note": "a=b",
                                                                                 "empty": ""}
    with pytest.raises(RegistryError, match="invalid tag 'stage': expected KEY=VALUE"):
        registry_module.parse_tags(["stage"])


def test_unknown_model_lists_the_registered_names(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    registry.register("beta", source)
    registry.register("alpha", source)

    with pytest.raises(RegistryError, match=r"no model named 'gamma' in the registry at .*; registered: alpha, beta"):
        registry.get("gamma")


def test_unknown_version_lists_the_versions(registry, tmp_path):
    source = write_file(tmp_path / "m.bin", b"x")
    for _ in range(3):
        registry.register("m", source)

    with pytest.raises(RegistryError, match="model 'm' has no version 9; its versions: 1, 2, 3"):
        registry.model_path("m", 9)


def test_missing_source_is_rejected(registry, tmp_path):
    with pytest.raises(RegistryError, match=r"cannot register .*absent.onnx: no such file or folder"):
        registry.register("m", tmp_path / "absent.onnx")


def test_a_folder_holding_the_registry_cannot_be_registered(tmp_path):
    registry = Registry(tmp_path / "registry")

    with pytest.raises(RegistryError, match="staging folder"):
        registry.register("everything", tmp_path)


# concurrency and crashes


def test_concurrent_registrations_from_threads_get_distinct_versions_and_complete_files(registry, tmp_path):
    sources = [write_file(tmp_path / f"t{index}" / "model.bin", f"thread {index} ".encode() * 50_000)
               for index in range(8)]
    barrier = threading.Barrier(8)

    def register(source: Path) -> ModelVersion:
        barrier.wait(timeout=10)
        return registry.register("shared", source)

    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(register, sources))

    assert sorted(model.version for model in models) == list(range(1, 9))
    assert_complete(registry, "shared", sources)


def register_in_process(root: str, source: str, barrier) -> None:
    barrier.wait(timeout=30)
    Registry(root).register("shared", source)


def test_concurrent_registrations_from_processes_get_distinct_versions_and_complete_files(root, tmp_path):
    sources = [write_file(tmp_path / f"p{index}" / "model.bin", f"process {index} ".encode() * 50_000)
               for index in range(4)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [context.Process(target=register_in_process, args=(str(root), str(source), barrier))
                 for source in sources]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)

    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert_complete(Registry(root), "shared", sources)


def assert_complete(registry: Registry, name: str, sources: list[Path]) -> None:
    models = registry.list(name=name)
    assert [model.version for model in models] == list(range(1, len(sources) + 1))
    assert sorted(model.sha256 for model in models) == sorted(sha256_of(source) for source in sources)
    for model in models:
        assert sha256_of(model.path) == model.sha256


def test_a_failed_copy_leaves_no_row_no_version_folder_and_no_staging(registry, root, tmp_path, monkeypatch):
    source = model_folder(tmp_path / "bert")

    def copy_half_then_fail(source: Path, target: Path) -> tuple[int, str]:
        target.write_bytes(source.read_bytes()[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module, "_copy_file", copy_half_then_fail)
    with pytest.raises(RegistryError, match=r"could not copy .*bert into the registry .*No space left on device"):
        registry.register("bert", source)
    monkeypatch.undo()

    assert registry.list() == []
    assert not (registry.models_dir / "bert").exists()
    assert staging_entries(root) == []
    assert registry.register("bert", source).version == 1


def test_a_failure_after_the_rename_moves_the_folder_back_and_commits_nothing(registry, root, tmp_path, monkeypatch):
    source = write_file(tmp_path / "m.bin", b"x")

    def fail(folder: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(registry_module, "_sync_folder", fail)
    with pytest.raises(RegistryError, match=r"could not store m:1 .*Input/output error"):
        registry.register("m", source)
    monkeypatch.undo()

    assert registry.list() == []
    assert list((registry.models_dir / "m").iterdir()) == []
    assert staging_entries(root) == []
    assert registry.register("m", source).version == 1


CRASH_MID_COPY = """
import os, sys
from mlscore.deploy import registry

def copy_half_then_die(source, target):
    with open(source, "rb") as reader, open(target, "wb") as writer:
        writer.write(reader.read(100))
    os._exit(3)

registry._copy_file = copy_half_then_die
registry.Registry(sys.argv[1]).register("bert", sys.argv[2])
"""


def test_a_crash_mid_copy_leaves_no_row_and_its_staging_is_removed_at_the_next_open(root, tmp_path):
    source = model_folder(tmp_path / "bert")

    crashed = subprocess.run([sys.executable, "-c", CRASH_MID_COPY, str(root), str(source)], capture_output=True)

    assert crashed.returncode == 3, crashed.stderr.decode()
    assert [entry.name.startswith("stage-") for entry in staging_entries(root)] == [True]
    registry = Registry(root)
    assert staging_entries(root) == []
    assert registry.list() == []
    assert not (registry.models_dir / "bert").exists()
    assert registry.register("bert", source).version == 1


def test_an_open_keeps_the_staging_folder_of_a_registration_in_progress(root, tmp_path, monkeypatch):
    source = write_file(tmp_path / "model.bin", b"weights" * 1000)
    registry = Registry(root)
    copying, release = threading.Event(), threading.Event()
    copy_file = registry_module._copy_file

    def copy_when_released(source: Path, target: Path) -> tuple[int, str]:
        copying.set()
        assert release.wait(10)
        return copy_file(source, target)

    monkeypatch.setattr(registry_module, "_copy_file", copy_when_released)
    with ThreadPoolExecutor(1) as pool:
        registering = pool.submit(registry.register, "m", source)
        assert copying.wait(10)
        Registry(root)
        assert len(staging_entries(root)) == 1
        release.set()
        model = registering.result(timeout=10)

    assert sha256_of(model.path) == sha256_of(source)


def test_a_version_folder_without_a_row_is_removed_at_open(root, tmp_path):
    registry = Registry(root)
    kept = registry.register("m", write_file(tmp_path / "m.bin", b"x"))
    write_file(registry.models_dir / "m" / "2" / "m.bin", b"uncommitted")
    write_file(registry.models_dir / "ghost" / "1" / "g.bin", b"uncommitted")

    Registry(root)

    assert sorted(path.name for path in (registry.models_dir / "m").iterdir()) == ["1"]
    assert not (registry.models_dir / "ghost").exists()
    assert registry.register("m", write_file(tmp_path / "m.bin", b"y")).version == 2
    assert kept.path.read_bytes() == b"x"


# the root and the schema


def test_root_comes_from_mlscore_home_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSCORE_HOME", str(tmp_path / "home"))

    registry = Registry()

    assert registry.root == tmp_path / "home"
    assert (tmp_path / "home" / "registry.db").is_file()


def test_database_is_in_wal_mode_at_the_current_schema_version(registry, root):
    with sqlite3.connect(root / "registry.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == registry_module.SCHEMA_VERSION


def test_a_database_from_a_newer_mlscore_is_refused(registry, root):
    with sqlite3.connect(root / "registry.db") as db:
        db.execute("PRAGMA user_version = 99")

    with pytest.raises(RegistryError, match="has schema version 99, newer than this mlscore reads"):
        Registry(root)


# the command line


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mlscore")
    add_model_commands(parser.add_subparsers(dest="command"))
    return run_model_command(parser.parse_args(["model", *argv]))


def test_cli_register_list_show_download_and_delete(root, tmp_path, capsys):
    source = write_file(tmp_path / "model.onnx", b"onnx bytes")
    registry = ["--registry", str(root)]

    assert run_cli("register", "-n", "digits", "-p", str(source), "--tag", "stage=prod", "--tag", "team=ml",
                   "--description", "first cut", *registry) == 0
    assert run_cli("register", "-n", "digits", "-p", str(source), *registry) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("registered digits:2 (10 B) at ")

    assert run_cli("list", *registry) == 0
    header, first, _ = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "VERSION", "CREATED", "SIZE", "TAGS", "DESCRIPTION"]
    assert first.split()[:2] == ["digits", "1"] and first.endswith("stage=prod,team=ml  first cut")
    for column in ("VERSION", "SIZE", "TAGS"):
        assert first[header.index(column) - 2:header.index(column)] == "  "

    assert run_cli("show", "digits:1", *registry) == 0
    shown = capsys.readouterr().out
    assert f"sha256:          {hashlib.sha256(b'onnx bytes').hexdigest()}" in shown
    assert f"stored at:       {root / 'models' / 'digits' / '1' / 'model.onnx'}" in shown

    assert run_cli("download", "digits", "-t", str(tmp_path / "out"), *registry) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "model.onnx")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"onnx bytes"

    assert run_cli("delete", "digits:1", *registry) == 0
    assert run_cli("delete", "digits", "--all-versions", *registry) == 0
    assert capsys.readouterr().out.splitlines() == ["deleted digits:1", "deleted digits:2"]


def test_cli_list_and_show_print_json(root, tmp_path, capsys):
    Registry(root).register("digits", write_file(tmp_path / "model.onnx", b"x"), tags={"stage": "prod"})

    assert run_cli("list", "--tag", "stage", "--json", "--registry", str(root)) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert run_cli("show", "digits", "--json", "--registry", str(root)) == 0
    shown = json.loads(capsys.readouterr().out)

    assert listed["ref"] == "digits:1" and listed["tags"] == {"stage": "prod"} and listed["size_bytes"] == 1
    assert shown == {**listed, "services": []}


def test_cli_errors_exit_1_with_one_line_on_stderr(root, tmp_path, capsys):
    Registry(root).register("digits", write_file(tmp_path / "model.onnx", b"x"))
    registry = ["--registry", str(root)]

    cases = [
        (["show", "nope", *registry], "mlscore: error: no model named 'nope'"),
        (["show", "digits:4", *registry], "mlscore: error: model 'digits' has no version 4; its versions: 1"),
        (["register", "-n", "bad name", "-p", str(tmp_path / "model.onnx"), *registry],
         "mlscore: error: invalid model name 'bad name'"),
        (["register", "-n", "m", "-p", str(tmp_path / "model.onnx"), "--tag", "stage", *registry],
         "mlscore: error: invalid tag 'stage': expected KEY=VALUE"),
        (["delete", "digits", *registry],
         "mlscore: error: 'digits' names a model, not a version: give digits:VERSION"),
        (["delete", "digits:1", "--all-versions", *registry], "mlscore: error: --all-versions deletes every version"),
        # past SQLite's INTEGER: was an OverflowError traceback (issue 16, item 8)
        (["show", "digits:99999999999999999999999", *registry], "mlscore: error: invalid model reference"),
        (["delete", "digits:99999999999999999999999", *registry], "mlscore: error: invalid model reference"),
    ]
    for argv, start in cases:
        assert run_cli(*argv) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(start) and captured.err.count("\n") == 1, captured.err
    assert Registry(root).get("digits:1")


def test_cli_delete_of_a_model_a_service_uses_names_the_service(root, tmp_path, capsys):
    registry = Registry(root)
    registry.register("digits", write_file(tmp_path / "model.onnx", b"x"))
    registry.record_service("digits-api", ["digits"], "local", "Healthy")

    assert run_cli("delete", "digits", "--all-versions", "--registry", str(root)) == 1

    assert "used by service(s) digits-api (uses digits:1)" in capsys.readouterr().err
    assert registry.get("digits:1")


def test_cli_uses_mlscore_home_without_registry(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLSCORE_HOME", str(tmp_path / "home"))

    assert run_cli("register", "-n", "digits", "-p", str(write_file(tmp_path / "m.onnx", b"x"))) == 0

    assert Registry(tmp_path / "home").get("digits").version == 1
