"""Swagger/OpenAPI documents built from inference-schema samples: validity, versions, shapes, user files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
import pandas as pd
import pytest
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema
from openapi_spec_validator import (
    OpenAPIV2SpecValidator,
    OpenAPIV30SpecValidator,
    OpenAPIV31SpecValidator,
    validate,
)

from mlscore.scoring.swagger import SwaggerDocuments, UnsupportedSwaggerVersion

# inference-schema keys its registry by module and function name, so every script below has its own name.
NUMPY_SAMPLE = np.array([[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]])
NUMPY_OUTPUT = np.array([3726.995])
FRAME_SAMPLE = pd.DataFrame({"price": [1.5, 2.25], "city": ["Oslo", "Lima"], "rooms": [3, 4]})
NESTED_NUMPY_SAMPLE = np.array([[0.5, 1.5, 2.5]])
MIXED_LIST_SAMPLE = [1, "two", 3.0]


@input_schema("data", NumpyParameterType(NUMPY_SAMPLE))
@output_schema(NumpyParameterType(NUMPY_OUTPUT))
def run_numpy(data: np.ndarray, request_headers: dict | None = None) -> list[float]:
    return [3726.995]


@input_schema("frame", PandasParameterType(FRAME_SAMPLE))
@output_schema(StandardPythonParameterType([0.5, 0.25]))
def run_pandas(frame: pd.DataFrame) -> list[float]:
    return [0.5, 0.25]


@input_schema("frame", PandasParameterType(FRAME_SAMPLE, orient="values"))
@output_schema(StandardPythonParameterType([0.5, 0.25]))
def run_pandas_values(frame: pd.DataFrame) -> list[float]:
    return [0.5, 0.25]


@input_schema(
    "inputs",
    StandardPythonParameterType(
        {"features": NumpyParameterType(NESTED_NUMPY_SAMPLE), "frame": PandasParameterType(FRAME_SAMPLE)}
    ),
)
@input_schema("threshold", StandardPythonParameterType(0.5))
@output_schema(NumpyParameterType(np.zeros((1, 2, 4))))
def run_nested(inputs: dict, threshold: float = 0.5) -> list:
    return []


@input_schema("data", StandardPythonParameterType(MIXED_LIST_SAMPLE))
@output_schema(StandardPythonParameterType("ok"))
def run_mixed_list(data: list) -> str:
    return "ok"


@input_schema("data", NumpyParameterType(NUMPY_SAMPLE, enforce_shape=False))
def run_free_shape(data: np.ndarray) -> list:
    return []


class NullableText(StandardPythonParameterType):
    """A user-defined type whose schema uses OpenAPI 3.0's `nullable`."""

    def input_to_swagger(self) -> dict[str, Any]:
        return {**super().input_to_swagger(), "nullable": True}


@input_schema("note", NullableText("hello"))
@output_schema(NullableText("done"))
def run_nullable(note: str | None) -> str:
    return "done"


def run_undecorated(data: str) -> str:
    return data


VALIDATORS = {"2": OpenAPIV2SpecValidator, "3": OpenAPIV30SpecValidator, "3.1": OpenAPIV31SpecValidator}
SCRIPTS: list[Callable[..., Any] | None] = [
    run_numpy,
    run_pandas,
    run_pandas_values,
    run_nested,
    run_mixed_list,
    run_free_shape,
    run_nullable,
    run_undecorated,
    None,
]


def build(run: Callable[..., Any] | None, app_root: Path | None = None, **kwargs: Any) -> SwaggerDocuments:
    return SwaggerDocuments.build(run, app_root=app_root, **kwargs)


def document(run: Callable[..., Any] | None, version: str = "3", **kwargs: Any) -> dict[str, Any]:
    return orjson.loads(build(run, **kwargs).get(version))


def schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["definitions"] if "swagger" in doc else doc["components"]["schemas"]


@pytest.mark.parametrize("run", SCRIPTS, ids=lambda run: getattr(run, "__name__", "none"))
def test_every_supported_version_validates(run: Callable[..., Any] | None) -> None:
    documents = build(run)
    assert documents.supported, "a script must offer at least one version"
    for version in documents.supported:
        validate(orjson.loads(documents.get(version)), cls=VALIDATORS[version])


@pytest.mark.parametrize(
    ("asked", "field", "value"),
    [
        (None, "swagger", "2.0"),
        ("", "swagger", "2.0"),
        ("2", "swagger", "2.0"),
        ("2.0", "swagger", "2.0"),
        ("3", "openapi", "3.0.3"),
        ("3.0", "openapi", "3.0.3"),
        ("3.1", "openapi", "3.1.0"),
        ("3.1.0", "openapi", "3.1.0"),
    ],
)
def test_version_aliases_select_the_document(asked: str | None, field: str, value: str) -> None:
    assert orjson.loads(build(run_numpy).get(asked))[field] == value


