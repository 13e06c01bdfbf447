"""Swagger 2.0 and OpenAPI 3.0/3.1 documents for a scoring service, built once at start from the
entry script's inference-schema samples (or from the user's own files) and served as cached bytes."""

from __future__ import annotations

import copy
import functools
import inspect
import math
from pathlib import Path
from typing import Any, Callable

import orjson
from inference_schema import schema_util
from inference_schema.parameter_types.abstract_parameter_type import AbstractParameterType
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType

from mlscore.scoring.schema_types import input_schemas

Schema = dict[str, Any]

# Our version names, in the order they are listed, with the files a user may supply for each
# (first found wins: Azure lets `swagger.json` override `swagger2.json`).
_USER_FILES: dict[str, tuple[str, ...]] = {
    "2": ("swagger.json", "swagger2.json"),
    "3": ("swagger3.json",),
    "3.1": ("swagger3.1.json",),
}
_ALIASES = {"": "2", "2": "2", "2.0": "2", "3": "3", "3.0": "3", "3.1": "3.1", "3.1.0": "3.1"}
_FROM_INFERENCE_SCHEMA = {"2.0": "2", "3.0": "3", "3.1": "3.1"}
_OPENAPI = {"3": "3.0.3", "3.1": "3.1.0"}

# The server fills this run() parameter from the request headers; clients never send it.
_SERVER_FILLED = "request_headers"
_NUMPY_FORMAT = "numpy.ndarray"
_ERRORS = {
    "400": "The input is not a JSON object, lacks a parameter or does not match the schema.",
    "401": "The API key is missing or wrong.",
    "413": "The body is over the size limit.",
    "415": "The body is not application/json.",
    "431": "The request line and headers are over the size limit, or a request id is over 100 characters.",
    "500": "run() failed.",
    "503": "Not ready yet, or too busy: retry after the Retry-After delay.",
    "504": "run() took longer than the scoring timeout.",
}
_POST_ERRORS = ("400", "401", "413", "415", "431", "500", "503", "504")
_GET_ERRORS = ("400", "401", "413", "431", "500", "503", "504")
_ERROR_RESPONSE: Schema = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}
# Azure's names, which clients generated from Azure's documents (Power BI among them) bind to:
# the operation ids, the body parameter, the `Bearer` apiKey scheme on the Authorization header
# (the same in 2 and 3, so both kinds of client send the same header) and the `default` answer.
_SECURITY_SCHEME = {
    "type": "apiKey",
    "name": "Authorization",
    "in": "header",
    "description": "For example: Bearer abc123",
}
_KEY_REQUIRED = [{"Bearer": []}]
_NO_KEY: list[Schema] = []
_BODY_NAME = "serviceInputPayload"
_BODY_DESCRIPTION = "The input payload for executing the real-time machine learning service."
_DEFAULT_ERROR = "The service failed to execute due to an error."
_NOT_READY = "Not ready yet (init() or the warm-up has not finished): retry after the Retry-After delay."
_SCORED = "The service processed the input correctly and provided a result prediction, if applicable."


class UnsupportedSwaggerVersion(Exception):
    """A requested version that is unknown, or that this script's samples cannot express."""


