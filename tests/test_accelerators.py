"""The onnxruntime backend: CPU sessions for real, the GPU's selection logic with fakes (no GPU
here), device choice, and the input checks every backend shares."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlscore.accelerators import (
    DEVICE_ENV, AcceleratorError, DeviceUnavailable, InvalidInput, TensorInfo, UnsupportedModel, available_devices,
    load, onnx_runtime,
)

WEIGHTS = (np.arange(6, dtype=np.float32).reshape(3, 2) - 2) / 10
BIAS = np.array([1.0, -1.0], np.float32)
RealInferenceSession = ort.InferenceSession


def write_model(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = x @ WEIGHTS + BIAS for x float32 [batch, 3], and doubled = n + n for n int64 of any length."""
    return write_model(
        tmp_path_factory.mktemp("models") / "affine.onnx",
        [helper.make_node("MatMul", ["x", "weights"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["y"]),
         helper.make_node("Add", ["n", "n"], ["doubled"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("doubled", TensorProto.INT64, [None])],
        [numpy_helper.from_array(WEIGHTS, "weights"), numpy_helper.from_array(BIAS, "bias")],
    )


@pytest.fixture(autouse=True)
def no_device_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process servers started by other tests export the device settings into os.environ."""
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.delenv(onnx_runtime.CPU_THREADS_ENV, raising=False)


@pytest.fixture()
def no_gpu() -> None:
    if onnx_runtime.gpu_works():
        pytest.skip("this machine has a working GPU")


@pytest.fixture()
def fresh_probe():
    onnx_runtime._probe_gpu.cache_clear()
    yield
    onnx_runtime._probe_gpu.cache_clear()


def affine_inputs(rows: int, start: float = 0.0) -> dict[str, np.ndarray]:
    x = (np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + start) / 7
    return {"x": x, "n": np.arange(rows, dtype=np.int64) + int(start)}


# --- CPU sessions ----------------------------------------------------------------------------

def test_cpu_session_gives_onnxruntime_results(model_path):
    session = load(model_path, device="cpu")
    inputs = affine_inputs(4)
    plain = RealInferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    y, doubled = plain.run(["y", "doubled"], inputs)
    outputs = session.run(inputs)
    assert session.device == "cpu" and session.providers == ["CPUExecutionProvider"]
    assert set(outputs) == {"y", "doubled"}
    np.testing.assert_array_equal(outputs["y"], y)
    np.testing.assert_allclose(outputs["y"], inputs["x"] @ WEIGHTS + BIAS, rtol=1e-6)
    np.testing.assert_array_equal(outputs["doubled"], doubled)


def test_signature_has_numpy_dtypes_and_dynamic_dimensions(model_path):
    session = load(model_path, device="cpu")
    assert session.inputs == [TensorInfo("x", np.dtype(np.float32), ("batch", 3)),
                              TensorInfo("n", np.dtype(np.int64), ("?",))]
    assert session.outputs == [TensorInfo("y", np.dtype(np.float32), ("batch", 2)),
                               TensorInfo("doubled", np.dtype(np.int64), ("?",))]


def test_one_session_serves_8_threads_at_once(model_path):
    session = load(model_path, device="cpu")
    start = threading.Barrier(8)
    wrong: list[int] = []

    def score(thread: int) -> None:
        inputs = affine_inputs(rows=thread + 1, start=100.0 * thread)
        expected = inputs["x"] @ WEIGHTS + BIAS
        start.wait()
        for _ in range(50):
            outputs = session.run(inputs)
            if not (np.allclose(outputs["y"], expected, rtol=1e-6) and (outputs["doubled"] == 2 * inputs["n"]).all()):
                wrong.append(thread)

    threads = [threading.Thread(target=score, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_integer_values_are_accepted_for_float_inputs(model_path):
    outputs = load(model_path, device="cpu").run({"x": [[1, 2, 3]], "n": [4]})
    np.testing.assert_allclose(outputs["y"], np.array([[1, 2, 3]], np.float32) @ WEIGHTS + BIAS, rtol=1e-6)
    assert outputs["doubled"].tolist() == [8]


@pytest.mark.parametrize("inputs, message", [
    ({"x": [[1.0, 2.0, 3.0]]}, "missing input 'n' (n: int64[?])"),
    ({"x": [[1.0, 2.0, 3.0]], "n": [1], "z": [1]}, "unknown input 'z'; the model's inputs are x: float32[batch, 3]"),
    ({"x": [1.0, 2.0, 3.0], "n": [1]}, "input 'x' must have 2 dimensions [batch, 3], got 1 [3]"),
    ({"x": [[1.0, 2.0, 3.0, 4.0]], "n": [1]}, "input 'x' dimension 1 must be 3, got 4 (shape [1, 4])"),
    ({"x": [["a", "b", "c"]], "n": [1]}, "input 'x' must be float32, got str32 values"),
    ({"x": [[1.0, 2.0, 3.0]], "n": [1.5]}, "input 'n' must be int64, got float64 values"),
    ({"x": [[1.0, 2.0], [3.0]], "n": [1]}, "input 'x' is not a rectangular array"),
])
def test_inputs_off_the_signature_are_refused_with_the_reason(model_path, inputs, message):
    session = load(model_path, device="cpu")
    with pytest.raises(InvalidInput) as raised:
        session.run(inputs)
    assert message in str(raised.value)


@pytest.mark.parametrize("inputs, message", [
    ({"x": np.ones((1, 4), np.float32), "n": np.ones(1, np.int64)},
     "input 'x' dimension 1 must be 3, got 4 (shape [1, 4])"),
    ({"x": np.ones((1, 3), np.float32), "n": np.ones(1, np.int64), "z": np.ones(1)}, "unknown input 'z'"),
    ({"x": np.ones((1, 3), np.float32), "m": np.ones(1, np.int64)}, "unknown input 'm'"),
    ({"x": np.ones((1, 3), np.float32), "n": np.ones(1, np.float64)}, "input 'n' must be int64, got float64 values"),
])
def test_arrays_off_the_signature_get_the_same_reasons(model_path, inputs, message):
    """Arrays of the right dtypes and ranks go to onnxruntime unchecked: what it refuses gets
    check_inputs()'s reason all the same."""
    with pytest.raises(InvalidInput) as raised:
        load(model_path, device="cpu").run(inputs)
    assert message in str(raised.value)


def test_model_failure_with_valid_inputs_stays_onnxruntimes(tmp_path):
    path = write_model(tmp_path / "reshape.onnx", [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])],
                       [numpy_helper.from_array(np.array([2, -1], np.int64), "shape")])
    session = load(path, device="cpu")
    assert session.run({"x": np.ones((2, 3), np.float32)})["y"].shape == (2, 3)
    with pytest.raises(Exception) as raised:
        session.run({"x": np.ones((1, 3), np.float32)})  # 3 values do not make 2 rows
    assert not isinstance(raised.value, InvalidInput)
    assert "Reshape" in str(raised.value) or "reshape" in str(raised.value)


def test_strided_and_byte_swapped_arrays_score_like_plain_ones(model_path):
    session = load(model_path, device="cpu")
    inputs = affine_inputs(5)
    expected = session.run(inputs)
    views = {"x": np.repeat(inputs["x"], 2, axis=0)[::2], "n": inputs["n"].astype(">i8")}
    outputs = session.run(views)
    np.testing.assert_array_equal(outputs["y"], expected["y"])
    np.testing.assert_array_equal(outputs["doubled"], expected["doubled"])


def test_thread_count_comes_from_the_option_then_the_setting_then_the_usable_cores(monkeypatch):
    assert onnx_runtime.session_options().intra_op_num_threads == onnx_runtime.default_threads() >= 1
    monkeypatch.setenv(onnx_runtime.CPU_THREADS_ENV, "1")
    assert onnx_runtime.session_options().intra_op_num_threads == 1
    assert onnx_runtime.session_options(threads=3).intra_op_num_threads == 3
    monkeypatch.setenv(onnx_runtime.CPU_THREADS_ENV, "0")
    assert onnx_runtime.session_options().intra_op_num_threads == onnx_runtime.default_threads()


def test_operators_run_in_sequence_unless_inter_op_threads_are_asked_for():
    assert onnx_runtime.session_options().execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    parallel = onnx_runtime.session_options(inter_threads=2)
    assert parallel.execution_mode == ort.ExecutionMode.ORT_PARALLEL and parallel.inter_op_num_threads == 2
    assert onnx_runtime.session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.parametrize("setting", ["many", "-1"])
def test_unusable_thread_setting_names_the_variable(model_path, monkeypatch, setting):
    monkeypatch.setenv(onnx_runtime.CPU_THREADS_ENV, setting)
    with pytest.raises(AcceleratorError, match=onnx_runtime.CPU_THREADS_ENV):
        load(model_path, device="cpu")


def test_thread_option_sizes_a_working_session(model_path):
    session = load(model_path, device="cpu", threads=1, inter_threads=1)
    assert session.run(affine_inputs(2))["doubled"].tolist() == [0, 2]


# --- models onnxruntime cannot load -----------------------------------------------------------

def test_corrupt_model_is_unsupported_naming_the_file(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"not a model at all")
    with pytest.raises(UnsupportedModel) as raised:
        load(path, device="cpu")
    message = str(raised.value)
    assert message.startswith("corrupt.onnx: onnxruntime cannot load it: ") and "\n" not in message
    assert "INVALID_PROTOBUF" in message


def test_unknown_operator_is_unsupported_naming_the_file(tmp_path):
    path = write_model(tmp_path / "strange.onnx", [helper.make_node("NoSuchOperator", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(UnsupportedModel, match=r"^strange\.onnx: onnxruntime cannot load it: .*NoSuchOperator"):
        load(path, device="cpu")


def test_sequence_output_is_unsupported_with_a_hint(tmp_path):
    path = write_model(tmp_path / "sequence.onnx", [helper.make_node("SequenceConstruct", ["x"], ["s"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                       [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [1])])
    with pytest.raises(UnsupportedModel, match=r"^sequence\.onnx: 's' is of type seq\(tensor\(float\)\).*zipmap=False"):
        load(path, device="cpu")


# --- choosing the device ----------------------------------------------------------------------

def test_gpu_on_a_machine_without_one_is_unavailable_listing_the_devices(model_path, no_gpu):
    with pytest.raises(DeviceUnavailable) as raised:
        load(model_path, device="gpu")
    message = str(raised.value)
    assert message.startswith("device 'gpu' is not available: ")
    assert "available devices: cpu (" in message


def test_auto_picks_the_cpu_without_a_gpu(model_path, no_gpu):
    assert load(model_path, device="auto").device == "cpu"
    assert load(model_path).device == "cpu"


def test_unknown_device_lists_the_allowed_ones(model_path):
    with pytest.raises(AcceleratorError, match=r"unknown device 'tpu': use one of auto, cpu, gpu, opencl"):
        load(model_path, device="tpu")


def test_device_setting_is_used_when_no_device_is_named(model_path, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert load(model_path).device == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(AcceleratorError, match="unknown device 'tpu'"):
        load(model_path)
    assert load(model_path, device="cpu").device == "cpu"  # a named device wins over the setting


def test_available_devices_include_the_cpu():
    [cpu] = [device for device in available_devices() if device.kind == "cpu"]
    assert cpu.details["onnxruntime"] == ort.__version__
    assert cpu.details["logical_cores"] >= 1
    assert "CPUExecutionProvider" in cpu.details["providers"]


# --- the GPU, with fakes ----------------------------------------------------------------------

class FakeBinding:
    """Records what a GPU run binds; runs the model on the CPU."""

    def __init__(self, session: "FakeGpuSession") -> None:
        self.session = session
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: list[tuple[str, str, int]] = []
        self.results: list[np.ndarray] = []

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.inputs[name] = array

    def bind_output(self, name: str, device_type: str, device_id: int) -> None:
        self.outputs.append((name, device_type, device_id))

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return self.results


class FakeGpuSession:
    """An InferenceSession that reports the providers it was given that onnxruntime lists, or
    only the CPU when `falls_back`: what onnxruntime does when the CUDA libraries are missing."""

    created: list["FakeGpuSession"] = []
    falls_back = False

    def __init__(self, model, options=None, providers=()) -> None:
        self.asked = list(providers)
        self._real = RealInferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.bindings: list[FakeBinding] = []
        type(self).created.append(self)

    def get_providers(self) -> list[str]:
        if self.falls_back:
            return ["CPUExecutionProvider"]
        names = [provider[0] if isinstance(provider, tuple) else provider for provider in self.asked]
        return [name for name in names if name in ort.get_available_providers()]

    def get_inputs(self):
        return self._real.get_inputs()

    def get_outputs(self):
        return self._real.get_outputs()

    def run(self, names, inputs):
        return self._real.run(names, inputs)

    def io_binding(self) -> FakeBinding:
        self.bindings.append(FakeBinding(self))
        return self.bindings[-1]

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        binding.results = self._real.run([name for name, _, _ in binding.outputs], binding.inputs)


@pytest.fixture()
def fake_gpu(monkeypatch, fresh_probe):
    """onnxruntime with the given providers listed and FakeGpuSession for InferenceSession."""

    def install(providers: list[str], falls_back: bool = False) -> type[FakeGpuSession]:
        session_class = type("Fake", (FakeGpuSession,), {"created": [], "falls_back": falls_back})
        monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: list(providers))
        monkeypatch.setattr(onnx_runtime.ort, "InferenceSession", session_class)
        return session_class

    return install


def test_gpu_does_not_work_when_onnxruntime_lists_no_cuda_provider(fake_gpu):
    sessions = fake_gpu(["AzureExecutionProvider", "CPUExecutionProvider"])
    assert onnx_runtime.gpu_works() is False
    assert sessions.created == []  # decided from the list alone
    assert [device.kind for device in onnx_runtime.devices()] == ["cpu"]


def test_gpu_does_not_work_when_the_session_silently_falls_back_to_the_cpu(fake_gpu, model_path):
    fake_gpu(["CUDAExecutionProvider", "CPUExecutionProvider"], falls_back=True)
    assert onnx_runtime.gpu_works() is False
    with pytest.raises(DeviceUnavailable, match="CUDA provider cannot start"):
        load(model_path, device="gpu")


def test_gpu_does_not_work_when_the_probe_raises(fake_gpu, monkeypatch):
    fake_gpu(["CUDAExecutionProvider", "CPUExecutionProvider"])

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(onnx_runtime.ort, "InferenceSession", broken)
    assert onnx_runtime.gpu_works() is False
    assert "CUDA driver version is insufficient" in onnx_runtime._probe_gpu()[1]


def test_gpu_works_when_cuda_is_really_active_and_the_answer_is_cached(fake_gpu):
    sessions = fake_gpu(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_runtime.gpu_works() is True
    assert onnx_runtime.gpu_works() is True
    [probe] = sessions.created
    assert probe.asked == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_gpu_session_asks_for_tensorrt_then_cuda_then_cpu(fake_gpu, model_path):
    sessions = fake_gpu(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    session = load(model_path, device="gpu", device_id=1)
    assert session.device == "gpu"
    assert sessions.created[-1].asked == [
        ("TensorrtExecutionProvider", {"device_id": 1}), ("CUDAExecutionProvider", {"device_id": 1}),
        ("CPUExecutionProvider", {}),
    ]
    assert load(model_path).device == "gpu"  # auto


def test_gpu_session_without_tensorrt_asks_for_cuda_then_cpu(fake_gpu, model_path):
    sessions = fake_gpu(["CUDAExecutionProvider", "CPUExecutionProvider"])
    load(model_path, device="gpu")
    assert sessions.created[-1].asked == [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]
    [cpu, gpu] = onnx_runtime.devices()
    assert gpu.kind == "gpu" and gpu.details["provider"] == "CUDAExecutionProvider"


def test_gpu_run_binds_host_inputs_and_device_outputs(fake_gpu, model_path):
    sessions = fake_gpu(["CUDAExecutionProvider", "CPUExecutionProvider"])
    session = load(model_path, device="gpu", device_id=1)
    inputs = affine_inputs(3)
    outputs = session.run(inputs)
    [binding] = sessions.created[-1].bindings
    assert set(binding.inputs) == {"x", "n"}
    assert binding.outputs == [("y", "cuda", 1), ("doubled", "cuda", 1)]
    np.testing.assert_allclose(outputs["y"], inputs["x"] @ WEIGHTS + BIAS, rtol=1e-6)
    assert outputs["doubled"].tolist() == [0, 2, 4]
