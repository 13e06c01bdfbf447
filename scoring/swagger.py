"""Swagger 2.0 and OpenAPI 3.0/3.1 documents for a scoring service, built once at start from the
entry script's inference-schema samples (or from the user's own files) and served as cached bytes."""

from __future__ import annotations

import copy
import inspect
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

    def __init__(self, documents: dict[str, bytes]) -> None:
        self._documents = documents
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
        for version, file_names in _USER_FILES.items():
            user_document = _read_user_document(app_root, file_names)
            if user_document is not None:
                documents[version] = user_document
            elif versions is None or version in versions:
                document = _document(version, info, prefix, service_input, service_output, query)
                documents[version] = _encode(document)
        return cls(documents)

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


def _paths(v2: bool, prefix: str, query_input: Schema | None) -> Schema:
    """The three routes under Azure's operation ids; `query_input` is the decorated input that
    GET /score takes as query."""

    def ref(name: str) -> Schema:
        return {"$ref": ("#/definitions/" if v2 else "#/components/schemas/") + name}

    def response(description: str, schema: Schema, media_type: str = "application/json") -> Schema:
        if v2:
            return {"description": description, "schema": schema}
        return {"description": description, "content": {media_type: {"schema": schema}}}

    def responses(ok: Schema, errors: dict[str, str]) -> Schema:
        # Our statuses are listed as they are; `default` is Azure's catch-all, which clients expect.
        answers = {"200": ok} | {code: response(text, ref("ErrorResponse")) for code, text in errors.items()}
        return answers | {"default": response(_DEFAULT_ERROR, ref("ErrorResponse"))}

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
