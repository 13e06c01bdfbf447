"""The Open Inference Protocol (KServe V2) REST encoding: tensors in and out of JSON, with the
binary tensor extension that Triton's clients use by default (a JSON header whose length is in
`Inference-Header-Content-Length`, followed by the raw tensor bytes).

Only the encoding lives here; the routes are the server's, and running the model is the
accelerator's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from mlscore.accelerators import TensorInfo
from mlscore.scoring import json_limits

HEADER_LENGTH = b"inference-header-content-length"
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
NAMES = {dtype: name for name, dtype in DATATYPES.items()}


class V2Error(ValueError):
    """A request that breaks the protocol or the model's signature: a 400 with this message."""


def datatype(dtype: np.dtype) -> str:
    return NAMES.get(dtype, "BYTES")


def tensor_metadata(info: TensorInfo) -> dict[str, Any]:
    """A tensor as model metadata describes it: dynamic dimensions are -1."""
    return {"name": info.name, "datatype": datatype(info.dtype),
            "shape": [dim if isinstance(dim, int) else -1 for dim in info.shape]}


def model_metadata(name: str, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> dict[str, Any]:
    """A served model's metadata (GET /v2/models/NAME), which its Swagger operations describe too."""
    return {"name": name, "versions": ["1"], "platform": "onnx",
            "inputs": [tensor_metadata(info) for info in inputs],
            "outputs": [tensor_metadata(info) for info in outputs]}


def decode_request(body: bytes, header_length: bytes | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The request's JSON object and its input tensors by name; raises V2Error."""
    json_part, binary = _split(body, header_length)
    try:
        request = json_limits.loads(json_part)
    except json_limits.JsonTooDeep as error:
        raise V2Error(f"the inference request is {error} (max_json_depth)") from None
    except orjson.JSONDecodeError as error:
        raise V2Error(f"the inference request is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise V2Error("the inference request must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error("the inference request needs a non-empty 'inputs' list")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(inputs):
        name, array, offset = _input_tensor(item, index, binary, offset)
        if name in tensors:
            raise V2Error(f"input {name!r} is given twice")
        tensors[name] = array
    if offset != len(binary):
        raise V2Error(f"{len(binary) - offset} bytes of binary data follow the JSON header that no input claims")
    return request, tensors


def check_datatypes(tensors: dict[str, np.ndarray], inputs: list[TensorInfo]) -> None:
    """A V2 tensor declares its datatype: it must be the model's, as Triton requires (JSON /score
    bodies, which declare none, are converted instead)."""
    for info in inputs:
        given = tensors.get(info.name)
        if given is not None and given.dtype != info.dtype:
            raise V2Error(f"input {info.name!r}: datatype {datatype(given.dtype)} does not match the model's "
                          f"{datatype(info.dtype)}")


def requested_outputs(request: dict[str, Any], outputs: list[TensorInfo]) -> list[tuple[str, bool]]:
    """(name, as binary data) of each output to return: those the request names, else all as JSON."""
    asked = request.get("outputs")
    if asked is None:
        binary = bool(_parameters(request, "request").get("binary_data_output", False))
        return [(info.name, binary) for info in outputs]
    if not isinstance(asked, list):
        raise V2Error("'outputs' must be a list of {\"name\": ...} objects")
    known = {info.name for info in outputs}
    chosen: list[tuple[str, bool]] = []
    for item in asked:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise V2Error("each requested output must be an object with a 'name'")
        if item["name"] not in known:
            raise V2Error(f"unknown output {item['name']!r}; the model's outputs are {', '.join(sorted(known))}")
        chosen.append((item["name"], bool(_parameters(item, f"output {item['name']!r}").get("binary_data", False))))
    return chosen


def encode_response(model_name: str, request: dict[str, Any], results: dict[str, np.ndarray],
                    wanted: list[tuple[str, bool]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its content headers."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        array = np.ascontiguousarray(results[name])
        item: dict[str, Any] = {"name": name, "datatype": datatype(array.dtype), "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = _json_values(array)
        outputs.append(item)
    response: dict[str, Any] = {"model_name": model_name, "outputs": outputs}
    if isinstance(request.get("id"), str):
        response["id"] = request["id"]
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, [(b"content-type", b"application/json")]
    return header + b"".join(blobs), [(b"content-type", b"application/octet-stream"),
                                      (HEADER_LENGTH, str(len(header)).encode())]


def _split(body: bytes, header_length: bytes | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise V2Error(f"Inference-Header-Content-Length must be a number of bytes no larger than the body "
                      f"({len(body)}), got {header_length.decode('latin-1')!r}")
    length = int(header_length)
    return body[:length], body[length:]


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise V2Error(f"'parameters' of {where} must be an object")
    return parameters


def _input_tensor(item: Any, index: int, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise V2Error(f"inputs[{index}] must be an object with a 'name'")
    name = item["name"]
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise V2Error(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    dtype = DATATYPES.get(item.get("datatype"))  # type: ignore[arg-type]
    if dtype is None:
        raise V2Error(f"input {name!r}: datatype {item.get('datatype')!r} is not supported; use one of "
                      f"{', '.join(DATATYPES)}")
    count = math.prod(shape)
    size = _parameters(item, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
            raise V2Error(f"input {name!r}: binary_data_size {size!r} does not match shape {shape} of "
                          f"{item['datatype']} ({count * dtype.itemsize} bytes) or the binary data sent")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return name, array, offset + size
    if "data" not in item:
        raise V2Error(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    try:
        values = np.asarray(item["data"])
        if values.size and (values.dtype.kind not in "biuf" or (values.dtype.kind == "f" and dtype.kind in "biu")):
            raise TypeError(f"got {values.dtype.name} values")
        array = values.astype(dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise V2Error(f"input {name!r}: data cannot be read as {item['datatype']}: {error}") from None
    if array.size != count:
        raise V2Error(f"input {name!r}: shape {shape} needs {count} values, got {array.size}")
    return name, array.reshape(shape), offset


def _json_values(array: np.ndarray) -> list[Any]:
    """Row-major flat values, as the protocol's JSON tensors carry them."""
    return array.reshape(-1).tolist()