class SwaggerDocuments:
    """The encoded documents of one service, keyed by version ("2", "3", "3.1")."""

    def __init__(self, documents: dict[str, bytes], generated: frozenset[str] = frozenset(), prefix: str = "") -> None:
        self._documents = documents
        self._generated = generated  # the versions built here, not read from the user's files
        self._prefix = prefix
        self.supported: list[str] = [version for version in _USER_FILES if version in documents]

    @classmethod
    def build(
        cls,
        run: Callable[..., Any] | None,
        *,
        app_root: Path | None,
        service_name: str = "ML service",
        service_version: str = "1.0",
        path_prefix: str = "",
    ) -> SwaggerDocuments:
        decorated = run is not None and schema_util.is_schema_decorated(run)
        if decorated:
            service_input, service_output = _service_input(run), _service_output(run)
            script_versions = {_FROM_INFERENCE_SCHEMA[v] for v in schema_util.get_supported_versions(run)}
        else:
            # An undecorated run() gets the raw body, whatever it is, and may return any JSON.
            service_input = {"description": "Any body: run() receives it as a string."}
            service_output = {"description": "Whatever run() returns, as JSON."}
            script_versions = set(_USER_FILES)
        return cls.from_schemas(service_input, service_output, versions=script_versions, query=decorated,
                                app_root=app_root, service_name=service_name, service_version=service_version,
                                path_prefix=path_prefix)

    @classmethod
    def from_schemas(
        cls,
        service_input: Schema,
        service_output: Schema,
        *,
        versions: set[str] | None = None,
        query: bool = False,
        app_root: Path | None,
        service_name: str = "ML service",
        service_version: str = "1.0",
        path_prefix: str = "",
    ) -> SwaggerDocuments:
        """Documents for a service whose body and answer have these JSON schemas, in `versions`
        (default all); `query`: GET /score takes the input's properties as query values."""
        info = {
            "title": service_name,
            "description": f"Scores requests with {service_name}.",
            "version": service_version,
        }
        prefix = "/" + path_prefix.strip("/") if path_prefix.strip("/") else ""
        service_output = _map_schemas(service_output, _non_finite_as_null)
        documents: dict[str, bytes] = {}
        generated: set[str] = set()
        for version, file_names in _USER_FILES.items():
            user_document = _read_user_document(app_root, file_names)
            if user_document is not None:
                documents[version] = user_document
            elif versions is None or version in versions:
                document = _document(version, info, prefix, service_input, service_output, query)
                documents[version] = _encode(document)
                generated.add(version)
        return cls(documents, frozenset(generated), prefix)

    def with_model(self, metadata: Schema) -> SwaggerDocuments:
        """These documents with the Open Inference Protocol (KServe V2) routes of a model served
        without a script added beside Azure's: server metadata and health, the model's metadata and
        readiness, and infer, whose tensors carry the model's names, shapes and datatypes.
        `metadata` is the model's V2 metadata (kserve_v2.model_metadata). A user's own document is
        served as it is."""
        documents = dict(self._documents)
        for version in self._generated:
            document = orjson.loads(documents[version])
            v2 = version == "2"
            document["paths"] |= _model_paths(v2, self._prefix, metadata["name"])
            schemas = document["definitions"] if v2 else document["components"]["schemas"]
            schemas |= _model_schemas(v2, metadata)
            documents[version] = _encode(document)
        return SwaggerDocuments(documents, self._generated, self._prefix)

    def get(self, version: str | None) -> bytes:
        name = _ALIASES.get(version or "")
        if name is None:
            raise UnsupportedSwaggerVersion(
                f"Swagger version [{version}] is not valid. Supported versions: [{', '.join(_USER_FILES)}]."
            )
        document = self._documents.get(name)
        if document is None:
            raise UnsupportedSwaggerVersion(
                f"Swagger version [{version}] is not supported for this scoring script. "
                f"Supported versions: [{', '.join(self.supported)}]."
            )
        return document


def _encode(document: Any) -> bytes:
    # Samples may hold numpy scalars and non-string dict keys, which inference-schema accepts.
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _read_user_document(app_root: Path | None, file_names: tuple[str, ...]) -> bytes | None:
    if app_root is None:
        return None
    for file_name in file_names:
        path = Path(app_root) / file_name
        if not path.is_file():
            continue
        try:
            # utf-8-sig: editors on Windows often save JSON with a byte-order mark.
            return _encode(orjson.loads(path.read_text(encoding="utf-8-sig")))
        except (UnicodeDecodeError, orjson.JSONDecodeError) as error:
            raise ValueError(f"Swagger file {path} is not valid JSON: {error}") from error
    return None


def _service_input(run: Callable[..., Any]) -> Schema:
    schema = copy.deepcopy(schema_util.get_input_schema(run))
    properties, example = schema.get("properties", {}), schema.get("example", {})
    properties.pop(_SERVER_FILLED, None)
    example.pop(_SERVER_FILLED, None)
    for name, declared in input_schemas(run).items():
        if name in properties:
            _add_shape_bounds(properties[name], example.get(name), declared.param_type)
    # A parameter without a default that the body lacks is answered 400, so it is required.
    required = [
        name
        for name, parameter in inspect.signature(run).parameters.items()
        if name in properties and parameter.default is inspect.Parameter.empty
    ]
    if required:
        schema["required"] = required
    return schema


