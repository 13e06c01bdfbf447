"""The deploy layer: the embedded model registry and the services recorded against it."""

from mlscore.deploy.registry import ModelVersion, Registry, RegistryError, Service

__all__ = ["ModelVersion", "Registry", "RegistryError", "Service"]
