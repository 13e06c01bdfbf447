"""What every backend shares: the session interface, tensor descriptions, errors and input checks.

A session scores one ONNX model on one device: `run({input name: ndarray}) -> {output name: ndarray}`.
Its `inputs` and `outputs` describe the model's signature; a dimension is an int when fixed and a
str (the symbolic name, or "?" when the model gives none) when dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Union

import numpy as np

Dim = Union[int, str]
DEVICES = ("cpu", "gpu", "opencl")


class AcceleratorError(ValueError):
    """A model or device that cannot be used; the message says what and what is allowed."""


class DeviceUnavailable(AcceleratorError):
    """The device asked for is not on this machine (never a silent fallback)."""


class UnsupportedModel(AcceleratorError):
    """The backend cannot run this model (an operator it lacks, a dtype, a malformed graph)."""


class InvalidInput(AcceleratorError):
    """Inputs that do not match the model's signature; the message names the input and the problem."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype  # numpy dtype of the tensor's elements
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


@dataclass(frozen=True)
class DeviceInfo:
    """One usable device: `kind` is what `load(device=...)` takes; `details` says what it is."""

    kind: str
    name: str
    details: Mapping[str, Any] = field(default_factory=dict)


class Session(Protocol):
    device: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_inputs(expected: list[TensorInfo], given: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inputs as arrays of the model's dtypes, checked against its signature: every input
    present, no unknown name, the right rank, fixed dimensions equal, and values that convert to
    the input's dtype without loss of kind (no strings into floats, no floats into ints).
    Raises InvalidInput naming the input and what was wrong."""
    names = {info.name for info in expected}
    unknown = sorted(set(given) - names)
    if unknown:
        raise InvalidInput(f"unknown input {', '.join(repr(n) for n in unknown)}; the model's inputs are "
                           + ", ".join(info.describe() for info in expected))
    arrays: dict[str, np.ndarray] = {}
    for info in expected:
        if info.name not in given:
            raise InvalidInput(f"missing input {info.name!r} ({info.describe()})")
        arrays[info.name] = _as_array(info, given[info.name])
    return arrays


def _as_array(info: TensorInfo, value: Any) -> np.ndarray:
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise InvalidInput(f"input {info.name!r} is not a rectangular array: {error}") from None
    if array.dtype != info.dtype:
        if not _safe_kind(array.dtype, info.dtype):
            raise InvalidInput(f"input {info.name!r} must be {info.dtype.name}, got {array.dtype.name} values")
        array = array.astype(info.dtype)
    if array.ndim != len(info.shape):
        raise InvalidInput(f"input {info.name!r} must have {len(info.shape)} dimensions "
                           f"[{', '.join(str(d) for d in info.shape)}], got {array.ndim} {list(array.shape)}")
    for axis, (want, got) in enumerate(zip(info.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise InvalidInput(f"input {info.name!r} dimension {axis} must be {want}, got {got} "
                               f"(shape {list(array.shape)})")
    return np.ascontiguousarray(array)


def _safe_kind(given: np.dtype, wanted: np.dtype) -> bool:
    """Whether values of `given` may be converted to `wanted`: bools and ints into any number,
    floats into floats; never strings or objects, never floats into ints."""
    if given.kind in "biu":
        return wanted.kind in "biuf"
    if given.kind == "f":
        return wanted.kind == "f"
    return False


# ONNX TensorProto element types and the numpy dtypes they hold.
ONNX_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.uint8), 3: np.dtype(np.int8), 4: np.dtype(np.uint16),
    5: np.dtype(np.int16), 6: np.dtype(np.int32), 7: np.dtype(np.int64), 9: np.dtype(np.bool_),
    10: np.dtype(np.float16), 11: np.dtype(np.float64), 12: np.dtype(np.uint32), 13: np.dtype(np.uint64),
}


def read_signature(model_path: str | Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The model's inputs and outputs (initializers excluded), read with the onnx package and
    without its weights' external data: what a server needs to describe a model it does not run."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError...
        raise UnsupportedModel(f"{model_path}: not a readable ONNX model: {error}") from None
    initialized = {tensor.name for tensor in model.graph.initializer}
    inputs = [_tensor_info(value, model_path) for value in model.graph.input if value.name not in initialized]
    outputs = [_tensor_info(value, model_path) for value in model.graph.output]
    return inputs, outputs


def _tensor_info(value: Any, model_path: str | Path) -> TensorInfo:
    tensor_type = value.type.tensor_type
    dtype = ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise UnsupportedModel(f"{model_path}: {value.name!r} has ONNX element type {tensor_type.elem_type}, "
                               f"which is not supported (numbers and bools are)")
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    return TensorInfo(value.name, dtype, tuple(dims))