def _service_output(run: Callable[..., Any]) -> Schema:
    schema = copy.deepcopy(schema_util.get_output_schema(run))
    # output_schema's wrapper keeps no reference to its type, so the sample alone gives the shape.
    _add_shape_bounds(schema, schema.get("example"), None)
    return schema


def _add_shape_bounds(schema: Schema, example: Any, param_type: AbstractParameterType | None) -> None:
    """Pin each array dimension after the first to the sample's size, where the type enforces it.

    inference-schema checks those sizes on input but leaves them out of the schema, so clients
    only learn them from a 400. `param_type` None means the type is out of reach: trust the sample.
    """
    if not getattr(param_type, "enforce_shape", True):
        return
    kind = schema.get("format", "")
    if kind == _NUMPY_FORMAT:
        shape = param_type.sample_input.shape if isinstance(param_type, NumpyParameterType) else None
        _bound_dimensions(schema, shape or _list_shape(example))
    elif kind == "pandas.DataFrame:values":
        _bound_dimensions(schema, _list_shape(example)[:2])
    elif kind == "pandas.DataFrame:split" and isinstance(example, dict):
        _bound_dimensions(schema["properties"]["data"], _list_shape(example.get("data"))[:2])
    elif kind.startswith("pandas.DataFrame:"):
        return  # records already lists its columns as required; the other orients key by label
    elif schema.get("type") == "object" and isinstance(example, dict):
        children = getattr(param_type, "sample_data_type_map", {})
        for key, child in schema.get("properties", {}).items():
            if key in example:
                _add_shape_bounds(child, example[key], children.get(key))
    elif schema.get("type") == "array" and isinstance(example, list) and example:
        # inference-schema checks every item of a list against the type of its first sample item.
        children = getattr(param_type, "sample_data_type_list", [])
        _add_shape_bounds(schema["items"], example[0], children[0] if children else None)


def _bound_dimensions(array: Schema, shape: tuple[int, ...]) -> None:
    node = array
    for size in shape[1:]:  # dimension 0 is the batch: any number of rows is fine
        node = node.get("items")
        if not isinstance(node, dict) or node.get("type") != "array":
            return
        node["minItems"] = node["maxItems"] = size


def _list_shape(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _map_schemas(schema: Any, convert: Callable[[Schema], Schema]) -> Any:
    """A copy of `schema` with `convert` applied to it and to every subschema; examples stay data."""
    if not isinstance(schema, dict):
        return schema
    copied: Schema = {}
    for keyword, value in schema.items():
        if keyword in ("properties", "patternProperties", "definitions", "$defs"):
            copied[keyword] = {name: _map_schemas(child, convert) for name, child in value.items()}
        elif keyword in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            children = value if isinstance(value, list) else [value]
            converted = [_map_schemas(child, convert) for child in children]
            copied[keyword] = converted if isinstance(value, list) else converted[0]
        else:
            copied[keyword] = value
    return convert(copied)


def _non_finite_as_null(schema: Schema) -> Schema:
    # JSON has no NaN or Infinity: a float result that is one is sent as null (orjson's encoding).
    if schema.get("type") == "number":
        schema["nullable"] = True
    return schema


def _nullable_as_extension(schema: Schema) -> Schema:
    # Swagger 2.0 has no `nullable`; `x-nullable` is the extension its code generators read.
    if "nullable" in schema:
        schema["x-nullable"] = schema.pop("nullable")
    return schema


def _nullable_as_null_type(schema: Schema) -> Schema:
    # OpenAPI 3.1 is plain JSON Schema: `nullable` is gone and "null" is a type like the others.
    if schema.pop("nullable", False) is not True:
        return schema
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema["type"] = types if "null" in types else [*types, "null"]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


_SCHEMA_DIALECTS: dict[str, Callable[[Schema], Schema]] = {
    "2": _nullable_as_extension,
    "3": lambda schema: schema,
    "3.1": _nullable_as_null_type,
}


def _document(
    version: str, info: Schema, prefix: str, service_input: Schema, service_output: Schema, decorated: bool
) -> Schema:
    service_input = _map_schemas(service_input, _SCHEMA_DIALECTS[version])
    service_output = _map_schemas(service_output, _SCHEMA_DIALECTS[version])
    schemas = {
        "ServiceInput": service_input,
        "ServiceOutput": service_output,
        "ErrorResponse": _ERROR_RESPONSE,
    }
    paths = _paths(version == "2", prefix, service_input if decorated else None)
    if version == "2":
        return {
            "swagger": "2.0",
            "info": info,
            "schemes": ["https"],  # Azure's choice: a client generated from the document calls https
            "consumes": ["application/json"],
            "produces": ["application/json"],
            "securityDefinitions": {"Bearer": _SECURITY_SCHEME},
            "paths": paths,
            "definitions": schemas,
        }
    # Like Azure's, no `servers`: tools then call the host the document came from.
    return {
        "openapi": _OPENAPI[version],
        "info": info,
        "security": _KEY_REQUIRED,
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"Bearer": _SECURITY_SCHEME}},
    }


