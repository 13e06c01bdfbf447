"""Serving an ONNX model without an entry script (`mlscore serve --model model.onnx`).

The model's signature is its contract: `/score` takes `{"<input name>": nested list, ...}` and
answers `{"<output name>": nested list, ...}`; `/v2/models/<name>/infer` takes and answers Open
Inference Protocol tensors (see kserve_v2.py). The pipeline has the same face as an entry
script's (`call_init`, `handle`, `warm_up`), so admission, the executors and the workers serve
it unchanged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlscore.accelerators import AcceleratorError, InvalidInput, Session, TensorInfo, load, read_signature
from mlscore.scoring import json_limits, kserve_v2
from mlscore.scoring.entry_script import EntryScriptError
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.pipeline import JSON, RUN_FAILED_MESSAGE, error_response

logger = logging.getLogger("mlscore.scoring")


class ModelMode:
    """What the start-up log calls the way requests reach the model."""

    name = "onnx model"


class OnnxPipeline:
    """Scores requests for one ONNX model on the device from the settings."""

    mode = ModelMode()

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        try:
            self.inputs, self.outputs = read_signature(path)
        except AcceleratorError as error:
            raise EntryScriptError(path, str(error)) from None
        self.infer_path = f"/v2/models/{name}/infer"
        self._session: Session | None = None

    def call_init(self) -> None:
        """Load the model on the device from the settings; EntryScriptError (exit 3 at start) when
        it cannot be, e.g. a device that is not there, with the ones that are."""
        try:
            self._session = load(self.path)
        except AcceleratorError as error:
            raise EntryScriptError(self.path, str(error)) from None
        logger.info("model %s loaded on %s", self.path, self._session.device)

    def handle(self, request: RawRequest) -> RawResponse:
        if request.method == "OPTIONS":
            return RawResponse(200, [], b"")
        if request.method != "POST":
            return error_response(405, f"{request.method} {request.path}: send the inputs with POST.")
        if request.path == self.infer_path:
            return self._infer(request)
        return self._score(request)

    def warm_up(self) -> bool:
        """One run() on zeros (dynamic dimensions 1): the first inference pays for kernel building
        and memory planning, and should not be a client's."""
        zeros = {info.name: np.zeros([d if isinstance(d, int) else 1 for d in info.shape], info.dtype)
                 for info in self.inputs}
        self._run(zeros)
        return True

    def _score(self, request: RawRequest) -> RawResponse:
        try:
            given = json_limits.loads(request.body)
        except json_limits.JsonTooDeep as error:
            return error_response(400, f"The body is {error} (max_json_depth).")
        except orjson.JSONDecodeError as error:
            return error_response(400, f"The body is not valid JSON: {error}")
        if not isinstance(given, dict):
            return error_response(400, "The body must be a JSON object of inputs: "
                                  + ", ".join(info.describe() for info in self.inputs))
        started = time.perf_counter()
        try:
            results = self._run(given)
        except InvalidInput as error:
            return error_response(400, str(error))
        except Exception as error:
            return self._failed(error)
        body = orjson.dumps(results, option=orjson.OPT_SERIALIZE_NUMPY)
        return RawResponse(200, list(JSON), body, run_ms=(time.perf_counter() - started) * 1000.0)

    def _infer(self, request: RawRequest) -> RawResponse:
        try:
            decoded, tensors = kserve_v2.decode_request(request.body, request.header(kserve_v2.HEADER_LENGTH))
            kserve_v2.check_datatypes(tensors, self.inputs)
            wanted = kserve_v2.requested_outputs(decoded, self.outputs)
        except kserve_v2.V2Error as error:
            return v2_error(400, str(error))
        started = time.perf_counter()
        try:
            results = self._run(tensors)
        except InvalidInput as error:
            return v2_error(400, str(error))
        except Exception as error:
            return self._failed(error)
        body, headers = kserve_v2.encode_response(self.name, decoded, results, wanted)
        return RawResponse(200, headers, body, run_ms=(time.perf_counter() - started) * 1000.0)

    def _run(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        assert self._session is not None, "call_init() first"
        return self._session.run(inputs)

    def _failed(self, error: Exception) -> RawResponse:
        logger.error("the model raised %s: %s", type(error).__name__, error, exc_info=error)
        return error_response(500, f"{RUN_FAILED_MESSAGE} The model raised {type(error).__name__}.", run_failed=True)


def v2_error(status: int, message: str) -> RawResponse:
    """An Open Inference Protocol error: `{"error": message}`."""
    return RawResponse(status, list(JSON), orjson.dumps({"error": message}))


def example_value(info: TensorInfo) -> Any:
    """Zeros of the tensor's shape (dynamic dimensions 1) as nested lists, for Swagger's example."""
    return np.zeros([d if isinstance(d, int) else 1 for d in info.shape], info.dtype).tolist()


_JSON_TYPES = {"b": "boolean", "i": "integer", "u": "integer", "f": "number"}


def signature_schema(tensors: list[TensorInfo], description: str) -> dict[str, Any]:
    """A JSON schema of an object holding each tensor as nested lists, every fixed dimension
    bounded, with zeros as the example: Swagger's ServiceInput and ServiceOutput for a model."""
    properties: dict[str, Any] = {}
    for info in tensors:
        schema: dict[str, Any] = {"type": _JSON_TYPES.get(info.dtype.kind, "number")}
        if info.dtype.kind == "f":
            schema["format"] = "float" if info.dtype.itemsize <= 4 else "double"
        for dim in reversed(info.shape):
            schema = {"type": "array", "items": schema}
            if isinstance(dim, int):
                schema["minItems"] = schema["maxItems"] = dim
        schema["description"] = f"{info.dtype.name} tensor [{', '.join(str(d) for d in info.shape)}]"
        properties[info.name] = schema
    return {
        "type": "object",
        "description": description,
        "required": [info.name for info in tensors],
        "properties": properties,
        "example": {info.name: example_value(info) for info in tensors},
    }
