"""Where a service's files go: the registered models laid out as Azure's scoring containers see
them, and the `AZUREML_MODEL_DIR` that points at them.

Azure copies each model to `azureml-models/<name>/<version>/<file or folder as registered>` and
sets `AZUREML_MODEL_DIR` to that version folder when the service has one model, or to
`azureml-models` when it has several. Entry scripts written for Azure rely on both forms.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mlscore.deploy.registry import ModelVersion

MODELS_FOLDER = "azureml-models"


def model_dir_within(models: Sequence[ModelVersion]) -> PurePosixPath:
    """`AZUREML_MODEL_DIR` relative to the folder that holds `azureml-models`."""
    if len(models) == 1:
        return PurePosixPath(MODELS_FOLDER, models[0].name, str(models[0].version))
    return PurePosixPath(MODELS_FOLDER)


def lay_out_models(models: Sequence[ModelVersion], into: Path, link: bool = False) -> Path:
    """Put each version under `into/azureml-models/<name>/<version>/`; the `AZUREML_MODEL_DIR` to use.

    `link` makes symbolic links to the registry's files (a local process: nothing is copied, and a
    registered version is never changed afterwards); otherwise the files are copied (a build context).
    """
    if not models:
        raise ValueError("a service needs at least one model")
    root = into / MODELS_FOLDER
    for model in models:
        version_dir = root / model.name / str(model.version)
        version_dir.mkdir(parents=True, exist_ok=True)
        target = version_dir / model.path.name
        if target.exists() or target.is_symlink():
            continue
        if link:
            os.symlink(model.path, target, target_is_directory=model.path.is_dir())
        elif model.path.is_dir():
            shutil.copytree(model.path, target)
        else:
            shutil.copy2(model.path, target)
    return into / model_dir_within(models)