def _ref(v2: bool, name: str) -> Schema:
    return {"$ref": ("#/definitions/" if v2 else "#/components/schemas/") + name}


def _response(v2: bool, description: str, schema: Schema, media_type: str = "application/json") -> Schema:
    if v2:
        return {"description": description, "schema": schema}
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _responses(v2: bool, ok: Schema, errors: dict[str, str], error: str = "ErrorResponse") -> Schema:
    # Our statuses are listed as they are; `default` is Azure's catch-all, which clients expect.
    answers = {"200": ok} | {code: _response(v2, text, _ref(v2, error)) for code, text in errors.items()}
    return answers | {"default": _response(v2, _DEFAULT_ERROR, _ref(v2, error))}


def _paths(v2: bool, prefix: str, query_input: Schema | None) -> Schema:
    """The three routes under Azure's operation ids; `query_input` is the decorated input that
    GET /score takes as query."""
    ref = functools.partial(_ref, v2)
    response = functools.partial(_response, v2)
    responses = functools.partial(_responses, v2)

    def scoring(operation_id: str, description: str, error_codes: tuple[str, ...]) -> Schema:
        ok = response(_SCORED, ref("ServiceOutput"))
        return {
            "operationId": operation_id,
            "description": description,
            "security": _KEY_REQUIRED,
            "responses": responses(ok, {code: _ERRORS[code] for code in error_codes}),
        }

    health_check = {
        "operationId": "ServiceHealthCheck",
        "description": "Simple health check endpoint to ensure the service is up at any given point.",
        "security": _NO_KEY,
        "responses": responses(response(
            "If service is up and running, this response will be returned with the content 'Healthy'",
            {"type": "string", "example": "Healthy"}, "text/plain"), {"503": _NOT_READY}),
    }
    post = scoring("RunMLService", "Run web service's model and get the prediction output", _POST_ERRORS)
    if v2:
        health_check["produces"] = ["text/plain", "application/json"]  # Healthy, or the error's JSON
        post["parameters"] = [{"name": _BODY_NAME, "in": "body", "description": _BODY_DESCRIPTION,
                               "required": True, "schema": ref("ServiceInput")}]
    else:
        body = {"application/json": {"schema": ref("ServiceInput")}}
        post["requestBody"] = {"description": _BODY_DESCRIPTION, "required": True, "content": body}
    score = {"post": post}
    if query_input is not None:
        # Azure documents no GET /score: ours has an id of its own, next to RunMLService.
        required = set(query_input.get("required", []))
        score["get"] = scoring("RunMLServiceGet", "Run web service's model on parameters sent as JSON query "
                               "values and get the prediction output", _GET_ERRORS)
        score["get"]["parameters"] = [
            _query_parameter(v2, name, schema, name in required)
            for name, schema in query_input.get("properties", {}).items()
        ]
    version_parameter = {"name": "version", "in": "query", "required": False, "description": "2 (default), 3 or 3.1"}
    version_parameter |= {"type": "string"} if v2 else {"schema": {"type": "string"}}
    swagger = {
        "operationId": "GetSwaggerSpec",
        "description": "Get the Swagger specification.",
        "security": _NO_KEY,
        "parameters": [version_parameter],
        "responses": responses(response("The Swagger specification.", {"type": "object"}),
                               {"404": "Unknown version, or one this script cannot express."}),
    }
    return {
        f"{prefix}/": {"get": health_check},
        f"{prefix}/score": score,
        f"{prefix}/swagger.json": {"get": swagger},
    }


