"""Swagger UI at /docs: our page and swagger-ui's packaged files, nothing from elsewhere, open like
/swagger.json; with --model the documents describe the V2 routes too. The slow tests drive a headless
Chromium through the page: the operations render and Try it out scores."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import onnx
import orjson
import pytest
from onnx import TensorProto, helper
from openapi_spec_validator import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator, OpenAPIV31SpecValidator, validate
from starlette.testclient import TestClient

from conftest import SCRIPTS, start_server
from test_onnx_serving import build_mlp

VALIDATORS = {"2": OpenAPIV2SpecValidator, "3": OpenAPIV30SpecValidator, "3.1": OpenAPIV31SpecValidator}
URL_ATTRIBUTE = re.compile(r'(?:src|href)="([^"]*)"')
KEY = "k" * 32


def page_urls(page: str) -> list[str]:
    return URL_ATTRIBUTE.findall(page)


def test_docs_page_loads_only_its_own_files(client_for) -> None:
    http = client_for("contract.py")
    response = http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert "http://" not in page and "https://" not in page and "//" not in page.replace("<!DOCTYPE", "")
    urls = page_urls(page)
    assert {url.split("?")[0] for url in urls} == {
        "docs/favicon-32x32.png", "docs/swagger-ui.css", "docs/index.css", "docs/swagger-ui-bundle.js", "docs/start.js"}
    # The browser itself is told to fetch nothing from elsewhere, whatever the scripts ask.
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self';" in policy


def test_docs_start_script_opens_the_openapi_3_document_without_the_validator(client_for) -> None:
    script = client_for("contract.py").get("/docs/start.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert 'url: "swagger.json?version=3"' in script.text  # relative: the document beside the page
    assert "validatorUrl: null" in script.text and "queryConfigEnabled: false" in script.text
    assert "http" not in script.text


@pytest.mark.parametrize(("name", "content_type"), [
    ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    ("swagger-ui.css", "text/css; charset=utf-8"),
    ("index.css", "text/css; charset=utf-8"),
    ("favicon-32x32.png", "image/png"),
])
def test_docs_files_are_served_with_their_content_types(client_for, name: str, content_type: str) -> None:
    http = client_for("contract.py")
    versioned = next(url for url in page_urls(http.get("/docs").text) if url.startswith(f"docs/{name}?v="))
    response = http.get("/" + versioned)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert "max-age" in response.headers["cache-control"]
    if name == "swagger-ui-bundle.js":
        assert b"SwaggerUIBundle" in response.content


def test_docs_serves_no_other_file_of_the_package(client_for) -> None:
    http = client_for("contract.py")
    for name in ("swagger-editor-bundle.js", "oauth2-redirect.html", "LICENSE", "..%2F..%2Fpyproject.toml"):
        assert http.get(f"/docs/{name}").status_code == 404, name


def test_docs_with_a_slash_redirects_relative_to_the_page(client_for) -> None:
    response = client_for("contract.py").get("/docs/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "../docs"


def test_docs_is_open_when_auth_keys_are_set(client_for) -> None:
    http = client_for("contract.py", auth_key=[KEY])
    assert http.post("/score", json={"data": [[1.0, 2.0, 3.0]]}).status_code == 401
    page = http.get("/docs")
    assert page.status_code == 200
    for url in page_urls(page.text):
        assert http.get("/" + url).status_code == 200, url
    assert http.get("/swagger.json", params={"version": "3"}).status_code == 200


def test_docs_page_is_the_same_behind_a_path_prefix(client_for) -> None:
    plain = client_for("contract.py").get("/docs").text
    prefixed = client_for("contract.py", env={"SERVICE_PATH_PREFIX": "/api/"}).get("/docs").text
    assert prefixed == plain  # every URL is relative to the page, wherever the proxy puts it


def build_two_input_model(path: Path) -> Path:
    """features float32 [batch, 3] and counts int64 [batch] -> score float32 [batch, 3] (features * counts)."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["counts"], ["counts_float"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["counts_float", "axes"], ["column"]),
         helper.make_node("Mul", ["features", "column"], ["score"])],
        "two_inputs",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("counts", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture()
def model_client(tmp_path: Path) -> Iterator[Any]:
    from mlscore.server.app import create_app
    from mlscore.server.runner import build_state
    from mlscore.server.settings import Settings

    clients: list[TestClient] = []

    def make(model: Path, env: dict[str, str] | None = None, **cli: Any) -> TestClient:
        cli = {"model": str(model), "executor": "threads", "app_root": str(model.parent), **cli}
        settings = Settings.build(cli, environ=env or {})
        client = TestClient(create_app(build_state(settings)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def documents(http: TestClient) -> dict[str, dict[str, Any]]:
    return {version: http.get("/swagger.json", params={"version": version}).json() for version in VALIDATORS}


def test_model_documents_list_the_v2_routes_and_validate(model_client, tmp_path: Path) -> None:
    http = model_client(build_mlp(tmp_path / "iris_mlp.onnx"), env={"SERVICE_PATH_PREFIX": "api"})
    for version, document in documents(http).items():
        validate(document, cls=VALIDATORS[version])
        assert sorted(document["paths"]) == sorted([
            "/api/", "/api/score", "/api/swagger.json", "/api/v2", "/api/v2/health/live", "/api/v2/health/ready",
            "/api/v2/models/iris_mlp", "/api/v2/models/iris_mlp/ready", "/api/v2/models/iris_mlp/infer"])
        infer = document["paths"]["/api/v2/models/iris_mlp/infer"]["post"]
        assert infer["operationId"] == "V2ModelInfer" and infer["security"] == [{"Bearer": []}]
        assert document["paths"]["/api/v2/models/iris_mlp"]["get"]["security"] == []


def test_model_documents_name_the_tensors_shapes_and_datatypes(model_client, tmp_path: Path) -> None:
    http = model_client(build_mlp(tmp_path / "iris_mlp.onnx"))
    schemas = documents(http)["3"]["components"]["schemas"]
    tensor = schemas["V2InferenceRequest"]["properties"]["inputs"]["items"]
    assert tensor["properties"]["name"]["enum"] == ["input"]
    assert tensor["properties"]["datatype"]["enum"] == ["FP32"]
    assert "[-1, 4]" in tensor["description"]
    assert tensor["properties"]["shape"]["minItems"] == tensor["properties"]["shape"]["maxItems"] == 2
    assert schemas["V2InferenceRequest"]["example"] == {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.0, 0.0, 0.0]}]}
    outputs = schemas["V2InferenceResponse"]["properties"]["outputs"]["items"]["oneOf"]
    assert [output["properties"]["name"]["enum"] for output in outputs] == [["logits"], ["probabilities"]]
    # The metadata's example is what GET /v2/models/NAME answers.
    assert schemas["V2ModelMetadata"]["example"] == http.get("/v2/models/iris_mlp").json()


