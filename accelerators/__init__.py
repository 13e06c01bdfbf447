"""Backends behind one small interface (see base.py):

    from mlscore.accelerators import load, available_devices
    session = load("model.onnx")              # device from settings (MLSCORE_DEVICE), else "auto"
    outputs = session.run({"input": batch})    # {output name: ndarray}

`device`: "auto" (the GPU when a CUDA provider works, else the CPU), "cpu", "gpu" or "opencl".
Naming a device that is not there raises DeviceUnavailable listing the ones that are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlscore.accelerators.base import (
    DEVICES, AcceleratorError, DeviceInfo, DeviceUnavailable, InvalidInput, Session, TensorInfo, UnsupportedModel,
    check_inputs, read_signature,
)

DEVICE_ENV = "MLSCORE_DEVICE"
OPENCL_BINARY_ENV = "MLSCORE_OPENCL_BINARY"  # the --opencl-binary setting
OPENCL_DEVICE_ENV = "MLSCORE_OPENCL_DEVICE"  # the --opencl-device setting

__all__ = [
    "AcceleratorError", "DeviceInfo", "DeviceUnavailable", "InvalidInput", "Session", "TensorInfo",
    "UnsupportedModel", "available_devices", "check_inputs", "load", "read_signature", "DEVICE_ENV",
    "OPENCL_BINARY_ENV", "OPENCL_DEVICE_ENV",
]


def available_devices() -> list[DeviceInfo]:
    """The devices that work on this machine: the CPU always, the GPU when onnxruntime's CUDA
    provider can run a model here, each OpenCL device pyopencl finds."""
    from mlscore.accelerators import onnx_runtime, opencl

    return [*onnx_runtime.devices(), *opencl.devices()]


def load(model_path: str | os.PathLike[str], device: str | None = None, **options: Any) -> Session:
    """A session for the ONNX model at `model_path` on `device` (None: the MLSCORE_DEVICE setting,
    else "auto"). `options` go to the backend (threads for the CPU, `opencl_binary=` for OpenCL...)."""
    path = Path(model_path)
    if not path.is_file():
        raise AcceleratorError(f"no model file at {path}")
    wanted = (device or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if wanted not in ("auto", *DEVICES):
        raise AcceleratorError(f"unknown device {wanted!r}: use one of auto, {', '.join(DEVICES)}")
    from mlscore.accelerators import onnx_runtime, opencl

    if wanted == "auto":
        wanted = "gpu" if onnx_runtime.gpu_works() else "cpu"
    if wanted == "opencl":
        for option, variable in (("opencl_binary", OPENCL_BINARY_ENV), ("opencl_device", OPENCL_DEVICE_ENV)):
            if os.environ.get(variable) and option not in options:
                options[option] = os.environ[variable]
        return opencl.load(path, **options)
    return onnx_runtime.load(path, wanted, **options)
