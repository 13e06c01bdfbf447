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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

from mlscore.accelerators import AcceleratorError, InvalidInput, Session, TensorInfo, load, read_signature
from mlscore.accelerators.base import check_inputs
from mlscore.scoring import json_limits, kserve_v2
from mlscore.scoring.entry_script import EntryScriptError
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.pipeline import JSON, RUN_FAILED_MESSAGE, error_response

logger = logging.getLogger("mlscore.scoring")


class ModelMode:
    """What the start-up log calls the way requests reach the model."""

    name = "onnx model"


@dataclass(slots=True)
class _Decoded:
    """A request's inputs, checked and converted, waiting to join a batch: `rows` along the first
    dimension, and how to answer once the model's outputs for those rows are known."""

    arrays: dict[str, np.ndarray]
    rows: int
    answer: Callable[[dict[str, np.ndarray], float], RawResponse]
    infer: bool  # the V2 route: its errors are V2 errors

    def key(self) -> tuple[Any, ...]:
        """What requests must share to be run together: every input's dtype and other dimensions."""
        return tuple((name, array.dtype.str, array.shape[1:]) for name, array in self.arrays.items())


class OnnxPipeline:
    """Scores requests for one ONNX model on the device from the settings. When every input and
    output has a dynamic first dimension, queued requests whose other dimensions and dtypes match
    are run as one batch (`handle_batch`): one pass over the weights for several requests."""

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
        self.batches = all(info.shape and not isinstance(info.shape[0], int) for info in self.inputs + self.outputs)

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

    def handle_batch(self, requests: list[RawRequest]) -> list[RawResponse]:
        """A response per request, in order: each is decoded and checked on its own (a bad one gets
        its 400 here), then those whose inputs match run as one call, their outputs split back by
        rows. Should the batch's call fail, each of its requests runs alone, so only a failing one
        gets its error."""
        if len(requests) == 1:
            return [self.handle(requests[0])]
        responses: list[RawResponse | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[tuple[int, _Decoded]]] = {}
        for index, request in enumerate(requests):
            decoded = self._decode(request)
            if isinstance(decoded, RawResponse):
                responses[index] = decoded
            else:
                groups.setdefault(decoded.key(), []).append((index, decoded))
        for group in groups.values():
            for index, response in zip([index for index, _ in group], self._run_group([item for _, item in group])):
                responses[index] = response
        return responses  # type: ignore[return-value]  # every index was answered

    def _decode(self, request: RawRequest) -> _Decoded | RawResponse:
        """The request's checked inputs and how to answer it; a response when it cannot join a batch:
        an error, another method, or inputs whose first dimensions differ."""
        if request.method != "POST":
            return self.handle(request)
        infer = request.path == self.infer_path
        try:
            if infer:
                decoded, tensors = kserve_v2.decode_request(request.body, request.header(kserve_v2.HEADER_LENGTH))
                kserve_v2.check_datatypes(tensors, self.inputs)
                wanted = kserve_v2.requested_outputs(decoded, self.outputs)
                given: Any = tensors
            else:
                given = json_limits.loads(request.body)
                if not isinstance(given, dict):
                    return self.handle(request)
            arrays = check_inputs(self.inputs, given)
        except kserve_v2.V2Error as error:
            return v2_error(400, str(error))
        except InvalidInput as error:
            return v2_error(400, str(error)) if infer else error_response(400, str(error))
        except ValueError:  # JSON that is not (or too deep): the single path says which
            return self.handle(request)
        rows = {array.shape[0] for array in arrays.values()}
        if len(rows) != 1:
            return self.handle(request)
        if infer:
            def answer(results: dict[str, np.ndarray], run_ms: float) -> RawResponse:
                body, headers = kserve_v2.encode_response(self.name, decoded, results, wanted)
                return RawResponse(200, headers, body, run_ms=run_ms)
        else:
            def answer(results: dict[str, np.ndarray], run_ms: float) -> RawResponse:
                return RawResponse(200, list(JSON), orjson.dumps(results, option=orjson.OPT_SERIALIZE_NUMPY),
                                   run_ms=run_ms)
        return _Decoded(arrays, rows.pop(), answer, infer)

    def _run_group(self, group: list[_Decoded]) -> list[RawResponse]:
        """One model call for requests with matching inputs, its outputs split back by their rows."""
        started = time.perf_counter()
        try:
            if len(group) == 1:
                outputs = [self._run(group[0].arrays)]
            else:
                joined = {name: np.concatenate([item.arrays[name] for item in group]) for name in group[0].arrays}
                results = self._run(joined)
                outputs = _split(results, [item.rows for item in group])
        except Exception as error:
            if len(group) == 1:
                if not isinstance(error, InvalidInput):
                    return [self._failed(error)]
                return [v2_error(400, str(error)) if group[0].infer else error_response(400, str(error))]
            logger.warning("a batch of %d requests failed (%s: %s): running each alone", len(group),
                           type(error).__name__, error)
            return [response for item in group for response in self._run_group([item])]
        run_ms = (time.perf_counter() - started) * 1000.0
        responses = [item.answer(output, run_ms) for item, output in zip(group, outputs)]
        for response in responses:
            response.batch = len(group)
        return responses

    def _run(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        assert self._session is not None, "call_init() first"
        return self._session.run(inputs)

    def _failed(self, error: Exception) -> RawResponse:
        logger.error("the model raised %s: %s", type(error).__name__, error, exc_info=error)
        return error_response(500, f"{RUN_FAILED_MESSAGE} The model raised {type(error).__name__}.", run_failed=True)


def _split(results: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """Each request's share of a batch's outputs, by its rows; ValueError when an output does not
    have one row per input row (a model whose first dimension is not the batch)."""
    total = sum(rows)
    for name, array in results.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(f"output {name!r} has {array.shape[0] if array.ndim else 0} rows for {total} input rows")
    shares = []
    start = 0
    for count in rows:  # slices (views), not np.split: its generality cost most of a small batch's time
        stop = start + count
        shares.append({name: array[start:stop] for name, array in results.items()})
        start = stop
    return shares


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
