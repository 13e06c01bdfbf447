"""The three input modes (schema-decorated, plain, raw HTTP) and the azureml import aliases, in-process."""

from __future__ import annotations

import joblib
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from conftest import EXAMPLES

DIABETES_MODELS = str(EXAMPLES / "diabetes" / "models")


# --- schema-decorated run() ---------------------------------------------------------------

def test_schema_numpy_input_is_decoded_to_an_array_and_scored(client_for):
    client = client_for("contract.py")
    response = client.post("/score", json={"data": [[1, 2, 3], [4, 5, 6]]})
    assert response.status_code == 200, response.text
    assert response.json() == [6.0, 15.0]
    assert response.headers["x-ms-run-function-failed"] == "False"
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0


def test_schema_extra_keys_are_ignored(client_for):
    response = client_for("contract.py").post("/score", json={"data": [[1, 1, 1]], "unused": {"x": 1}})
    assert response.status_code == 200
    assert response.json() == [3.0]


@pytest.mark.parametrize(
    "payload, fragments",
    [
        ({"data": [[1, 2]]}, ["'data'", "shape (n, 3)", "size 2 on dimension #1"]),
        ({"data": [1, 2, 3]}, ["'data'", "2 dimensions is expected", "input has 1"]),
        ({"data": [["a", "b", "c"]]}, ["'data'", "float64", "could not convert"]),
        ({"data": "not a list"}, ["'data'", "expected an array"]),
        ({"data": [[1, 2, 3], [4, 5]]}, ["'data'"]),
        ({"data": []}, ["'data'", "2 dimensions is expected"]),
    ],
)
def test_schema_input_that_breaks_the_schema_is_a_400_naming_parameter_expected_and_got(client_for, payload, fragments):
    response = client_for("contract.py").post("/score", json=payload)
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    for fragment in fragments:
        assert fragment in message
    assert "Traceback" not in message


