"""An ONNX model served without a script (`mlscore serve --model`): /score by input name, Swagger
from the signature, and the Open Inference Protocol (KServe V2) routes driven by the real
tritonclient."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper
from openapi_spec_validator import validate
from tritonclient.utils import InferenceServerException

from conftest import run_server_to_exit, start_server

RNG = np.random.default_rng(7)
W1 = RNG.normal(size=(4, 8)).astype(np.float32)
B1 = RNG.normal(size=8).astype(np.float32)
W2 = RNG.normal(size=(8, 3)).astype(np.float32)
B2 = RNG.normal(size=3).astype(np.float32)


def build_mlp(path: Path) -> Path:
    """input float32 [batch, 4] -> Gemm, Relu, Gemm -> logits [batch, 3] and probabilities (Softmax)."""
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["activated"]),
        helper.make_node("Gemm", ["activated", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(array, name) for name, array in (("w1", W1), ("b1", B1), ("w2", W2), ("b2", B2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def reference(batch: np.ndarray) -> dict[str, np.ndarray]:
    logits = np.maximum(batch @ W1 + B1, 0) @ W2 + B2
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"logits": logits, "probabilities": exp / exp.sum(axis=1, keepdims=True)}


@pytest.fixture(scope="module", params=["processes", "threads"])
def served(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    model = build_mlp(folder / "iris_mlp.onnx")
    server = start_server(folder, "--model", str(model), "--executor", request.param)
    yield server
    server.stop()


def test_score_takes_and_answers_tensors_by_name(served):
    batch = RNG.normal(size=(5, 4)).astype(np.float32)
    response = httpx.post(served.url + "/score", json={"input": batch.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reference(batch)
    assert set(body) == {"logits", "probabilities"}
    for name in expected:
        np.testing.assert_allclose(np.array(body[name]), expected[name], rtol=1e-4, atol=1e-5)
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0


@pytest.mark.parametrize("body, words", [
    ({}, ["missing input 'input'", "float32[batch, 4]"]),
    ({"input": [[1, 2, 3, 4]], "extra": [1]}, ["unknown input 'extra'"]),
    ({"input": [1, 2, 3, 4]}, ["must have 2 dimensions", "got 1"]),
    ({"input": [[1, 2, 3]]}, ["dimension 1 must be 4, got 3"]),
    ({"input": [["a", "b", "c", "d"]]}, ["must be float32"]),
    ({"input": [[1, 2, 3, 4], [1, 2]]}, ["not a rectangular array"]),
    ([[1, 2, 3, 4]], ["must be a JSON object of inputs"]),
])
def test_score_rejects_inputs_that_break_the_signature(served, body, words):
    response = httpx.post(served.url + "/score", json=body)
    assert response.status_code == 400
    message = response.json()["message"]
    assert all(word in message for word in words), message


def test_swagger_describes_the_signature(served):
    document = httpx.get(served.url + "/swagger.json?version=3").json()
    validate(document)
    schemas = document["components"]["schemas"]
    tensor = schemas["ServiceInput"]["properties"]["input"]
    assert tensor["type"] == "array" and "minItems" not in tensor  # the dynamic batch
    assert tensor["items"]["minItems"] == tensor["items"]["maxItems"] == 4
    assert schemas["ServiceInput"]["example"] == {"input": [[0.0, 0.0, 0.0, 0.0]]}
    assert set(schemas["ServiceOutput"]["properties"]) == {"logits", "probabilities"}


def test_v2_health_and_metadata_through_tritonclient(served):
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris_mlp")
    assert not client.is_model_ready("other")
    metadata = client.get_model_metadata("iris_mlp")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [output["name"] for output in metadata["outputs"]] == ["logits", "probabilities"]
    assert client.get_server_metadata()["name"] == "mlscore"


@pytest.mark.parametrize("binary", [True, False])
def test_v2_infer_through_tritonclient(served, binary):
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    batch = RNG.normal(size=(3, 4)).astype(np.float32)
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("iris_mlp", [tensor], outputs=outputs, request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(batch)["probabilities"], rtol=1e-4)
    assert result.as_numpy("logits") is None  # only what was asked for
    assert result.get_response()["id"] == "r-1"
    everything = client.infer("iris_mlp", [tensor])
    np.testing.assert_allclose(everything.as_numpy("logits"), reference(batch)["logits"], rtol=1e-4, atol=1e-5)


def test_v2_bad_tensors_are_400s_that_say_what_was_wrong(served):
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    wrong_name = triton.InferInput("features", [1, 4], "FP32")
    wrong_name.set_data_from_numpy(np.zeros((1, 4), np.float32))
    wrong_rank = triton.InferInput("input", [4], "FP32")
    wrong_rank.set_data_from_numpy(np.zeros(4, np.float32))
    for tensor, words in ((wrong_name, "unknown input 'features'"), (wrong_rank, "must have 2 dimensions")):
        with pytest.raises(InferenceServerException) as raised:
            client.infer("iris_mlp", [tensor])
        assert raised.value.status() == "400" and words in raised.value.message()
    short = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 7}]}
    response = httpx.post(served.url + "/v2/models/iris_mlp/infer", json=short)
    assert response.status_code == 400 and "needs 8 values, got 7" in response.json()["error"]
    strings = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]}
    response = httpx.post(served.url + "/v2/models/iris_mlp/infer", json=strings)
    assert response.status_code == 400 and "cannot be read as FP32" in response.json()["error"]
    wrong_type = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}]}
    response = httpx.post(served.url + "/v2/models/iris_mlp/infer", json=wrong_type)
    assert response.status_code == 400 and "datatype INT32 does not match the model's FP32" in response.json()["error"]
    unknown_type = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP8", "data": [1, 2, 3, 4]}]}
    response = httpx.post(served.url + "/v2/models/iris_mlp/infer", json=unknown_type)
    assert response.status_code == 400 and "datatype 'FP8' is not supported" in response.json()["error"]
    lying = httpx.post(served.url + "/v2/models/iris_mlp/infer", content=b'{"inputs": []}',
                       headers={"inference-header-content-length": "999"})
    assert lying.status_code == 400 and "Inference-Header-Content-Length" in lying.json()["error"]
    other = httpx.post(served.url + "/v2/models/other/infer", json=short)
    assert other.status_code == 404 and "serves 'iris_mlp'" in other.json()["error"]
    assert httpx.get(served.url + "/v2/models/iris_mlp/infer").status_code == 405


def test_model_name_setting_and_a_missing_device(tmp_path):
    model = build_mlp(tmp_path / "mlp.onnx")
    server = start_server(tmp_path, "--model", str(model), "--model-name", "digits-v2", "--executor", "threads")
    try:
        assert httpx.get(server.url + "/v2/models/digits-v2/ready").status_code == 200
        assert httpx.get(server.url + "/v2/models/mlp/ready").status_code == 404
    finally:
        server.stop()
    missing = run_server_to_exit(tmp_path, "--model", str(model), "--device", "gpu", "--executor", "threads")
    log = missing.stdout + missing.stderr
    assert missing.returncode == 3 and "gpu" in log and "available" in log and "cpu" in log
    bad_name = run_server_to_exit(tmp_path, "--model", str(model), "--model-name", "a/b")
    assert bad_name.returncode == 2 and "letters, digits" in bad_name.stderr


def test_model_served_on_the_opencl_device(tmp_path):
    from mlscore.accelerators import available_devices

    if not any(device.kind == "opencl" for device in available_devices()):
        pytest.skip("no OpenCL device here (pip install 'pyopencl[pocl]' gives a CPU one)")
    from mlscore.accelerators.opencl import build_binary

    model = build_mlp(tmp_path / "mlp.onnx")
    binary = build_binary(tmp_path / "kernels.bin")  # as an FPGA toolchain would, offline
    for flags in ([], ["--opencl-binary", str(binary)]):
        server = start_server(tmp_path, "--model", str(model), "--device", "opencl", "--executor", "threads", *flags)
        try:
            batch = RNG.normal(size=(3, 4)).astype(np.float32)
            response = httpx.post(server.url + "/score", json={"input": batch.tolist()})
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(np.array(response.json()["probabilities"]),
                                       reference(batch)["probabilities"], rtol=1e-4, atol=1e-6)
            assert server.wait_log("loaded on opencl")
        finally:
            server.stop()
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a program")
    refused = run_server_to_exit(tmp_path, "--model", str(model), "--device", "opencl", "--opencl-binary",
                                 str(garbage), "--executor", "threads")
    assert refused.returncode == 3 and "garbage.bin" in refused.stdout + refused.stderr
