"""The bundled examples, served for real: predictions, bad input, and the Swagger each one gets."""

from __future__ import annotations

import httpx
import pytest
from openapi_spec_validator import validate

DIABETES_ROW = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def swagger(server, version: str) -> dict:
    response = httpx.get(server.url + "/swagger.json", params={"version": version})
    assert response.status_code == 200
    return response.json()


def test_diabetes_scores_the_readme_request(diabetes_server):
    response = httpx.post(diabetes_server.url + "/score", json={"data": [DIABETES_ROW]})
    assert response.status_code == 200
    [prediction] = response.json()
    assert isinstance(prediction, float)


def test_diabetes_ready_after_warm_up(diabetes_server):
    assert httpx.get(diabetes_server.url + "/health/ready").json() == {"ready": True}
    assert diabetes_server.wait_log("init() and warm-up done")


@pytest.mark.parametrize("version, key, value", [("2", "swagger", "2.0"), ("3", "openapi", "3.0.3"), ("3.1", "openapi", "3.1.0")])
def test_diabetes_swagger_versions_are_valid_documents(diabetes_server, version, key, value):
    document = swagger(diabetes_server, version)
    assert document[key] == value
    validate(document)


def test_diabetes_swagger_keeps_the_sample_shape_and_example(diabetes_server):
    document = swagger(diabetes_server, "3")
    data = document["components"]["schemas"]["ServiceInput"]["properties"]["data"]
    assert data["type"] == "array" and "minItems" not in data
    assert data["items"]["minItems"] == 10 and data["items"]["maxItems"] == 10
    assert data["items"]["items"]["type"] == "number"
    example = document["components"]["schemas"]["ServiceInput"]["example"]
    assert example == {"data": [[10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]}


def test_digits_classifies_its_sample_as_zero(digits_server):
    sample = swagger(digits_server, "2")["definitions"]["ServiceInput"]["example"]["images"]
    response = httpx.post(digits_server.url + "/score", json={"images": sample})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["digits"] == [0]
    assert 0.5 < body["probabilities"][0] <= 1.0


def test_digits_wrong_image_size_is_a_400(digits_server):
    response = httpx.post(digits_server.url + "/score", json={"images": [[0] * 63]})
    assert response.status_code == 400
    assert "'images'" in response.json()["message"] and "64" in response.json()["message"]


def test_powerbi_scores_a_table_of_mixed_columns_with_the_newest_model(powerbi_server):
    row = {"age": 45, "sex": "male", "bmi": 27.5, "bp": 90.0, "s1": 180.0, "s2": 110.0, "s3": 50.0, "s4": 4.0,
           "s5": 4.5, "s6": 90.0}
    response = httpx.post(powerbi_server.url + "/score", json={"data": [row, {**row, "bmi": 35.0}]})
    assert response.status_code == 200, response.text
    low, high = response.json()
    assert high > low  # a higher BMI predicts more progression


def test_powerbi_missing_column_names_it(powerbi_server):
    row = {"age": 45, "sex": "male", "bmi": 27.5}
    response = httpx.post(powerbi_server.url + "/score", json={"data": [row]})
    assert response.status_code == 400
    assert "missing column(s) bp" in response.json()["message"]


def test_powerbi_swagger_lists_the_columns(powerbi_server):
    document = swagger(powerbi_server, "3")
    validate(document)
    item = document["components"]["schemas"]["ServiceInput"]["properties"]["data"]["items"]
    assert set(item["properties"]) == {"age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"}
    assert item["properties"]["sex"]["type"] == "string"
    assert item["properties"]["age"]["type"] == "integer"


@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_digits_swagger_is_valid_and_bounds_the_64_pixels(digits_server, version):
    document = swagger(digits_server, version)
    validate(document)
    schemas = document["definitions"] if version == "2" else document["components"]["schemas"]
    images = schemas["ServiceInput"]["properties"]["images"]
    assert images["items"]["minItems"] == 64 and images["items"]["maxItems"] == 64
    assert set(schemas["ServiceOutput"]["properties"]) == {"digits", "probabilities"}


def test_diabetes_matches_the_scikit_learn_model(diabetes_server):
    import joblib
    import numpy as np

    from conftest import EXAMPLES

    model = joblib.load(EXAMPLES / "diabetes" / "models" / "sklearn_regression_model.pkl")
    rows = [[0.03, -0.04, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    response = httpx.post(diabetes_server.url + "/score", json={"data": rows})
    assert np.allclose(response.json(), model.predict(np.array(rows)))