def test_decorated_script_supports_all_versions_in_order() -> None:
    assert build(run_numpy).supported == ["2", "3", "3.1"]


def test_unknown_version_names_the_valid_ones() -> None:
    with pytest.raises(UnsupportedSwaggerVersion) as raised:
        build(run_numpy).get("4")
    assert str(raised.value) == "Swagger version [4] is not valid. Supported versions: [2, 3, 3.1]."


def test_mixed_type_list_sample_drops_swagger_2() -> None:
    documents = build(run_mixed_list)
    assert documents.supported == ["3", "3.1"]
    with pytest.raises(UnsupportedSwaggerVersion) as raised:
        documents.get("2")
    assert "not supported for this scoring script" in str(raised.value)
    assert "Supported versions: [3, 3.1]." in str(raised.value)


def test_numpy_sample_keeps_inner_dimension_bounds() -> None:
    for version in ("2", "3", "3.1"):
        data = schemas(document(run_numpy, version))["ServiceInput"]["properties"]["data"]
        assert "minItems" not in data and "maxItems" not in data  # the batch dimension stays free
        assert data["items"]["minItems"] == data["items"]["maxItems"] == 10


def test_numpy_shape_not_enforced_gets_no_bounds() -> None:
    data = schemas(document(run_free_shape))["ServiceInput"]["properties"]["data"]
    assert "minItems" not in data["items"] and "maxItems" not in data["items"]


def test_numpy_nested_in_a_dict_keeps_inner_dimension_bounds() -> None:
    inputs = schemas(document(run_nested))["ServiceInput"]["properties"]["inputs"]
    features = inputs["properties"]["features"]
    assert "minItems" not in features
    assert features["items"]["minItems"] == features["items"]["maxItems"] == 3


def test_output_sample_keeps_inner_dimension_bounds() -> None:
    for version in ("2", "3", "3.1"):
        output = schemas(document(run_nested, version))["ServiceOutput"]
        assert "minItems" not in output
        assert output["items"]["minItems"] == output["items"]["maxItems"] == 2
        assert output["items"]["items"]["minItems"] == output["items"]["items"]["maxItems"] == 4


def test_pandas_records_sample_requires_its_columns() -> None:
    frame = schemas(document(run_pandas))["ServiceInput"]["properties"]["frame"]
    assert sorted(frame["items"]["required"]) == ["city", "price", "rooms"]
    assert "minItems" not in frame


def test_pandas_values_sample_keeps_column_count() -> None:
    frame = schemas(document(run_pandas_values))["ServiceInput"]["properties"]["frame"]
    assert "minItems" not in frame
    assert frame["items"]["minItems"] == frame["items"]["maxItems"] == 3


def test_examples_equal_the_samples() -> None:
    numpy_schemas = schemas(document(run_numpy))
    assert numpy_schemas["ServiceInput"]["example"] == {"data": NUMPY_SAMPLE.tolist()}
    assert numpy_schemas["ServiceOutput"]["example"] == NUMPY_OUTPUT.tolist()
    frame_example = schemas(document(run_pandas))["ServiceInput"]["example"]["frame"]
    assert frame_example == json.loads(FRAME_SAMPLE.to_json(orient="records"))


def test_input_lists_parameters_without_default_as_required() -> None:
    assert schemas(document(run_nested))["ServiceInput"]["required"] == ["inputs"]


def test_request_headers_parameter_is_left_to_the_server() -> None:
    service_input = schemas(document(run_numpy))["ServiceInput"]
    assert list(service_input["properties"]) == ["data"]
    assert list(service_input["example"]) == ["data"]


def test_decorated_score_also_takes_parameters_as_query() -> None:
    v3_get = document(run_nested, "3")["paths"]["/score"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in v3_get["parameters"]] == [
        ("inputs", "query", True),
        ("threshold", "query", False),
    ]
    v2_get = document(run_nested, "2")["paths"]["/score"]["get"]
    assert all(parameter["type"] == "string" for parameter in v2_get["parameters"])


def test_undecorated_script_accepts_any_body_in_every_version() -> None:
    documents = build(run_undecorated)
    assert documents.supported == ["2", "3", "3.1"]
    doc = orjson.loads(documents.get("3"))
    assert "type" not in doc["components"]["schemas"]["ServiceInput"]
    assert "type" not in doc["components"]["schemas"]["ServiceOutput"]
    assert list(doc["paths"]["/score"]) == ["post"]
    assert build(None).supported == ["2", "3", "3.1"]


