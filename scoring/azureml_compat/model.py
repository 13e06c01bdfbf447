"""`azureml.core.model`: `Model.get_model_path`, resolved against the local model directory."""

from __future__ import annotations

from mlscore.scoring.model_path import get_model_path as _get_model_path


class Model:
    """The part of Azure's Model class that entry scripts use inside the scoring container."""

    @staticmethod
    def get_model_path(model_name: str, version: int | str | None = None, _workspace: object = None) -> str:
        return _get_model_path(model_name, version)