def _query_parameter(v2: bool, name: str, schema: Schema, required: bool) -> Schema:
    parameter: Schema = {"name": name, "in": "query", "required": required}
    if v2:
        # Swagger 2.0 query values are plain strings; the server parses each one as JSON.
        return {**parameter, "type": "string", "description": f"{name} as JSON, as in the POST body."}
    return {**parameter, "content": {"application/json": {"schema": schema}}}


# The Open Inference Protocol (KServe V2) routes of a model served without a script (`with_model`).
_V2_TAG = "Open Inference Protocol (KServe V2)"
# Any content type is taken (the protocol's JSON, or JSON followed by binary tensors): no 415.
_V2_INFER_ERRORS = {code: text for code, text in _ERRORS.items() if code != "415"} | {
    "400": "The body breaks the protocol, or a tensor the model's signature (name, datatype, shape).",
    "500": "The model failed.",
}
_BINARY_EXTENSION = ("With the binary tensor extension the body is this JSON followed by the tensors' raw bytes, "
                     "and the Inference-Header-Content-Length header gives the JSON's length.")


def _model_paths(v2: bool, prefix: str, name: str) -> Schema:
    """The V2 routes the server answers for model `name` (each also under /versions/1)."""
    ref = functools.partial(_ref, v2)
    response = functools.partial(_response, v2)

    def probe(operation_id: str, description: str, schema: str, not_ready: str | None = None) -> Schema:
        answers = {"200": response(description, ref(schema))}
        if not_ready is not None:
            answers["503"] = response(not_ready, ref(schema))
        return {"tags": [_V2_TAG], "operationId": operation_id, "description": description, "security": _NO_KEY,
                "responses": answers | {"default": response(_DEFAULT_ERROR, ref("ErrorResponse"))}}

    length_parameter: Schema = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                                "description": "The length of the JSON part, when binary tensor data follows it."}
    length_parameter |= {"type": "integer"} if v2 else {"schema": {"type": "integer", "minimum": 0}}
    infer: Schema = {
        "tags": [_V2_TAG],
        "operationId": "V2ModelInfer",
        "description": f"Run model {name} on tensors. JSON tensors carry their values flat, in row-major order. "
                       f"{_BINARY_EXTENSION} Outputs asked for as binary data come back the same way "
                       "(application/octet-stream).",
        "security": _KEY_REQUIRED,
        "parameters": [length_parameter],
        "responses": _responses(v2, response("The model's outputs.", ref("V2InferenceResponse")),
                                _V2_INFER_ERRORS, "V2ErrorResponse"),
    }
    if v2:
        infer["parameters"].append({"name": "inferenceRequest", "in": "body", "required": True,
                                    "schema": ref("V2InferenceRequest")})
    else:
        infer["requestBody"] = {"required": True,
                                "content": {"application/json": {"schema": ref("V2InferenceRequest")}}}
    model = f"{prefix}/v2/models/{name}"
    return {
        f"{prefix}/v2": {"get": probe("V2ServerMetadata", "The server's name, version and protocol extensions.",
                                      "V2ServerMetadata")},
        f"{prefix}/v2/health/live": {"get": probe("V2ServerLive", "Whether the server answers.", "V2ServerLive")},
        f"{prefix}/v2/health/ready": {"get": probe("V2ServerReady", "Whether the model is loaded and warm.",
                                                   "V2ServerReady", _NOT_READY)},
        model: {"get": probe("V2ModelMetadata", f"Model {name}'s input and output tensors: names, datatypes and "
                             "shapes (-1: any size).", "V2ModelMetadata")},
        f"{model}/ready": {"get": probe("V2ModelReady", f"Whether model {name} is loaded and warm.",
                                        "V2ModelReady", _NOT_READY)},
        f"{model}/infer": {"post": infer},
    }