def test_template_carries_service_name_version_and_prefix() -> None:
    v2 = document(run_numpy, "2", service_name="house-prices", service_version="7", path_prefix="/api/")
    assert v2["info"]["title"] == "house-prices" and v2["info"]["version"] == "7"
    assert sorted(v2["paths"]) == ["/api/", "/api/score", "/api/swagger.json"]
    post = v2["paths"]["/api/score"]["post"]
    assert post["responses"]["200"]["schema"] == {"$ref": "#/definitions/ServiceOutput"}
    for code in ("400", "415", "500", "503", "504"):
        assert post["responses"][code]["schema"] == {"$ref": "#/definitions/ErrorResponse"}
    assert v2["definitions"]["ErrorResponse"]["required"] == ["message"]
    body = document(run_numpy, "3")["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ServiceInput"}


def operation_ids(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(path, method): operation["operationId"] for path, item in doc["paths"].items()
            for method, operation in item.items()}


@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_operations_carry_azures_operation_ids(version: str) -> None:
    assert operation_ids(document(run_numpy, version, path_prefix="api")) == {
        ("/api/", "get"): "ServiceHealthCheck",
        ("/api/score", "post"): "RunMLService",
        ("/api/score", "get"): "RunMLServiceGet",  # Azure documents no GET /score: an id of our own
        ("/api/swagger.json", "get"): "GetSwaggerSpec",
    }


def test_score_body_is_azures_service_input_payload() -> None:
    description = "The input payload for executing the real-time machine learning service."
    v2_post = document(run_numpy, "2")["paths"]["/score"]["post"]
    assert v2_post["parameters"] == [{
        "name": "serviceInputPayload", "in": "body", "description": description, "required": True,
        "schema": {"$ref": "#/definitions/ServiceInput"},
    }]
    for version in ("3", "3.1"):
        body = document(run_numpy, version)["paths"]["/score"]["post"]["requestBody"]
        assert body["description"] == description and body["required"] is True


@pytest.mark.parametrize("run", SCRIPTS, ids=lambda run: getattr(run, "__name__", "none"))
def test_every_operation_has_a_default_error_response_beside_ours(run: Callable[..., Any] | None) -> None:
    documents = build(run)
    for version in documents.supported:
        doc = orjson.loads(documents.get(version))
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                default = operation["responses"]["default"]
                assert default["description"] == "The service failed to execute due to an error."
                schema = default["schema"] if version == "2" else default["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/ErrorResponse"), (version, path, method)
    post = document(run_numpy, "3")["paths"]["/score"]["post"]["responses"]
    assert {"400", "401", "413", "415", "431", "500", "503", "504", "default"} <= set(post)


def test_swagger_2_names_https_and_openapi_3_names_no_servers() -> None:
    assert document(run_numpy, "2")["schemes"] == ["https"]
    assert "servers" not in document(run_numpy, "3") and "servers" not in document(run_numpy, "3.1")


AZURE_SECURITY_SCHEME = {
    "type": "apiKey",
    "name": "Authorization",
    "in": "header",
    "description": "For example: Bearer abc123",
}


@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_security_scheme_is_azures_bearer_api_key_on_the_authorization_header(version: str) -> None:
    doc = document(run_numpy, version)
    schemes = doc["securityDefinitions"] if version == "2" else doc["components"]["securitySchemes"]
    assert schemes == {"Bearer": AZURE_SECURITY_SCHEME}
    paths = doc["paths"]
    assert paths["/score"]["post"]["security"] == paths["/score"]["get"]["security"] == [{"Bearer": []}]
    # The routes the server leaves open say so, also where OpenAPI 3 asks for the key everywhere as Azure's does.
    assert paths["/"]["get"]["security"] == paths["/swagger.json"]["get"]["security"] == []
    if version != "2":
        assert doc["security"] == [{"Bearer": []}]


def test_onnx_signature_documents_use_the_same_names() -> None:
    signature = {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "number"}}}}
    documents = SwaggerDocuments.from_schemas(signature, signature, app_root=None)
    for version in ("2", "3", "3.1"):
        doc = orjson.loads(documents.get(version))
        validate(doc, cls=VALIDATORS[version])
        assert operation_ids(doc) == {
            ("/", "get"): "ServiceHealthCheck",
            ("/score", "post"): "RunMLService",
            ("/swagger.json", "get"): "GetSwaggerSpec",
        }
    assert orjson.loads(documents.get("2"))["paths"]["/score"]["post"]["parameters"][0]["name"] == "serviceInputPayload"