def test_model_document_examples_infer(model_client, tmp_path: Path) -> None:
    """What Swagger UI fills in for Try it out is a request the model takes."""
    http = model_client(build_two_input_model(tmp_path / "two.onnx"))
    for version, document in documents(http).items():
        validate(document, cls=VALIDATORS[version])
        schemas = document["definitions"] if version == "2" else document["components"]["schemas"]
        items = schemas["V2InferenceRequest"]["properties"]["inputs"]["items"]
        if version == "2":  # no oneOf in Swagger 2.0: one tensor object, any of the inputs
            assert items["properties"]["name"]["enum"] == ["features", "counts"]
            assert items["properties"]["datatype"]["enum"] == ["FP32", "INT64"]
        else:
            assert [(one["properties"]["name"]["enum"], one["properties"]["datatype"]["enum"],
                     one["properties"]["data"]["items"]["type"]) for one in items["oneOf"]] == [
                (["features"], ["FP32"], "number"), (["counts"], ["INT64"], "integer")]
        response = http.post("/v2/models/two/infer", json=schemas["V2InferenceRequest"]["example"])
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["name"] == "score"
        body = http.post("/score", json=schemas["ServiceInput"]["example"])
        assert body.status_code == 200, body.text


def test_user_swagger_file_is_left_as_it_is_with_a_model(model_client, tmp_path: Path) -> None:
    user = {"swagger": "2.0", "info": {"title": "mine", "version": "1"}, "paths": {}}
    (tmp_path / "swagger.json").write_bytes(orjson.dumps(user))
    http = model_client(build_mlp(tmp_path / "iris_mlp.onnx"))
    assert http.get("/swagger.json").json() == user
    assert "/v2/models/iris_mlp/infer" in http.get("/swagger.json", params={"version": "3"}).json()["paths"]


# The slow tests: a real server, a real browser.

def _chromium() -> tuple[str, str]:
    """Chromium and its driver (Debian: apt-get install chromium chromium-driver); skips without them."""
    pytest.importorskip("selenium", reason="the browser tests drive Chromium with selenium (mlscore[dev])")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,2000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    yield driver
    driver.quit()


def try_it_out(browser: Any, url: str, operation: str) -> str:
    """Open /docs, expand `operation`, Try it out with the example Swagger UI fills in, Execute: the
    status the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(url + "/docs")
    block = wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, f"[id$='-{operation}']")))
    block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait.until(lambda _: block.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    body = wait.until(lambda _: block.find_element(By.CSS_SELECTOR, "textarea.body-param__text"))
    assert body.get_attribute("value").strip(), "Swagger UI filled in no example body"
    block.find_element(By.CSS_SELECTOR, "button.execute").click()
    status = wait.until(lambda _: block.find_element(
        By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"))
    return status.text.split()[0]


def page_errors(browser: Any) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow
def test_browser_renders_docs_and_try_it_out_scores(browser, tmp_path: Path) -> None:
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "contract.py"))
    try:
        assert try_it_out(browser, server.url, "RunMLService") == "200"
        from selenium.webdriver.common.by import By
        rendered = {element.get_attribute("id") for element in browser.find_elements(By.CSS_SELECTOR, ".opblock")}
        assert {"operations-default-ServiceHealthCheck", "operations-default-GetSwaggerSpec"} <= rendered
        assert page_errors(browser) == []  # nothing refused by the page's policy, nothing missing
    finally:
        server.stop()


@pytest.mark.slow
def test_browser_try_it_out_infers_with_a_model(browser, tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", str(build_mlp(tmp_path / "iris_mlp.onnx")))
    try:
        assert try_it_out(browser, server.url, "V2ModelInfer") == "200"
        assert try_it_out(browser, server.url, "RunMLService") == "200"
        assert page_errors(browser) == []
    finally:
        server.stop()