def _model_schemas(v2: bool, metadata: Schema) -> Schema:
    """The schemas of the V2 routes' bodies, the tensors named, shaped and typed as the model's."""
    inputs = [_v2_tensor(tensor, "input") for tensor in metadata["inputs"]]
    outputs = [_v2_tensor(tensor, "output") for tensor in metadata["outputs"]]
    text, flag = {"type": "string"}, {"type": "boolean"}
    tensor_metadata = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {"name": text, "datatype": text, "shape": {"type": "array", "items": {"type": "integer"}}},
    }
    tensors = {"type": "array", "items": tensor_metadata}
    return {
        "V2ErrorResponse": {"type": "object", "required": ["error"], "properties": {"error": text, "message": text}},
        "V2ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {"name": text, "version": text, "extensions": {"type": "array", "items": text}},
        },
        "V2ServerLive": {"type": "object", "required": ["live"], "properties": {"live": flag}},
        "V2ServerReady": {"type": "object", "required": ["ready"], "properties": {"ready": flag, "message": text}},
        "V2ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {"name": text, "versions": {"type": "array", "items": text}, "platform": text,
                           "inputs": tensors, "outputs": tensors},
            "example": metadata,
        },
        "V2ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": text, "ready": flag, "error": text, "message": text},
        },
        "V2InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string", "description": "Returned in the response."},
                "parameters": {"type": "object",
                               "description": "binary_data_output: true answers every output as binary data."},
                "inputs": {"type": "array", "items": _any_of_tensors(v2, inputs),
                           "minItems": len(inputs), "maxItems": len(inputs)},
                "outputs": {
                    "type": "array",
                    "description": "The outputs to answer with (default: all, as JSON).",
                    "items": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string", "enum": [tensor["name"] for tensor in metadata["outputs"]]},
                        "parameters": {"type": "object",
                                       "description": "binary_data: true answers this output as binary data."},
                    }},
                },
            },
            "example": {"inputs": [tensor["example"] for tensor in inputs]},
        },
        "V2InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {"model_name": {"type": "string", "enum": [metadata["name"]]}, "id": text,
                           "outputs": {"type": "array", "items": _any_of_tensors(v2, outputs)}},
            "example": {"model_name": metadata["name"], "outputs": [tensor["example"] for tensor in outputs]},
        },
    }


def _v2_tensor(tensor: Schema, role: str) -> Schema:
    """One of the model's tensors as the protocol's JSON carries it: its name and datatype fixed, a
    shape of the model's rank, the values flat in row-major order; zeros as the example (dynamic
    dimensions 1)."""
    name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
    item_type, zero = _json_type(datatype)
    values: Schema = {"type": "array", "items": {"type": item_type},
                      "description": "The values, flat in row-major order."}
    if all(dim >= 0 for dim in shape):
        values["minItems"] = values["maxItems"] = math.prod(shape)
    example_shape = [dim if dim >= 0 else 1 for dim in shape]
    return {
        "type": "object",
        "description": f"The model's {role} '{name}': {datatype}, shape {shape} (-1: any size).",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "enum": [name]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                      "minItems": len(shape), "maxItems": len(shape),
                      "description": f"The model's shape is {shape}: each -1 may be any size, the others are fixed."},
            "datatype": {"type": "string", "enum": [datatype]},
            "data": values,
            "parameters": {"type": "object",
                           "description": "binary_data_size: the tensor's bytes follow the JSON in place of data."},
        },
        "example": {"name": name, "shape": example_shape, "datatype": datatype,
                    "data": [zero] * math.prod(example_shape)},
    }


def _any_of_tensors(v2: bool, tensors: list[Schema]) -> Schema:
    if len(tensors) == 1:
        return tensors[0]
    if not v2:
        return {"oneOf": tensors}
    # Swagger 2.0 has no oneOf: one object whose name and datatype are any of the tensors'.
    item_types = {tensor["properties"]["data"]["items"]["type"] for tensor in tensors}
    return {
        "type": "object",
        "description": " ".join(tensor["description"] for tensor in tensors),
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "enum": [tensor["properties"]["name"]["enum"][0] for tensor in tensors]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string",
                         "enum": sorted({tensor["properties"]["datatype"]["enum"][0] for tensor in tensors})},
            "data": {"type": "array", "items": {"type": item_types.pop()} if len(item_types) == 1 else {}},
            "parameters": tensors[0]["properties"]["parameters"],
        },
    }


def _json_type(datatype: str) -> tuple[str, Any]:
    """The JSON type of a V2 datatype's values, and its zero."""
    if datatype == "BOOL":
        return "boolean", False
    if datatype.startswith(("INT", "UINT")):
        return "integer", 0
    if datatype.startswith("FP"):
        return "number", 0.0
    return "string", ""