def test_numpy_float_output_stays_nullable_in_every_dialect() -> None:
    # JSON has no NaN: such a result is sent as null, which every version of the document allows.
    assert schemas(document(run_numpy, "2"))["ServiceOutput"]["items"]["x-nullable"] is True
    assert schemas(document(run_numpy, "3"))["ServiceOutput"]["items"]["nullable"] is True
    assert schemas(document(run_numpy, "3.1"))["ServiceOutput"]["items"]["type"] == ["number", "null"]


def test_openapi_31_replaces_nullable_with_a_null_type() -> None:
    assert schemas(document(run_nullable, "3"))["ServiceInput"]["properties"]["note"]["nullable"] is True
    v31 = document(run_nullable, "3.1")
    assert b"nullable" not in orjson.dumps(v31)
    assert schemas(v31)["ServiceInput"]["properties"]["note"]["type"] == ["string", "null"]
    assert schemas(v31)["ServiceOutput"]["type"] == ["string", "null"]
    assert schemas(document(run_nullable, "2"))["ServiceOutput"]["x-nullable"] is True


def test_get_returns_the_same_cached_bytes() -> None:
    documents = build(run_numpy)
    first = documents.get("3")
    assert isinstance(first, bytes)
    assert documents.get("3") is first
    assert documents.get("3.0") is first


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def test_user_files_win_over_generated_documents(tmp_path: Path) -> None:
    write_json(tmp_path / "swagger2.json", {"swagger": "2.0", "info": {"title": "mine-2"}})
    write_json(tmp_path / "swagger3.json", {"openapi": "3.0.3", "info": {"title": "mine-3"}})
    write_json(tmp_path / "swagger3.1.json", {"openapi": "3.1.0", "info": {"title": "mine-3.1"}})
    documents = build(run_numpy, tmp_path)
    for version in ("2", "3", "3.1"):
        assert orjson.loads(documents.get(version))["info"]["title"] == f"mine-{version}"


def test_swagger_json_wins_over_swagger2_json(tmp_path: Path) -> None:
    write_json(tmp_path / "swagger.json", {"info": {"title": "plain"}})
    write_json(tmp_path / "swagger2.json", {"info": {"title": "numbered"}})
    assert orjson.loads(build(run_numpy, tmp_path).get("2"))["info"]["title"] == "plain"


def test_user_file_offers_a_version_the_samples_cannot(tmp_path: Path) -> None:
    write_json(tmp_path / "swagger2.json", {"info": {"title": "hand-written"}})
    documents = build(run_mixed_list, tmp_path)
    assert documents.supported == ["2", "3", "3.1"]
    assert orjson.loads(documents.get("2"))["info"]["title"] == "hand-written"


def test_broken_user_file_fails_the_build_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "swagger3.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="swagger3.json"):
        build(run_numpy, tmp_path)


class GeneratedClient:
    """What a client generator makes of a served document, and nothing more: operations found by
    operationId, arguments placed by parameter name, the key sent as the security scheme says."""

    def __init__(self, http: Any, document: dict[str, Any], key: str) -> None:
        self.http, self.document, self.key = http, document, key
        self.v2 = "swagger" in document

    def call(self, operation_id: str, **arguments: Any) -> Any:
        path, method, operation = next(
            (path, method, operation) for path, item in self.document["paths"].items()
            for method, operation in item.items() if operation["operationId"] == operation_id
        )
        scheme = self.document["schemes"][0] if self.v2 else "http"
        request: dict[str, Any] = {"headers": self._credentials(operation), "params": {}}
        for parameter in operation.get("parameters", []):
            if parameter["name"] not in arguments:
                continue
            value = arguments.pop(parameter["name"])
            if parameter["in"] == "body":
                request["json"] = value
            else:
                assert parameter["in"] == "query"
                request["params"][parameter["name"]] = value
        if not self.v2 and "requestBody" in operation:
            assert list(operation["requestBody"]["content"]) == ["application/json"]
            request["json"] = arguments.pop("body")
        assert not arguments, f"{operation_id} has no parameters {sorted(arguments)}"
        return self.http.request(method.upper(), f"{scheme}://testserver{path}", **request)

    def _credentials(self, operation: dict[str, Any]) -> dict[str, str]:
        schemes = self.document["securityDefinitions"] if self.v2 else self.document["components"]["securitySchemes"]
        headers = {}
        for requirement in operation.get("security", self.document.get("security", [])):
            for name in requirement:
                scheme = schemes[name]
                assert (scheme["type"], scheme["in"]) == ("apiKey", "header")
                # Azure's clients take the value's form from the example: "For example: Bearer abc123".
                example = scheme["description"].removeprefix("For example: ")
                headers[scheme["name"]] = example.replace("abc123", self.key)
        return headers


