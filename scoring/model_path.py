"""Resolving a registered model's name to a path under the model directory (`AZUREML_MODEL_DIR`).

Two layouts are understood: `<model_dir>/<name>` (a file or a folder) and the registry layout
`<model_dir>/<name>/<version>/...` that the deploy layer writes.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR_ENV = "AZUREML_MODEL_DIR"


class ModelNotFoundError(FileNotFoundError):
    """A model name (and version) that is not under the model directory."""


def model_dir() -> Path:
    """The model directory from `AZUREML_MODEL_DIR`; an error when it is unset."""
    value = os.environ.get(MODEL_DIR_ENV)
    if not value:
        raise ModelNotFoundError(
            f"{MODEL_DIR_ENV} is not set: start the server with --model-dir or set {MODEL_DIR_ENV}"
        )
    return Path(value)


def get_model_path(model_name: str, version: int | str | None = None, *, root: Path | None = None) -> str:
    """The path of a model, as Azure's `Model.get_model_path` gives it.

    A plain `<root>/<name>` file or folder wins. Otherwise `<root>/<name>/<version>/` is the
    registry layout: the newest version when none is given; a version folder holding one file
    resolves to that file, one holding several to the folder.
    """
    base = Path(root) if root is not None else model_dir()
    if not base.is_dir():
        raise ModelNotFoundError(f"model directory {base} does not exist or is not a folder")
    candidate = base / model_name
    if _is_version_folder_of(base, model_name):
        # AZUREML_MODEL_DIR is the one model's version folder, as Azure sets it for a single model
        candidate, version = base.parent, version if version is not None else base.name
    if not candidate.exists():
        raise ModelNotFoundError(
            f"model {model_name!r} not found in {base}; it holds: {_listing(base)}"
        )
    versions = _versions(candidate)
    if version is None and not versions:
        return str(candidate)
    if version is not None and not versions:
        raise ModelNotFoundError(
            f"model {model_name!r} in {base} has no version folders, so version {version} cannot be found"
        )
    chosen = str(version) if version is not None else str(max(versions))
    version_dir = candidate / chosen
    if not version_dir.is_dir():
        raise ModelNotFoundError(
            f"version {chosen} of model {model_name!r} not found in {candidate}; "
            f"versions there: {', '.join(str(v) for v in sorted(versions))}"
        )
    return _single_file_or_folder(version_dir)


def _is_version_folder_of(path: Path, model_name: str) -> bool:
    return path.name.isdigit() and path.parent.name == model_name


def _versions(path: Path) -> list[int]:
    """Version numbers when `path` is a registry-layout folder (only numeric subfolders), else []."""
    if not path.is_dir():
        return []
    children = list(path.iterdir())
    if not children or not all(child.is_dir() and child.name.isdigit() for child in children):
        return []
    return [int(child.name) for child in children]


def _single_file_or_folder(version_dir: Path) -> str:
    entries = [entry for entry in version_dir.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_file():
        return str(entries[0])
    return str(version_dir)


def _listing(base: Path, limit: int = 20) -> str:
    names = sorted(entry.name for entry in base.iterdir())
    if not names:
        return "nothing"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names) - limit} more)"
