"""How a request becomes run()'s arguments, decided once per script: schema-decorated, plain or raw HTTP.

Each mode turns a RawRequest into positional and keyword arguments for run(), or raises BadInput
with the status and the message the client gets.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

import numpy as np
import orjson
from inference_schema.parameter_types.abstract_parameter_type import AbstractParameterType
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.schema_util import is_schema_decorated

from mlscore.scoring import json_limits
from mlscore.scoring.entry_script import EntryScriptError, innermost, run_parameters
from mlscore.scoring.messages import RawRequest
from mlscore.scoring.schema_types import input_schemas, undecorated_target

Arguments = tuple[tuple[Any, ...], dict[str, Any]]
REQUEST_HEADERS = "request_headers"
RAWHTTP_ATTR = "_mlscore_rawhttp"  # set on run() by the @rawhttp decorator (azureml_compat/aml_request.py)
BATCHED_ATTR = "_mlscore_batched"  # set on run() by the @batched decorator (batching.py)


class BadInput(Exception):
    """A request run() cannot be called with; `status` is 400 or 415 (the client's fault), or 500 when
    no request can call it, and `message` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadRequestBody(BadInput, ValueError):
    """A raw-HTTP run() asked for the body as JSON (`request.get_json()`, `request.json`) and it is not
    JSON: a 400 that says so, as if the body had been decoded before run()."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class PlainMode:
    """An undecorated `run(data)`: the body as a UTF-8 string (GET: the query as a JSON object)."""

    name = "plain"

    def __init__(self, data_parameter: str, wants_headers: bool, target: Callable[..., Any]) -> None:
        self._data_parameter = data_parameter
        self._wants_headers = wants_headers
        self.target = target

    def arguments(self, request: RawRequest) -> Arguments:
        if request.method == "GET":
            data = orjson.dumps(_query_values(request.query)).decode()
        else:
            try:
                data = request.body.decode("utf-8")
            except UnicodeDecodeError as error:
                raise BadInput(400, f"Input cannot be decoded as UTF-8: {error}") from None
        kwargs = {self._data_parameter: data}
        if self._wants_headers:
            kwargs[REQUEST_HEADERS] = _title_case_headers(request)
        return (), kwargs

    def warmup_arguments(self) -> Arguments | None:
        return None


class RawHttpMode:
    """A `@rawhttp` run(request): the whole request as an AMLRequest, werkzeug's Request as Flask hands
    it to run() on Azure. werkzeug is imported here, for raw-HTTP scripts only (which imported the
    decorator from aml_request.py, and so werkzeug, already)."""

    name = "rawhttp"

    def __init__(self, target: Callable[..., Any]) -> None:
        from mlscore.scoring.azureml_compat.aml_request import AMLRequest

        self.target = target
        self._request = AMLRequest.from_raw

    def arguments(self, request: RawRequest) -> Arguments:
        return (self._request(request),), {}

    def warmup_arguments(self) -> Arguments | None:
        return None


@dataclass(slots=True)
class SchemaParameter:
    name: str
    param_type: AbstractParameterType | None  # None: a run() parameter without an input_schema
    required: bool
    convert: bool  # input_schema's convert_to_provided_type: decode to the sample's type


class SchemaMode:
    """A run() decorated with inference-schema: arguments by name from a JSON object (GET: the query),
    each decoded to its sample's type before run() is called, so bad input is a 400 naming the parameter."""

    name = "schema"

    def __init__(self, parameters: list[SchemaParameter], wants_headers: bool, target: Callable[..., Any]) -> None:
        self.parameters = parameters
        self._wants_headers = wants_headers
        self.target = target

    def arguments(self, request: RawRequest) -> Arguments:
        payload = _query_values(request.query) if request.method == "GET" else _json_object(request)
        kwargs: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.name not in payload:
                if parameter.required:
                    raise BadInput(400, f"A value is not provided for the '{parameter.name}' parameter.")
                continue
            kwargs[parameter.name] = _decode(parameter, payload[parameter.name])
        if self._wants_headers:
            kwargs[REQUEST_HEADERS] = _title_case_headers(request)
        return (), kwargs

    def warmup_arguments(self) -> Arguments | None:
        """The input samples as run()'s arguments; None when a required parameter has no sample."""
        kwargs = {}
        for parameter in self.parameters:
            if parameter.param_type is None:
                if parameter.required:
                    return None
                continue
            kwargs[parameter.name] = _sample_value(parameter.param_type)
        if self._wants_headers:
            kwargs[REQUEST_HEADERS] = {}
        return (), kwargs


class UncallableMode:
    """A run() that no request can call: its input_schema names parameters that run() does not take.
    Azure starts such a script, so we do too: one warning at start, no warm-up (the replica becomes
    ready), and every request is answered 500 naming the mismatch, before its body is looked at (bad
    JSON, too, is a 500 pointing at the script rather than a 400 blaming the client)."""

    name = "schema (run() cannot be called)"

    def __init__(self, message: str, target: Callable[..., Any]) -> None:
        self.message = message
        self.target = target

    def arguments(self, request: RawRequest) -> Arguments:
        raise BadInput(500, self.message)

    def warmup_arguments(self) -> Arguments | None:
        return None


InputMode = PlainMode | RawHttpMode | SchemaMode | UncallableMode


def detect_input_mode(path: Path, run: Callable[..., Any]) -> InputMode:
    """The mode of a loaded script's run(); contradictions are load errors."""
    rawhttp = marked(run, RAWHTTP_ATTR)
    decorated = is_schema_decorated(run)
    if rawhttp and decorated:
        raise EntryScriptError(path, "run() cannot be both @rawhttp and decorated with input/output schemas")
    if rawhttp and marked(run, BATCHED_ATTR):
        raise EntryScriptError(path, "run() cannot be both @rawhttp and @batched: a raw-HTTP run() answers one "
                                     "request")
    parameters = run_parameters(path, run)
    if rawhttp:
        return RawHttpMode(run)
    wants_headers = any(p.name == REQUEST_HEADERS for p in parameters)
    data_parameters = [p for p in parameters if p.name != REQUEST_HEADERS]
    schemas = input_schemas(run) if decorated else {}
    if not schemas:
        return PlainMode(data_parameters[0].name, wants_headers, run)
    unknown = set(schemas) - {p.name for p in data_parameters}
    if unknown:
        message = (f"run() cannot be called: its input_schema names parameter(s) {sorted(unknown)} that run() "
                   "does not take; fix the entry script")
        return UncallableMode(message, run)  # the server warns of it once, at start (runner.prepare_state)
    schema_parameters = []
    for parameter in data_parameters:
        schema = schemas.get(parameter.name)
        required = parameter.default is inspect.Parameter.empty and not (schema and schema.optional)
        schema_parameters.append(SchemaParameter(
            parameter.name, schema.param_type if schema else None, required, bool(schema and schema.convert),
        ))
    return SchemaMode(schema_parameters, wants_headers, undecorated_target(run))


def marked(run: Callable[..., Any], attr: str) -> bool:
    """Whether a decorator of ours (@rawhttp, @batched) marked run(), above or below other decorators."""
    return bool(getattr(innermost(run), attr, False) or getattr(run, attr, False))


def _json_object(request: RawRequest) -> dict[str, Any]:
    content_type = request.header(b"content-type")
    if content_type is not None and not _is_json_type(content_type):
        raise BadInput(
            415, f"Expects Content-Type to be application/json, got {content_type.decode('latin-1')!r}."
        )
    if not request.body.strip():
        raise BadInput(400, "POST body is empty. Expecting a JSON dictionary.")
    try:
        payload = json_limits.loads(request.body)
    except json_limits.JsonTooDeep as error:
        raise BadInput(400, f"POST body is {error} (max_json_depth).") from None
    except orjson.JSONDecodeError as error:
        raise BadInput(400, f"POST body could not be decoded as JSON: {error}") from None
    if not isinstance(payload, dict):
        raise BadInput(400, f"POST body should be a JSON dictionary, got a JSON {_json_kind(payload)}.")
    return payload


def _is_json_type(content_type: bytes) -> bool:
    mimetype = content_type.split(b";", 1)[0].strip().lower()
    return mimetype == b"application/json" or (mimetype.startswith(b"application/") and mimetype.endswith(b"+json"))


def _decode(parameter: SchemaParameter, value: Any) -> Any:
    if parameter.param_type is None or not parameter.convert:
        return value
    return _decode_value(value, parameter.param_type, parameter.name)


def _decode_value(value: Any, param_type: AbstractParameterType, path: str) -> Any:
    """Decode like inference-schema does, but walk nested types ourselves so that an error names
    the nested place (`inputs.table`, `items[2]`) and what it expected there."""
    sample_type = param_type.sample_data_type
    if sample_type is dict:
        if not isinstance(value, dict):
            raise _invalid(path, param_type, f"got a JSON {_json_kind(value)}")
        for key, child in param_type.sample_data_type_map.items():
            if key in value:
                value[key] = _decode_value(value[key], child, f"{path}.{key}")
        return value
    if sample_type in (list, tuple):
        if not isinstance(value, list):
            raise _invalid(path, param_type, f"got a JSON {_json_kind(value)}")
        if param_type.sample_data_type_list:
            child = param_type.sample_data_type_list[0]
            return [_decode_value(item, child, f"{path}[{index}]") for index, item in enumerate(value)]
        return value
    if isinstance(value, sample_type):
        return value
    if isinstance(param_type, NumpyParameterType) and _plain_dtype(param_type.sample_input.dtype):
        return _decode_array(value, param_type, path)
    if isinstance(param_type, PandasParameterType):
        _check_columns(param_type, value, path)
    try:
        return param_type.deserialize_input(value)
    except Exception as error:  # inference-schema raises bare Exceptions for some bad input
        raise _invalid(path, param_type, str(error)) from None


def _plain_dtype(dtype: np.dtype) -> bool:
    """Dtypes inference-schema converts with np.array alone (no record fields, dates or durations)."""
    return dtype.fields is None and dtype.kind not in "mM"


def _decode_array(value: Any, param_type: NumpyParameterType, path: str) -> np.ndarray:
    """NumpyParameterType.deserialize_input for plain dtypes, in one np.array call: the same
    conversion and shape rules, without its per-row Python loop."""
    sample = param_type.sample_input
    if not isinstance(value, list):
        raise _invalid(path, param_type, f"got a JSON {_json_kind(value)}")
    dtype = sample.dtype if param_type.enforce_column_type else None
    try:
        if dtype is not None and dtype.kind == "f" and dtype.itemsize < 8:
            array = _narrow_floats(value, dtype)
        else:
            array = np.array(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise _invalid(path, param_type, str(error)) from None
    if not param_type.enforce_shape:
        return array
    if array.ndim != sample.ndim:
        raise _invalid(path, param_type, f"an array with {sample.ndim} dimensions is expected; "
                                         f"input has {array.ndim} [shape {array.shape}]")
    for dimension in range(1, sample.ndim):
        if array.shape[dimension] != sample.shape[dimension]:
            raise _invalid(path, param_type, f"array has size {array.shape[dimension]} on dimension "
                                             f"#{dimension}, while expected value is {sample.shape[dimension]}")
    return array


def _narrow_floats(value: list[Any], dtype: np.dtype) -> np.ndarray:
    """JSON numbers as float32 or float16. JSON holds no infinity, so one after the cast is a
    number past the type's range: refused (ValueError) rather than handed to run() as inf."""
    with np.errstate(over="ignore"):
        array = np.array(value, dtype=dtype)
    if not np.isfinite(array).all():
        raise ValueError(f"a value is beyond the range of {dtype} (±{np.finfo(dtype).max:.4g})")
    return array


def _invalid(path: str, param_type: AbstractParameterType, detail: str) -> BadInput:
    return BadInput(400, f"Invalid value for parameter '{path}': expected {_expected(param_type)}; {detail}")


def _check_columns(param_type: PandasParameterType, value: Any, path: str) -> None:
    """Name the missing columns of a records-oriented frame, which inference-schema reports only as a
    wrong size on dimension #1."""
    if param_type.orient != "records" or not isinstance(value, list):
        return
    expected = [str(column) for column in param_type.sample_input.columns]
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise _invalid(path, param_type, f"row {index} is a JSON {_json_kind(row)}, not an object")
        missing = [column for column in expected if column not in row]
        if missing:
            raise BadInput(
                400,
                f"Invalid value for parameter '{path}': row {index} is missing column(s) "
                f"{', '.join(missing)}; expected columns {', '.join(expected)}",
            )


def _expected(param_type: AbstractParameterType) -> str:
    """What the client must send, for error messages."""
    if isinstance(param_type, NumpyParameterType):
        sample = param_type.sample_input
        shape = ", ".join(["n", *(str(size) for size in sample.shape[1:])])
        return f"an array of {sample.dtype} with shape ({shape}{',' if sample.ndim == 1 else ''})"
    if isinstance(param_type, PandasParameterType):
        sample = param_type.sample_input
        columns = ", ".join(f"{name} ({dtype})" for name, dtype in sample.dtypes.items())
        return f"a table (orient '{param_type.orient}') with columns {columns}"
    return f"a {type(param_type.sample_input).__name__} like the sample"


def _sample_value(sample: Any) -> Any:
    """A fresh copy of a parameter type's sample, with nested parameter types replaced by theirs."""
    if isinstance(sample, AbstractParameterType):
        return _sample_value(sample.sample_input)
    if isinstance(sample, dict):
        return {key: _sample_value(value) for key, value in sample.items()}
    if isinstance(sample, (list, tuple)):
        return type(sample)(_sample_value(value) for value in sample)
    copy = getattr(sample, "copy", None)
    return copy() if callable(copy) else sample


def _query_values(query: bytes) -> dict[str, Any]:
    """The query string as a dict: each value JSON-parsed when it can be, repeated keys as a list."""
    values: dict[str, Any] = {}
    repeated: set[str] = set()
    for key, raw in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        try:
            value = json_limits.loads(raw)
        except json_limits.JsonTooDeep as error:
            raise BadInput(400, f"Query value {key!r} is {error} (max_json_depth).") from None
        except orjson.JSONDecodeError:
            value = raw
        if key not in values:
            values[key] = value
        elif key in repeated:
            values[key].append(value)
        else:
            values[key] = [values[key], value]
            repeated.add(key)
    return values


def _title_case_headers(request: RawRequest) -> dict[str, str]:
    return {name.decode("latin-1").title(): value.decode("latin-1") for name, value in request.headers}


def _json_kind(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), "object")
