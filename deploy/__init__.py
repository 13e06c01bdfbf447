"""The deploy layer: the embedded model registry, the inference and deployment configs, the deploy
targets (local, aci/Docker, aks/Kubernetes), and a Python API shaped like the Azure ML SDK's.

Names are imported on first use, so `mlscore serve` does not load the deploy layer to start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AciWebservice": "mlscore.deploy.sdk",
    "AksWebservice": "mlscore.deploy.sdk",
    "InferenceConfig": "mlscore.deploy.sdk",
    "LocalWebservice": "mlscore.deploy.sdk",
    "Model": "mlscore.deploy.sdk",
    "Webservice": "mlscore.deploy.sdk",
    "Workspace": "mlscore.deploy.sdk",
    "DeployError": "mlscore.deploy.service",
    "ModelVersion": "mlscore.deploy.registry",
    "Registry": "mlscore.deploy.registry",
    "RegistryError": "mlscore.deploy.registry",
    "Service": "mlscore.deploy.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlscore.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