def test_schema_missing_parameter_is_a_400_naming_it(client_for):
    response = client_for("contract.py").post("/score", json={"other": 1})
    assert response.status_code == 400
    assert response.json() == {"message": "A value is not provided for the 'data' parameter."}


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "POST body is empty. Expecting a JSON dictionary."),
        (b"[1, 2]", "POST body should be a JSON dictionary, got a JSON array."),
        (b'"text"', "POST body should be a JSON dictionary, got a JSON string."),
    ],
)
def test_schema_body_that_is_not_a_json_object_is_a_400(client_for, body, message):
    response = client_for("contract.py").post("/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"message": message}


def test_schema_malformed_json_is_a_400_that_says_so(client_for):
    response = client_for("contract.py").post("/score", content=b'{"data": [[1,2', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"].startswith("POST body could not be decoded as JSON:")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_schema_non_json_content_type_is_a_415(client_for, content_type):
    response = client_for("contract.py").post("/score", content=b'{"data": [[1,2,3]]}', headers={"content-type": content_type})
    assert response.status_code == 415
    assert content_type in response.json()["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json", None])
def test_schema_json_content_types_and_a_missing_one_are_accepted(client_for, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client_for("contract.py").post("/score", content=b'{"data": [[1,2,3]]}', headers=headers)
    assert response.status_code == 200, response.text


def test_schema_get_takes_parameters_from_the_query_string(client_for):
    response = client_for("contract.py").get("/score", params={"data": "[[1, 2, 3]]"})
    assert response.status_code == 200, response.text
    assert response.json() == [6.0]


def test_schema_nested_types_defaults_and_plain_parameters(client_for):
    client = client_for("schema_nested.py")
    payload = {"inputs": {"matrix": [[1, 2], [3, 5]], "table": [{"name": "x", "score": 1.0}, {"name": "y", "score": 2.0}]},
               "label": "hello"}
    response = client.post("/score", json=payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"label": "hello", "total": 11, "names": ["x", "y"], "scale": 1.0}
    response = client.post("/score", json={**payload, "scale": 2.5})
    assert response.json()["scale"] == 2.5


def test_schema_nested_bad_value_is_a_400_naming_the_parameter(client_for):
    client = client_for("schema_nested.py")
    response = client.post("/score", json={"inputs": {"matrix": [[1, 2, 3]], "table": []}, "label": "x"})
    assert response.status_code == 400
    assert "'inputs.matrix'" in response.json()["message"]
    response = client.post("/score", json={"inputs": {"matrix": [[1, 2]], "table": [{"name": "a", "score": 1}]}, "label": 5})
    assert response.status_code == 400
    assert "'label'" in response.json()["message"]


def test_schema_pandas_missing_column_is_a_400_naming_the_column(client_for):
    client = client_for("schema_nested.py")
    response = client.post("/score", json={"inputs": {"matrix": [[1, 2]], "table": [{"name": "a"}]}, "label": "x"})
    assert response.status_code == 400
    message = response.json()["message"]
    assert "'inputs.table'" in message and "score" in message and "missing" in message


# --- plain run(data) -----------------------------------------------------------------------

def test_plain_run_receives_the_body_as_a_string_whatever_the_content_type(client_for):
    client = client_for("plain_echo.py")
    for content_type in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
        response = client.post("/score", content=b'{"a": 1}', headers={"content-type": content_type})
        assert response.status_code == 200
        assert response.json()["received"] == '{"a": 1}'
        assert response.json()["type"] == "str"


def test_plain_init_runs_once(client_for):
    client = client_for("plain_echo.py")
    client.post("/score", content=b"x")
    assert client.post("/score", content=b"y").json()["init_calls"] == 1


def test_plain_non_utf8_body_is_a_400(client_for):
    response = client_for("plain_echo.py").post("/score", content=b"\xff\xfe\xfa")
    assert response.status_code == 400
    assert response.json()["message"].startswith("Input cannot be decoded as UTF-8")


def test_plain_get_passes_the_query_as_a_json_string(client_for):
    response = client_for("plain_echo.py").get("/score?a=1&b=x&b=y")
    assert response.status_code == 200
    import json

    assert json.loads(response.json()["received"]) == {"a": 1, "b": ["x", "y"]}


def test_plain_run_receives_request_headers_in_title_case(client_for):
    response = client_for("plain_headers.py").post("/score", content=b"hi", headers={"x-custom-header": "v1", "content-type": "text/plain"})
    assert response.json() == {"data": "hi", "custom": "v1", "has_title_case": True}


def test_options_on_a_non_raw_script_is_200_with_an_empty_body(client_for):
    response = client_for("plain_echo.py").options("/score")
    assert response.status_code == 200
    assert response.content == b""


# --- raw HTTP ------------------------------------------------------------------------------

def test_rawhttp_binary_body_round_trips_byte_for_byte(client_for):
    payload = bytes(range(256)) * 40
    response = client_for("raw_echo.py").post("/score", content=payload, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["content-type"] == "application/octet-stream"


def test_rawhttp_get_sees_method_args_and_path(client_for):
    response = client_for("raw_echo.py").get("/score?x=1&y=two")
    assert response.json() == {"method": "GET", "args": {"x": "1", "y": "two"}, "path": "/score"}


def test_rawhttp_options_is_passed_to_run(client_for):
    response = client_for("raw_echo.py").options("/score")
    assert response.status_code == 200
    assert response.text == "options handled by run()"


def test_rawhttp_response_sets_status_and_headers_but_not_the_request_id(client_for):
    response = client_for("raw_echo.py").post("/score?mode=status", content=b"", headers={"x-request-id": "mine"})
    assert response.status_code == 418
    assert response.json() == {"teapot": True}
    assert response.headers["x-from-run"] == "yes"
    assert response.headers["x-request-id"] == "mine"
    assert response.headers["x-ms-run-function-failed"] == "False"


@pytest.mark.parametrize("mode", ["bad-header", "euro-header", "bad-header-name"])
def test_rawhttp_header_that_http_cannot_carry_is_refused_with_a_500(client_for, mode):
    response = client_for("raw_echo.py").post(f"/score?mode={mode}", content=b"", headers={"x-request-id": "mine"})
    assert response.status_code == 500
    assert "not valid HTTP" in response.json()["message"]
    assert "injected" not in response.headers and "x-bad" not in response.headers
    assert response.headers["x-request-id"] == "mine"
    assert response.headers["x-ms-run-function-failed"] == "True"


@pytest.mark.parametrize("status", [99, 101, 600, 999])
def test_rawhttp_status_that_is_not_a_final_http_status_is_refused_with_a_500(client_for, status):
    response = client_for("raw_echo.py").post(f"/score?mode=bad-status&status={status}", content=b"")
    assert response.status_code == 500
    assert f"status {status}" in response.json()["message"]
    assert response.headers["x-ms-run-function-failed"] == "True"


def test_rawhttp_204_is_sent_without_the_body_run_gave(client_for):
    response = client_for("raw_echo.py").post("/score?mode=no-content", content=b"")
    assert response.status_code == 204 and response.content == b""
    assert "content-length" not in response.headers


def test_rawhttp_status_500_or_more_marks_the_run_failed(client_for):
    response = client_for("raw_echo.py").post("/score?mode=fail-status", content=b"")
    assert response.status_code == 502
    assert response.headers["x-ms-run-function-failed"] == "True"


def test_rawhttp_generator_body_is_streamed(client_for):
    with client_for("raw_echo.py").stream("POST", "/score?mode=stream", content=b"") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        chunks = list(response.iter_bytes())
    assert b"".join(chunks) == b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;"


def test_rawhttp_get_json_parses_and_bad_json_is_a_400(client_for):
    client = client_for("raw_echo.py")
    response = client.post("/score?mode=json", json={"k": [1, 2]})
    assert response.json() == {"json": {"k": [1, 2]}, "is_json": True}
    response = client.post("/score?mode=json", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "could not be decoded as JSON" in response.json()["message"]


# --- the Azure documents' scripts, through the azureml aliases ------------------------------

def test_azure_documents_sklearn_script_runs_unchanged(client_for):
    client = client_for("azure_doc_sklearn.py", model_dir=DIABETES_MODELS)
    response = client.post("/score", json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]})
    assert response.status_code == 200, response.text
    result = response.json()
    assert len(result) == 2 and all(isinstance(value, float) for value in result)


def test_azure_documents_powerbi_script_runs_unchanged(client_for, tmp_path):
    sample = pd.DataFrame([{"input_name_1": 5.1, "input_name_2": "value2", "input_name_3": 3}])
    joblib.dump(DummyClassifier(strategy="constant", constant=1).fit(sample, [1]), tmp_path / "model_name")
    client = client_for("azure_doc_powerbi.py", model_dir=str(tmp_path))
    rows = [{"input_name_1": 1.5, "input_name_2": "a", "input_name_3": 7}, {"input_name_1": 2.5, "input_name_2": "b", "input_name_3": 8}]
    response = client.post("/score", json={"data": rows})
    assert response.status_code == 200, response.text
    assert response.json() == [1, 1]


def test_azureml_aliases_are_not_installed_as_a_package():
    """Outside the server (no alias installed), `import azureml` finds nothing in site-packages."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "import azureml"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "No module named 'azureml'" in result.stderr


def test_script_folder_and_source_directory_are_importable(client_for):
    client = client_for("uses_helper.py", env={"AZUREML_SOURCE_DIRECTORY": "srcdir"}, app_root=str(EXAMPLES.parent / "tests" / "scripts"))
    assert client.post("/score", content=b"x").json() == ["next-to-script", "source-dir"]


# --- results and their encoding ---------------------------------------------------------------

@pytest.mark.parametrize(
    "kind, expected",
    [
        ("ndarray", [[0, 1, 2], [3, 4, 5]]),
        ("float16", [0.5, 1.5]),
        ("scalar", {"int": 7, "float": 0.25, "bool": True}),
        ("dataframe", [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]),
        ("series", [1.5, 2.5]),
        ("nan", [None, 1.0]),
        ("string", "plain text result"),
        ("none", None),
        ("noncontiguous", [[0, 2], [4, 6], [8, 10]]),
    ],
)
def test_results_of_numpy_pandas_and_python_types_are_encoded_as_json(client_for, kind, expected):
    response = client_for("results.py").post("/score", content=kind.encode())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected


def test_run_that_raises_is_a_500_without_the_exception_text(client_for):
    response = client_for("contract.py").post("/score", json={"data": [[666, 0, 0]]})
    assert response.status_code == 500
    assert response.headers["x-ms-run-function-failed"] == "True"
    message = response.json()["message"]
    assert "RuntimeError" in message
    assert "secret internal detail" not in message and "Traceback" not in message


def test_result_that_cannot_be_encoded_is_a_500_that_says_so(client_for):
    response = client_for("contract.py").post("/score", json={"data": [[777, 0, 0]]})
    assert response.status_code == 500
    assert "cannot be encoded as JSON" in response.json()["message"]
    assert response.headers["x-ms-run-function-failed"] == "True"


def test_failed_warm_up_keeps_the_replica_unready_with_the_reason(client_for):
    client = client_for("warmup_fails.py")
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "all-zero input" in response.json()["message"]
    assert client.get("/health/live").status_code == 200
    assert client.post("/score", json={"data": [[1.0, 2.0]]}).json() == 3.0
