"""The CPU and GPU backends: one onnxruntime session per model, tuned for serving, on the CPU
provider or on the TensorRT/CUDA providers, and never a silent fallback from the GPU to the CPU.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from mlscore.accelerators.base import (
    AcceleratorError, DeviceInfo, DeviceUnavailable, Dim, InvalidInput, TensorInfo, UnsupportedModel,
    check_inputs,
)

CPU_THREADS_ENV = "MLSCORE_CPU_THREADS"  # the --cpu-threads setting; 0 or unset: default_threads()

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

# onnxruntime's type strings for tensors and the numpy dtypes they hold.
ORT_DTYPES: dict[str, np.dtype] = {
    f"tensor({name})": np.dtype(dtype) for name, dtype in [
        ("float", np.float32), ("double", np.float64), ("float16", np.float16), ("bool", np.bool_),
        ("int8", np.int8), ("int16", np.int16), ("int32", np.int32), ("int64", np.int64),
        ("uint8", np.uint8), ("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64),
    ]
}


class OrtSession:
    """One model on one device. A single InferenceSession serves every caller: onnxruntime's
    run() is thread-safe, so concurrent run() calls need neither a lock nor a session each."""

    def __init__(self, session: ort.InferenceSession, device: str, device_id: int = 0) -> None:
        self.device = device
        self.providers: list[str] = session.get_providers()
        self.inputs = [_tensor_info(arg) for arg in session.get_inputs()]
        self.outputs = [_tensor_info(arg) for arg in session.get_outputs()]
        self._session = session
        self._device_id = device_id
        self._output_names = [info.name for info in self.outputs]
        self._expected = tuple((info.name, info.dtype, len(info.shape)) for info in self.inputs)
        # InferenceSession.run() is its C++ session's run() behind about 1 µs of Python checks
        # (OrtValue ownership, WebGPU graph capture, missing inputs): a fifth of a small model's
        # run. Ours passes ndarrays only, captures no graph, and has found every input by then.
        # The public run() stands in should a version of onnxruntime lack the C++ session.
        self._run_arrays = getattr(getattr(session, "_sess", None), "run", session.run)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for `inputs`. Arrays of the model's dtypes and ranks go to
        onnxruntime as they are, and it checks the rest; anything else, and inputs it refuses, go
        through check_inputs(), whose InvalidInput says what is wrong."""
        arrays = inputs if self._ready(inputs) else check_inputs(self.inputs, inputs)
        try:
            if self.device == "gpu":
                return self._run_bound(arrays)
            return dict(zip(self._output_names, self._run_arrays(self._output_names, arrays, None)))
        except Exception:  # onnxruntime's errors share no base: the inputs' fault, or the model's
            problem = None if arrays is not inputs else _input_problem(self.inputs, inputs)
            if problem is None:
                raise
            raise problem from None

    def _ready(self, inputs: Mapping[str, Any]) -> bool:
        """Whether `inputs` are exactly the model's inputs, each an ndarray of its dtype and rank:
        what a server sends on every call, checked at a fraction of check_inputs()'s cost."""
        if len(inputs) != len(self._expected):
            return False
        for name, dtype, rank in self._expected:
            array = inputs.get(name)
            if not isinstance(array, np.ndarray) or array.dtype is not dtype or array.ndim != rank:
                return False
        return True

    def _run_bound(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A GPU run through I/O binding: each input goes from the host array to the device once,
        and each output is left where the GPU wrote it and copied to the host once, straight into
        the returned array. A binding is not thread-safe, so every call makes its own. It points
        at each input's memory, which must be contiguous and stay alive until the run is over."""
        binding = self._session.io_binding()
        contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
        for name, array in contiguous.items():
            binding.bind_cpu_input(name, array)
        for name in self._output_names:
            binding.bind_output(name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        return dict(zip(self._output_names, binding.copy_outputs_to_cpu()))


def _input_problem(expected: list[TensorInfo], inputs: Mapping[str, Any]) -> InvalidInput | None:
    """What check_inputs() finds wrong with `inputs`, or None when it finds nothing."""
    try:
        check_inputs(expected, inputs)
    except InvalidInput as problem:
        return problem
    return None


def load(path: Path, device: str, *, threads: int | None = None, inter_threads: int | None = None,
         device_id: int = 0) -> OrtSession:
    """A session for the ONNX model at `path` on "cpu" or "gpu". `threads` and `inter_threads`
    size onnxruntime's thread pools (see session_options); `device_id` picks the GPU."""
    if device == "cpu":
        providers: list[Any] = [CPU]
    elif device == "gpu":
        providers = gpu_providers(device_id)
    else:
        raise AcceleratorError(f"onnxruntime runs models on cpu or gpu, not {device!r}")
    session = _create_session(path, session_options(threads, inter_threads), providers)
    if device == "gpu" and not set(GPU_PROVIDERS) & set(session.get_providers()):
        raise DeviceUnavailable(f"{path.name}: onnxruntime placed the model on {', '.join(session.get_providers())} "
                                f"instead of the GPU; available devices: {_available()}")
    try:
        return OrtSession(session, device, device_id)
    except UnsupportedModel as error:
        raise UnsupportedModel(f"{path.name}: {error}") from None


def gpu_providers(device_id: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """The providers of a GPU session, fastest first: TensorRT when onnxruntime has it, CUDA, and
    the CPU for the operators neither implements. DeviceUnavailable when the GPU does not work."""
    works, reason = _probe_gpu()
    if not works:
        raise DeviceUnavailable(f"device 'gpu' is not available: {reason}; available devices: {_available()}")
    options = {"device_id": device_id}
    providers = [(CUDA, options), (CPU, {})]
    if TENSORRT in ort.get_available_providers():
        providers.insert(0, (TENSORRT, options))
    return providers


def session_options(threads: int | None = None, inter_threads: int | None = None) -> ort.SessionOptions:
    """Options for a serving session: every graph optimisation (paid once, at load), and thread
    pools sized from `threads`, else MLSCORE_CPU_THREADS, else default_threads().

    Operators run one after another (sequential mode) unless `inter_threads` > 1 asks for
    independent branches of the graph to run at once: in a server, concurrency comes from the
    requests, and a second pool per session would only compete with them for the cores."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = _thread_count("threads", threads) or _threads_from_env() or default_threads()
    # Idle pool threads spin for a while by default, waiting for the next operator: on a serving
    # box they take the CPU from the other scoring workers and from the HTTP front.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    inter = _thread_count("inter_threads", inter_threads)
    if inter and inter > 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = inter
    else:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def default_threads() -> int:
    """The cores this process may really use: its CPU affinity, capped by a cgroup v2 CPU quota
    (`docker --cpus`, Kubernetes limits). onnxruntime's own default counts the host's physical
    cores, blind to both: in a container it oversubscribes the quota, and it pins threads to cores
    outside a cpuset. A request on a replica with the default concurrency of 1 gets every core;
    with several scoring workers, set MLSCORE_CPU_THREADS to the cores divided by the workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return max(1, min(cores, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2, or quota "max": no limit beyond the affinity
        return cores


def gpu_works() -> bool:
    """Whether onnxruntime's CUDA provider really runs a model here (cached; never raises)."""
    return _probe_gpu()[0]


@functools.lru_cache(maxsize=1)
def _probe_gpu() -> tuple[bool, str]:
    """(works, why not). The CUDA provider must be listed, a tiny model's session must keep it
    (onnxruntime falls back to the CPU with only a log line when the CUDA libraries are missing),
    and the model must run."""
    available = ort.get_available_providers()
    if CUDA not in available:
        return False, f"onnxruntime {ort.__version__} has no CUDA provider (it has {', '.join(available)})"
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the probe's outcome is the answer: its fallback warnings would only alarm
    try:
        session = ort.InferenceSession(_probe_model(), options, providers=[CUDA, CPU])
        if CUDA not in session.get_providers():
            return False, "onnxruntime's CUDA provider cannot start (CUDA or cuDNN libraries missing, or no GPU)"
        session.run(None, {"x": np.ones(1, np.float32)})
    except Exception as error:  # whatever the driver or the provider raise, the GPU does not work
        return False, f"a model on onnxruntime's CUDA provider fails: {_one_line(error)}"
    return True, ""


def _probe_model() -> bytes:
    """y = x + x on one float: the smallest model that runs a kernel on the device."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


def devices() -> list[DeviceInfo]:
    """The CPU, and the GPU when gpu_works()."""
    cpu = DeviceInfo("cpu", cpu_name(), {
        "onnxruntime": ort.__version__, "logical_cores": os.cpu_count(), "threads": default_threads(),
        "providers": ort.get_available_providers(),
    })
    if not gpu_works():
        return [cpu]
    provider = TENSORRT if TENSORRT in ort.get_available_providers() else CUDA
    details = {"onnxruntime": ort.__version__, "provider": provider, "device_id": 0, **_nvidia_smi(0)}
    return [cpu, DeviceInfo("gpu", details.get("name", "CUDA device 0"), details)]


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _nvidia_smi(device_id: int) -> dict[str, Any]:
    """The GPU's name and memory from nvidia-smi; nothing when it is absent or fails."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        answer = subprocess.run(
            ["nvidia-smi", f"--id={device_id}", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
        name, memory = (part.strip() for part in answer.strip().split(","))
        return {"name": name, "memory_mib": int(memory)}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def _available() -> str:
    """The devices that work here, for an error message."""
    from mlscore.accelerators import available_devices

    return ", ".join(f"{info.kind} ({info.name})" for info in available_devices())


def _create_session(path: Path, options: ort.SessionOptions, providers: list[Any]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime's errors (InvalidGraph, NotImplemented, Fail...) share no base
        raise UnsupportedModel(f"{path.name}: onnxruntime cannot load it: {_one_line(error)}") from None


def _tensor_info(arg: Any) -> TensorInfo:
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None:
        hint = " (convert scikit-learn classifiers with zipmap=False)" if arg.type.startswith("seq(") else ""
        raise UnsupportedModel(f"{arg.name!r} is of type {arg.type}; numeric and bool tensors are supported{hint}")
    shape: tuple[Dim, ...] = tuple(d if isinstance(d, int) else (d or "?") for d in arg.shape)
    return TensorInfo(arg.name, dtype, shape)


def _threads_from_env() -> int:
    raw = os.environ.get(CPU_THREADS_ENV, "").strip()
    if raw and not raw.isdigit():
        raise AcceleratorError(f"{CPU_THREADS_ENV}={raw!r}: use a whole number of threads (0: the default)")
    return int(raw or 0)


def _thread_count(label: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise AcceleratorError(f"{label}={value!r}: use a whole number of threads (0: the default)")
    return value


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
