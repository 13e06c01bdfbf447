"""The ONNX examples (examples/digits_onnx, examples/cnn_onnx): entry scripts that load their model
with accelerators.load() on the device from the settings, scored in-process and by a real server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import EXAMPLES, start_server
from mlscore.accelerators import DEVICE_ENV, available_devices, onnx_runtime
from mlscore.scoring.entry_script import EntryScriptError

DIGITS = load_digits()


@pytest.fixture(autouse=True)
def restore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process server exports its device and model settings into os.environ; undo that."""
    for name in (DEVICE_ENV, onnx_runtime.CPU_THREADS_ENV, "MLSCORE_OPENCL_BINARY", "AZUREML_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def example(client_for):
    def make(name: str, **settings):
        return client_for(str(EXAMPLES / name / "score.py"), model_dir=str(EXAMPLES / name / "models"), **settings)

    return make


def swagger_sample(client) -> list:
    return client.get("/swagger.json", params={"version": "3"}).json()["components"]["schemas"]["ServiceInput"][
        "example"]["data"]


def accuracy(client, data: list) -> float:
    response = client.post("/score", json={"data": data})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["probabilities"]) == len(data) and all(0.0 < p <= 1.0 for p in body["probabilities"])
    return float(np.mean(np.array(body["digits"]) == DIGITS.target))


def test_digits_mlp_classifies_the_digits_data_above_90_percent(example):
    assert accuracy(example("digits_onnx"), DIGITS.data.tolist()) > 0.9


def test_digits_mlp_classifies_its_sample_as_zero(example):
    client = example("digits_onnx")
    response = client.post("/score", json={"data": swagger_sample(client)})
    assert response.json()["digits"] == [0] and response.json()["probabilities"][0] > 0.5


def test_digits_mlp_wrong_image_size_is_a_400_naming_the_parameter(example):
    response = example("digits_onnx").post("/score", json={"data": [[0.0] * 63]})
    assert response.status_code == 400
    assert "'data'" in response.json()["message"] and "64" in response.json()["message"]


def test_cnn_classifies_8x8_images_above_90_percent(example):
    assert accuracy(example("cnn_onnx"), DIGITS.images.tolist()) > 0.9


def test_cnn_classifies_its_sample_as_zero(example):
    client = example("cnn_onnx")
    sample = swagger_sample(client)
    assert np.array(sample).shape == (1, 8, 8)
    assert client.post("/score", json={"data": sample}).json()["digits"] == [0]


def test_cnn_flat_rows_are_a_400(example):
    response = example("cnn_onnx").post("/score", json={"data": [[0.0] * 64]})
    assert response.status_code == 400 and "'data'" in response.json()["message"]


def test_example_logs_the_device_it_runs_on(example, caplog):
    caplog.set_level("INFO", logger="cnn_onnx")
    example("cnn_onnx", device="cpu")
    assert "cnn.onnx runs on cpu" in caplog.text


def test_example_on_a_missing_gpu_fails_init_listing_the_devices(example):
    if onnx_runtime.gpu_works():
        pytest.skip("this machine has a working GPU")
    with pytest.raises(EntryScriptError) as raised:
        example("digits_onnx", device="gpu")
    assert "device 'gpu' is not available" in str(raised.value) and "available devices: cpu" in str(raised.value)


def test_real_server_scores_the_digits_mlp_in_its_worker_processes(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(EXAMPLES / "digits_onnx" / "score.py"),
                          "--model-dir", str(EXAMPLES / "digits_onnx" / "models"), "--device", "cpu",
                          "--cpu-threads", "1")
    try:
        response = httpx.post(server.url + "/score", json={"data": DIGITS.data[:100].tolist()})
        assert response.status_code == 200, response.text
        assert np.mean(np.array(response.json()["digits"]) == DIGITS.target[:100]) > 0.9
        assert server.wait_log("digits_mlp.onnx runs on cpu")
    finally:
        server.stop()


@pytest.mark.parametrize("name, images", [("digits_onnx", DIGITS.data), ("cnn_onnx", DIGITS.images)])
def test_examples_score_the_same_on_the_opencl_device(example, name, images):
    if not any(device.kind == "opencl" for device in available_devices()):
        pytest.skip("no OpenCL device here")
    data = images[:200].tolist()
    on_cpu = example(name, device="cpu").post("/score", json={"data": data}).json()
    on_opencl = example(name, device="opencl").post("/score", json={"data": data}).json()
    assert on_opencl["digits"] == on_cpu["digits"]
    np.testing.assert_allclose(on_opencl["probabilities"], on_cpu["probabilities"], atol=2e-4)