@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_client_generated_from_the_document_scores_with_the_key(client_for, version: str) -> None:
    key = "k" * 32
    http = client_for("contract.py", auth_key=[key])
    served = http.get("/swagger.json", params={"version": version}).json()
    client = GeneratedClient(http, served, key)
    payload = {"data": [[1.0, 2.0, 3.0]]}
    if version == "2":
        response = client.call("RunMLService", serviceInputPayload=payload)
    else:
        response = client.call("RunMLService", body=payload)
    assert response.status_code == 200, response.text
    assert response.json() == [6.0]
    assert client.call("ServiceHealthCheck").text == "Healthy"
    assert client.call("GetSwaggerSpec", version=version).json() == served
    assert GeneratedClient(http, served, "wrong").call("RunMLService", **(
        {"serviceInputPayload": payload} if version == "2" else {"body": payload})).status_code == 401


MODEL_METADATA = {
    "name": "ranker", "versions": ["1"], "platform": "onnx",
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]},
               {"name": "mask", "datatype": "BOOL", "shape": [2, 3]}],
    "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
}
MODEL_SIGNATURE = {"type": "object", "properties": {"features": {"type": "array", "items": {"type": "number"}}}}


def model_documents(app_root: Path | None = None) -> SwaggerDocuments:
    documents = SwaggerDocuments.from_schemas(MODEL_SIGNATURE, MODEL_SIGNATURE, app_root=app_root, path_prefix="/api")
    return documents.with_model(MODEL_METADATA)


@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_model_documents_add_the_v2_routes_and_validate(version: str) -> None:
    doc = orjson.loads(model_documents().get(version))
    validate(doc, cls=VALIDATORS[version])
    assert operation_ids(doc) == {
        ("/api/", "get"): "ServiceHealthCheck",
        ("/api/score", "post"): "RunMLService",
        ("/api/swagger.json", "get"): "GetSwaggerSpec",
        ("/api/v2", "get"): "V2ServerMetadata",
        ("/api/v2/health/live", "get"): "V2ServerLive",
        ("/api/v2/health/ready", "get"): "V2ServerReady",
        ("/api/v2/models/ranker", "get"): "V2ModelMetadata",
        ("/api/v2/models/ranker/ready", "get"): "V2ModelReady",
        ("/api/v2/models/ranker/infer", "post"): "V2ModelInfer",
    }
    infer = doc["paths"]["/api/v2/models/ranker/infer"]["post"]
    assert infer["security"] == [{"Bearer": []}]
    error = infer["responses"]["400"]["schema"] if version == "2" else \
        infer["responses"]["400"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/V2ErrorResponse")  # tritonclient reads `error`
    assert schemas(doc)["V2ModelMetadata"]["example"] == MODEL_METADATA


def test_model_tensors_carry_their_names_shapes_and_datatypes() -> None:
    request = schemas(orjson.loads(model_documents().get("3")))["V2InferenceRequest"]
    features, mask = request["properties"]["inputs"]["items"]["oneOf"]
    assert features["properties"]["name"]["enum"] == ["features"]
    assert features["properties"]["datatype"]["enum"] == ["FP32"]
    assert features["properties"]["data"]["items"] == {"type": "number"}
    assert "maxItems" not in features["properties"]["data"]  # a dynamic dimension: any count
    assert mask["properties"]["datatype"]["enum"] == ["BOOL"]
    assert mask["properties"]["data"]["items"] == {"type": "boolean"}
    assert mask["properties"]["data"]["minItems"] == mask["properties"]["data"]["maxItems"] == 6
    assert request["example"]["inputs"] == [
        {"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 0.0, 0.0]},
        {"name": "mask", "shape": [2, 3], "datatype": "BOOL", "data": [False] * 6},
    ]


def test_model_routes_stay_out_of_the_users_own_document(tmp_path: Path) -> None:
    user = {"swagger": "2.0", "info": {"title": "mine", "version": "1"}, "paths": {}}
    (tmp_path / "swagger.json").write_bytes(orjson.dumps(user))
    documents = model_documents(tmp_path)
    assert orjson.loads(documents.get("2")) == user
    assert "/api/v2/models/ranker/infer" in orjson.loads(documents.get("3"))["paths"]
