"""Accelerator benchmarks (issue 4, item 7): the backends' cost against what they wrap, the OpenCL
kernels against a naive OpenCL implementation and numpy, and the no-code model server over HTTP.

Three parts, each runnable alone (``--part``, a comma list; default all):

- ``wrapper``: for each example model (``digits_onnx`` MLP, ``cnn_onnx`` CNN) at batch 1 and 64,
  on each backend ``available_devices()`` lists, ``accelerators.load(model, device).run({...})``
  against onnxruntime called directly (an ``InferenceSession`` with the same ``session_options()``
  and providers, ``run(None, {...})`` on a ready float32 array). The two alternate in blocks of
  calls (the order flips every block) so that drift hits both; p50/p99 per call, and the overhead
  of the medians against the target of 5 %. A miss is broken down step by step. The OpenCL backend
  has no direct equivalent: its figures stand beside onnxruntime's on the CPU.
- ``opencl``: the digits MLP at batch 64 on the OpenCL device three ways: our session; a naive
  OpenCL implementation (one work-item per output element, global memory only: a matmul+bias
  kernel per layer with the relu folded in, as our session folds it, then softmax; buffers
  allocated once and the input and output moved as ours are, so only the kernels differ); numpy.
  All are checked against onnxruntime first (1e-4). Target: naive/ours >= 5x. Per-kernel device
  times from OpenCL profiling events, and the cost of an empty launch, say where the
  time goes; a larger synthetic MLP (64-512-512-10) shows how the ratio scales with the work. The
  CNN at batch 64 runs against onnxruntime for context.
- ``http``: three mlscore servers with default settings (the processes executor): the no-code
  ``serve --model digits_mlp.onnx`` on ``/score`` and on ``/v2/models/digits_mlp/infer`` (one
  [1, 64] FP32 tensor, JSON), and the diabetes entry script on ``/score``; wrk cells alternate
  between them as in ``http_bench.py``, whose helpers this reuses. Ratios are against diabetes.

``--write-results`` appends a dated section to ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/accel_bench.py --write-results                  # about 6 minutes
    .venv/bin/python benchmarks/accel_bench.py --part opencl
    .venv/bin/python benchmarks/accel_bench.py --part http --duration 2 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib.metadata
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

# numpy's OpenBLAS workers spin for a while after each call before they sleep; on 2 cores they took
# one from pocl's workers, and the OpenCL session measured 6-7.6 ms instead of 4.3 ms on the
# 64-512-512-10 MLP whenever numpy ran in the same round. Read when OpenBLAS loads: before numpy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# pocl lists only its pthread driver unless told; the OpenCL part compares it with the basic one.
POCL_DRIVERS = "basic pthread"
os.environ.setdefault("POCL_DEVICES", POCL_DRIVERS)

import numpy as np  # noqa: E402

import http_bench  # run as a script, benchmarks/ is on sys.path
from http_bench import (
    BODY, BUSY_SHARE, HOST, LOGS, POST_LUA, REPO, RESULTS_MD, VENV_PY, WORK, Cell, Row, Server, ServerSpec,
    _raise_on_sigterm, cpu_busy_share, environment_lines, free_port, git_revision, http_status, int_list,
    log_tail, markdown_table, mlscore_command, name_list, parse_wrk, render_table, require_wrk, run_wrk, start_server,
    stop_servers, wait_idle, wait_ready,
)

PARTS = ("wrapper", "opencl", "http")
EXAMPLES = REPO / "examples"
DIGITS_MLP = EXAMPLES / "digits_onnx" / "models" / "digits_mlp.onnx"
CNN = EXAMPLES / "cnn_onnx" / "models" / "cnn.onnx"
DIABETES_SCRIPT = EXAMPLES / "diabetes" / "score.py"
DIABETES_MODELS = EXAMPLES / "diabetes" / "models"
BIG_MLP = WORK / "mlp_64_512_512_10.onnx"
BIG_MLP_WIDTHS = (64, 512, 512, 10)
LOG_DIR = LOGS / "accel"
LUA_DIR = WORK / "accel-lua"

BATCHES = (1, 64)
OPENCL_BATCH = 64
OVERHEAD_TARGET = 0.05  # the wrapper's p50 over onnxruntime's, at most
NAIVE_TARGET = 5.0  # naive OpenCL p50 / ours, at least
AGREEMENT = 1e-4  # largest absolute difference from onnxruntime's probabilities
WARMUP_CALLS = 30
PROFILE_PASSES = 200
MIN_CALLS, MAX_CALLS = 5, 5000  # per block


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Accelerator benchmarks: wrapper overhead, OpenCL kernels, "
                                                 "no-code HTTP throughput.")
    parser.add_argument("--part", type=name_list(PARTS, "parts"), default=list(PARTS),
                        help="comma list among wrapper,opencl,http (default all)")
    parser.add_argument("--blocks", type=int, default=20,
                        help="alternating blocks per in-process comparison (default 20)")
    parser.add_argument("--block-ms", type=float, default=100.0,
                        help="target length of one block of calls of one contender, ms (default 100)")
    parser.add_argument("--duration", type=int, default=8, help="whole seconds per wrk cell (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="wrk cells per (target, concurrency) (default 3)")
    parser.add_argument("--concurrency", type=int_list, default=[8, 64], help="comma list (default 8,64)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="whole seconds of discarded wrk load before each cell, 0 for none (default 1)")
    parser.add_argument("--write-results", action="store_true", help=f"append a dated section to {RESULTS_MD.name}")
    args = parser.parse_args(argv)
    if args.blocks < 2 or args.block_ms <= 0 or args.repeats < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--blocks must be >= 2, --block-ms > 0, --repeats and --duration >= 1, --warmup >= 0")
    return args


def die(message: str) -> NoReturn:
    print(f"accel_bench: {message}", file=sys.stderr)
    raise SystemExit(1)


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Per-call wall times of one contender, in nanoseconds."""

    label: str
    samples_ns: list[int] = field(default_factory=list)

    @property
    def p50_us(self) -> float:
        return float(np.percentile(self.samples_ns, 50)) / 1e3

    @property
    def p99_us(self) -> float:
        return float(np.percentile(self.samples_ns, 99)) / 1e3


def calls_per_block(call: Callable[[], object], block_ms: float) -> int:
    """How many calls of `call` fill about `block_ms` (after warming it up)."""
    for _ in range(WARMUP_CALLS):
        call()
    started = time.perf_counter()
    for _ in range(WARMUP_CALLS):
        call()
    per_call_ms = (time.perf_counter() - started) * 1e3 / WARMUP_CALLS
    return int(min(MAX_CALLS, max(MIN_CALLS, block_ms / per_call_ms)))


def time_interleaved(contenders: dict[str, Callable[[], object]], blocks: int, block_ms: float) -> dict[str, Timing]:
    """Each contender timed call by call in `blocks` rounds; in every round each runs one block of
    calls, in an order rotated round by round, so that drift of the machine hits all of them alike.
    Every contender gets the same number of calls per block: the slowest one's block_ms worth."""
    calls = min(calls_per_block(call, block_ms) for call in contenders.values())
    timings = {label: Timing(label) for label in contenders}
    order = list(contenders)
    gc.collect()
    for block in range(blocks):
        shift = block % len(order)
        for label in order[shift:] + order[:shift]:
            call, samples = contenders[label], timings[label].samples_ns
            for _ in range(calls):
                started = time.perf_counter_ns()
                call()
                samples.append(time.perf_counter_ns() - started)
    return timings


def us(value: float) -> str:
    return f"{value:,.1f}"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    input_name: str
    row_shape: tuple[int, ...]  # one sample's shape, after the batch dimension

    def batch(self, size: int) -> np.ndarray:
        """The first `size` digits of scikit-learn's set, in this model's input layout, float32."""
        return np.ascontiguousarray(digit_pixels()[:size].reshape(size, *self.row_shape))


@functools.lru_cache(maxsize=1)
def digit_pixels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


EXAMPLE_MODELS = (
    Example("digits_onnx MLP 64-32-10", DIGITS_MLP, "input", (64,)),
    Example("cnn_onnx CNN", CNN, "image", (1, 8, 8)),
)


def require_models() -> None:
    if DIGITS_MLP.is_file() and CNN.is_file():
        return
    print("building the example models: examples/build_models.py", flush=True)
    subprocess.run([str(VENV_PY), str(EXAMPLES / "build_models.py")], cwd=REPO, check=True)


def direct_session(path: Path, device: str) -> Any:
    """onnxruntime called directly, set up as our backend sets itself up: the same SessionOptions
    (graph optimisations, thread pools, no spinning) and the same providers."""
    import onnxruntime as ort

    from mlscore.accelerators.onnx_runtime import CPU, gpu_providers, session_options

    providers = [CPU] if device == "cpu" else gpu_providers()
    return ort.InferenceSession(str(path), sess_options=session_options(), providers=providers)


# --------------------------------------------------------------------------- part 1: wrapper


@dataclass
class WrapperRow:
    model: str
    batch: int
    device: str  # "cpu", "gpu", "opencl (device name)"
    direct: Timing  # onnxruntime called directly (on the CPU for the opencl rows)
    ours: Timing
    comparable: bool  # whether `direct` runs the same thing on the same device

    @property
    def ratio(self) -> float:
        return self.ours.p50_us / self.direct.p50_us

    @property
    def passed(self) -> bool:
        return self.ratio - 1 <= OVERHEAD_TARGET


@dataclass
class Breakdown:
    """Where a wrapper's time goes: onnxruntime called directly, then the wrapper's steps added one by one."""

    model: str
    batch: int
    steps: list[tuple[str, Timing]]
    check_inputs_alone: Timing


def backends() -> list[tuple[str, str]]:
    """(device for load(), label) of each backend this machine has."""
    from mlscore.accelerators import available_devices

    found = available_devices()
    listed: list[tuple[str, str]] = [("cpu", "cpu")]
    if any(info.kind == "gpu" for info in found):
        listed.append(("gpu", "gpu"))
    listed += [("opencl", f"opencl ({info.name})") for info in found if info.kind == "opencl"][:1]
    return listed


def run_wrapper_part(args: argparse.Namespace) -> tuple[list[WrapperRow], list[Breakdown]]:
    from mlscore.accelerators import load

    rows: list[WrapperRow] = []
    breakdowns: list[Breakdown] = []
    for example in EXAMPLE_MODELS:
        for batch in BATCHES:
            feed = {example.input_name: example.batch(batch)}
            cpu_direct = direct_session(example.path, "cpu")
            for device, label in backends():
                session = load(example.path, device=device)
                direct = cpu_direct if device == "opencl" else direct_session(example.path, device)
                timings = time_interleaved({"direct": lambda: direct.run(None, feed),
                                            "ours": lambda: session.run(feed)}, args.blocks, args.block_ms)
                row = WrapperRow(example.name, batch, label, timings["direct"], timings["ours"], device != "opencl")
                rows.append(row)
                print(f"wrapper: {example.name} batch {batch} {label}: onnxruntime p50 {us(row.direct.p50_us)} "
                      f"p99 {us(row.direct.p99_us)} us; mlscore p50 {us(row.ours.p50_us)} "
                      f"p99 {us(row.ours.p99_us)} us ({row.ratio:.3f}x)", flush=True)
                if row.comparable and not row.passed:
                    breakdowns.append(break_down(example, batch, session, direct, feed, args))
    return rows, breakdowns


def break_down(example: Example, batch: int, session: Any, direct: Any, feed: dict[str, np.ndarray],
               args: argparse.Namespace) -> Breakdown:
    """The wrapper's run() rebuilt one step at a time, all interleaved: onnxruntime's run(None),
    run(output names), the same call on its C++ session (which the wrapper makes, skipping the
    Python checks of InferenceSession.run), with the result dict, and the wrapper itself (its check
    that the inputs are ready arrays, and the method call). The differences between neighbours are
    what each step costs where it runs, caches and all, which is more than the step alone in a
    loop. check_inputs(), which only inputs that are not ready arrays go through, is timed alone."""
    from mlscore.accelerators import check_inputs

    names = [info.name for info in session.outputs]
    expected = session.inputs
    core = direct._sess  # what InferenceSession.run calls after its Python checks
    steps: dict[str, Callable[[], object]] = {
        "onnxruntime run(None, feed)": lambda: direct.run(None, feed),
        "+ output names: run(names, feed)": lambda: direct.run(names, feed),
        "− InferenceSession's Python checks: _sess.run(names, feed)": lambda: core.run(names, feed, None),
        "+ result dict: dict(zip(names, ...))": lambda: dict(zip(names, core.run(names, feed, None))),
        "= session.run(feed) (the wrapper)": lambda: session.run(feed),
    }
    timings = time_interleaved(steps, args.blocks, args.block_ms)
    alone = time_interleaved({"check_inputs() alone": lambda: check_inputs(expected, feed)}, 3, args.block_ms)
    return Breakdown(example.name, batch, list(timings.items()), alone["check_inputs() alone"])


def wrapper_tables(rows: list[WrapperRow], breakdowns: list[Breakdown]) -> list[str]:
    lines = [["model", "batch", "device", "calls each", "onnxruntime direct p50 µs", "p99 µs",
              "mlscore load().run p50 µs", "p99 µs", "ours / direct (p50)", "verdict"],
             ["---", "--:", "---", "--:", "--:", "--:", "--:", "--:", "--:", "---"]]
    for row in rows:
        direct_label = "" if row.comparable else " (CPU)"
        verdict = ("PASS" if row.passed else "FAIL") if row.comparable else "n/a (no direct equivalent)"
        lines.append([row.model, str(row.batch), row.device, f"{len(row.ours.samples_ns):,}",
                      us(row.direct.p50_us) + direct_label,
                      us(row.direct.p99_us), us(row.ours.p50_us), us(row.ours.p99_us), f"{row.ratio:.3f}x", verdict])
    out = [markdown_table(lines), ""]
    if breakdowns:
        out += breakdown_table(breakdowns)
    return out


def breakdown_table(breakdowns: list[Breakdown]) -> list[str]:
    """One column per (model, batch) that missed the target: each step's p50 and what it added."""
    header = ["step (each changes one thing from the one above; all interleaved)",
              *(f"{b.model.split()[0]} batch {b.batch}: p50 µs (Δ)" for b in breakdowns)]
    lines = [header, ["---", *("--:" for _ in breakdowns)]]
    for index, (label, _) in enumerate(breakdowns[0].steps):
        cells = [label]
        for breakdown in breakdowns:
            timing = breakdown.steps[index][1]
            delta = "" if index == 0 else f" ({timing.p50_us - breakdown.steps[index - 1][1].p50_us:+.2f})"
            cells.append(us(timing.p50_us) + delta)
        lines.append(cells)
    lines.append(["check_inputs() alone (inputs that are not ready arrays), in a hot loop",
                  *(us(b.check_inputs_alone.p50_us) for b in breakdowns)])
    return ["Where the wrapper's time goes (cpu, the rows that missed):", "", markdown_table(lines), ""]


def wrapper_verdicts(rows: list[WrapperRow]) -> list[str]:
    lines = []
    for row in rows:
        if not row.comparable:
            continue
        overhead = row.ratio - 1
        lines.append(f"{'PASS' if row.passed else 'FAIL'} wrapper overhead <= {OVERHEAD_TARGET:.0%} "
                     f"({row.model}, batch {row.batch}, {row.device}): {overhead:+.1%} "
                     f"(p50 {us(row.ours.p50_us)} vs {us(row.direct.p50_us)} µs, "
                     f"{row.ours.p50_us - row.direct.p50_us:+.2f} µs)")
    return lines


# --------------------------------------------------------------------------- part 2: OpenCL kernels

NAIVE_SOURCE = r"""
/* y[row][col] = b[col] + sum_k x[row][k] * w[k][col], then relu when asked (our session folds the
   bias and the relu into its matrix product the same way): one work-item per output, global
   memory only. */
__kernel void dense(__global const float *x, __global const float *w, __global const float *b,
                    __global float *y, const int K, const int N, const int relu)
{
    const int col = get_global_id(0), row = get_global_id(1);
    float acc = b[col];
    for (int k = 0; k < K; ++k)
        acc += x[row * K + k] * w[k * N + col];
    y[row * N + col] = relu ? fmax(acc, 0.0f) : acc;
}

/* One work-item per output: each recomputes its row's maximum and sum. */
__kernel void softmax(__global const float *x, __global float *y, const int N)
{
    const int col = get_global_id(0), row = get_global_id(1);
    __global const float *r = x + row * N;
    float top = -INFINITY;
    for (int i = 0; i < N; ++i)
        top = fmax(top, r[i]);
    float sum = 0.0f;
    for (int i = 0; i < N; ++i)
        sum += exp(r[i] - top);
    y[row * N + col] = exp(r[col] - top) / sum;
}
"""


def mlp_layers(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W [K, N], b [N]) per layer of an MLP graph written as MatMul, Add, Relu, ..., MatMul, Add,
    Softmax (Identity allowed): what skl2onnx writes for MLPClassifier and what build_big_mlp() writes."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {tensor.name: numpy_helper.to_array(tensor).astype(np.float32) for tensor in graph.initializer}
    ops = [node.op_type for node in graph.node if node.op_type != "Identity"]
    layers = [(np.ascontiguousarray(weights[node.input[1]]), None) for node in graph.node if node.op_type == "MatMul"]
    biases = [next(weights[name] for name in node.input if name in weights)
              for node in graph.node if node.op_type == "Add"]
    expected = ["MatMul", "Add", "Relu"] * (len(layers) - 1) + ["MatMul", "Add", "Softmax"]
    if ops != expected or len(biases) != len(layers):
        die(f"{path.name} is not a MatMul/Add/Relu/.../Softmax MLP: {ops}")
    return [(w, np.ascontiguousarray(b.reshape(-1))) for (w, _), b in zip(layers, biases, strict=True)]


def numpy_mlp(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The MLP in float32 numpy: matmul + bias, relu between layers, softmax at the end."""
    for index, (w, b) in enumerate(layers):
        x = x @ w + b
        if index < len(layers) - 1:
            np.maximum(x, 0.0, out=x)
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class KernelLaunch:
    name: str
    kernel: Any  # pyopencl Kernel, arguments bound
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None


class PassIO:
    """How a pass moves its input in and its output out, as our session does on this device: numpy
    copies in memory the host and the kernels share (fine-grained SVM) when the device is in the
    host's memory, else a write and a read command."""

    def __init__(self, input_buffer: Any, output_buffer: Any, out_shape: tuple[int, ...],
                 input_view: np.ndarray | None = None, output_view: np.ndarray | None = None) -> None:
        self.input_buffer, self.output_buffer, self.out_shape = input_buffer, output_buffer, out_shape
        self.input_view, self.output_view = input_view, output_view

    def upload(self, queue: Any, x: np.ndarray) -> None:
        import pyopencl as cl

        if self.input_view is not None:
            np.copyto(self.input_view, x)
        else:
            cl.enqueue_copy(queue, self.input_buffer, x, is_blocking=False)

    def read_back(self, queue: Any) -> np.ndarray:
        """The output, once everything enqueued is done."""
        import pyopencl as cl

        if self.output_view is not None:
            queue.finish()
            return self.output_view.copy()
        result = np.empty(self.out_shape, np.float32)
        cl.enqueue_copy(queue, result, self.output_buffer, is_blocking=False)
        queue.finish()
        return result


class NaiveMLP:
    """The MLP on an OpenCL device with the naive kernels: weights uploaded and every buffer
    allocated once, kernels bound once; run() does what our session's run() does (upload, launches,
    read-back into a fresh array, wait, with the same PassIO), so that only the kernels differ."""

    def __init__(self, context: Any, device: Any, layers: list[tuple[np.ndarray, np.ndarray]], batch: int) -> None:
        import pyopencl as cl

        from mlscore.accelerators.opencl.device import shares_host_memory

        self._cl = cl
        self.queue = cl.CommandQueue(context, device)
        self.program = cl.Program(context, NAIVE_SOURCE).build(devices=[device])
        read_only = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        self._weights = [(cl.Buffer(context, read_only, hostbuf=w), cl.Buffer(context, read_only, hostbuf=b))
                         for w, b in layers]
        widths = [layers[0][0].shape[0], *(w.shape[1] for w, _ in layers)]
        self._buffers: list[Any] = []  # a bound kernel does not keep its buffers alive: this list does
        self.out_shape = (batch, widths[-1])
        if shares_host_memory(device):
            input_view = cl.fsvm_empty(context, (batch, widths[0]), np.float32)
            output_view = cl.fsvm_empty(context, self.out_shape, np.float32)
            self.io = PassIO(cl.SVM(input_view), cl.SVM(output_view), self.out_shape, input_view, output_view)
        else:
            self.io = PassIO(self._buffer(context, batch * widths[0]), self._buffer(context, batch * widths[-1]),
                             self.out_shape)
        self.launches: list[KernelLaunch] = []
        x = self.io.input_buffer
        for index, ((w, b), (k, n)) in enumerate(zip(self._weights, zip(widths, widths[1:]), strict=True)):
            y = self._buffer(context, batch * n)
            hidden = index < len(layers) - 1
            self._launch("dense", (n, batch), x, w, b, y, np.int32(k), np.int32(n), np.int32(hidden))
            x = y
        self._launch("softmax", (widths[-1], batch), x, self.io.output_buffer, np.int32(widths[-1]))

    def _buffer(self, context: Any, floats: int) -> Any:
        self._buffers.append(self._cl.Buffer(context, self._cl.mem_flags.READ_WRITE, floats * 4))
        return self._buffers[-1]

    def _launch(self, name: str, global_size: tuple[int, ...], *args: Any) -> None:
        kernel = self._cl.Kernel(self.program, name)
        kernel.set_args(*args)
        self.launches.append(KernelLaunch(name, kernel, global_size, None))

    def run(self, x: np.ndarray) -> np.ndarray:
        self.io.upload(self.queue, x)
        for launch in self.launches:
            self._cl.enqueue_nd_range_kernel(self.queue, launch.kernel, launch.global_size, launch.local_size)
        return self.io.read_back(self.queue)


def our_launches(session: Any, feed: dict[str, np.ndarray]) -> tuple[PassIO, list[KernelLaunch]]:
    """How our session moves the input and output, and the bound kernels it replays, for these
    inputs (one input, one output). Read from the session's private plan: for the profile only,
    never to run the model."""
    session.run(feed)
    plan = session._plans[tuple(array.shape for array in feed.values())]
    launches = [KernelLaunch(launch.kernel.function_name, launch.kernel, launch.global_size, launch.local_size)
                for launch in plan.launches]
    [(input_name, _)] = feed.items()
    [(output_name, output)] = plan.outputs.items()
    io = PassIO(plan.inputs[input_name], output.buffer, output.shape, plan.shared.get(input_name),
                plan.shared.get(output_name))
    return io, launches


@dataclass
class KernelProfile:
    """Device time per launch (median over the passes, from OpenCL profiling events) and the wall
    time of a whole pass (upload, launches, read-back) on a profiling queue."""

    kernels: list[tuple[str, tuple[int, ...], tuple[int, ...] | None, float]]  # name, global, local, µs
    wall_us: float

    @property
    def kernel_us(self) -> float:
        return sum(entry[3] for entry in self.kernels)


def profile_pass(context: Any, device: Any, io: PassIO, x: np.ndarray, launches: list[KernelLaunch],
                 passes: int = PROFILE_PASSES) -> KernelProfile:
    import pyopencl as cl

    queue = cl.CommandQueue(context, device, properties=cl.command_queue_properties.PROFILING_ENABLE)
    per_kernel: list[list[float]] = [[] for _ in launches]
    walls: list[float] = []
    for index in range(passes + WARMUP_CALLS):
        started = time.perf_counter_ns()
        io.upload(queue, x)
        events = [cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size)
                  for launch in launches]
        io.read_back(queue)
        if index < WARMUP_CALLS:
            continue
        walls.append((time.perf_counter_ns() - started) / 1e3)
        for samples, event in zip(per_kernel, events, strict=True):
            samples.append((event.profile.end - event.profile.start) / 1e3)
    kernels = [(launch.name, launch.global_size, launch.local_size, statistics.median(samples))
               for launch, samples in zip(launches, per_kernel, strict=True)]
    return KernelProfile(kernels, statistics.median(walls))


def empty_launch_costs(context: Any, device: Any, counts: tuple[int, ...],
                       args: argparse.Namespace) -> dict[int, float]:
    """The p50 wall time of `count` launches of an empty one-work-item kernel and a wait, for each
    count (interleaved): the fixed cost of a pass and of each launch, whatever the kernels do."""
    import pyopencl as cl

    queue = cl.CommandQueue(context, device)
    kernel = cl.Kernel(cl.Program(context, "__kernel void noop(__global float *y) {}").build(devices=[device]), "noop")
    target = cl.Buffer(context, cl.mem_flags.READ_WRITE, 4)  # kept alive here: the kernel does not hold it
    kernel.set_args(target)

    def launches(count: int) -> Callable[[], None]:
        def launch() -> None:
            for _ in range(count):
                cl.enqueue_nd_range_kernel(queue, kernel, (1,), None)
            queue.finish()
        return launch

    timings = time_interleaved({str(count): launches(count) for count in counts}, args.blocks, args.block_ms / 4)
    return {count: timings[str(count)].p50_us for count in counts}


@dataclass
class OpenCLRow:
    label: str
    batch: int
    timings: dict[str, Timing]  # "ours", "naive", "numpy", "onnxruntime cpu"
    max_error: dict[str, float]
    profiles: dict[str, KernelProfile]

    @property
    def ratio(self) -> float:
        return self.timings["naive"].p50_us / self.timings["ours"].p50_us


@dataclass
class OpenCLResults:
    device: str
    mlps: list[OpenCLRow]
    cnn: OpenCLRow
    empty_launch_us: dict[int, float]

    @property
    def rows(self) -> list[OpenCLRow]:
        return [*self.mlps, self.cnn]


def build_big_mlp(path: Path, widths: tuple[int, ...]) -> Path:
    """A synthetic MLP (random weights, fixed seed) of these layer widths: MatMul, Add, Relu per
    hidden layer, then MatMul, Add, Softmax, float32 [N, widths[0]] -> [N, widths[-1]]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    nodes, initializers, x = [], [], "input"
    for index, (k, n) in enumerate(zip(widths, widths[1:])):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        b = (rng.standard_normal(n) * 0.1).astype(np.float32)
        initializers += [numpy_helper.from_array(w, f"w{index}"), numpy_helper.from_array(b, f"b{index}")]
        nodes += [helper.make_node("MatMul", [x, f"w{index}"], [f"mm{index}"]),
                  helper.make_node("Add", [f"mm{index}", f"b{index}"], [f"add{index}"])]
        x = f"add{index}"
        if index < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"relu{index}"]))
            x = f"relu{index}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "big_mlp",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", widths[0]])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", widths[-1]])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def compare_mlp(label: str, path: Path, x: np.ndarray, device_name: str, args: argparse.Namespace) -> OpenCLRow:
    from mlscore.accelerators import load

    feed = {"input": x}
    session = load(path, device="opencl", opencl_device=device_name)
    layers = mlp_layers(path)
    naive = NaiveMLP(session.program.context, session.program.device, layers, len(x))
    cpu = direct_session(path, "cpu")
    reference = cpu.run(None, feed)[0]
    results = {"ours": session.run(feed)["probabilities"], "naive": naive.run(x), "numpy": numpy_mlp(layers, x)}
    errors = {name: float(np.abs(value - reference).max()) for name, value in results.items()}
    wrong = {name: error for name, error in errors.items() if not error <= AGREEMENT}
    if wrong:
        die(f"{label}: differs from onnxruntime by more than {AGREEMENT:g}: {wrong}")
    timings = time_interleaved({"ours": lambda: session.run(feed), "naive": lambda: naive.run(x),
                                "numpy": lambda: numpy_mlp(layers, x), "onnxruntime cpu": lambda: cpu.run(None, feed)},
                               args.blocks, args.block_ms)
    context, device = session.program.context, session.program.device
    io, launches = our_launches(session, feed)
    profiles = {
        "ours": profile_pass(context, device, io, x, launches),
        "naive": profile_pass(context, device, naive.io, x, naive.launches),
    }
    row = OpenCLRow(label, len(x), timings, errors, profiles)
    print(f"opencl: {label} batch {len(x)}: ours p50 {us(timings['ours'].p50_us)} us, naive "
          f"{us(timings['naive'].p50_us)} us ({row.ratio:.2f}x), numpy {us(timings['numpy'].p50_us)} us", flush=True)
    return row


def compare_cnn(x: np.ndarray, device_name: str, args: argparse.Namespace) -> OpenCLRow:
    from mlscore.accelerators import load

    feed = {"image": x}
    session = load(CNN, device="opencl", opencl_device=device_name)
    cpu = direct_session(CNN, "cpu")
    reference = cpu.run(None, feed)[0]
    error = float(np.abs(session.run(feed)["probabilities"] - reference).max())
    if not error <= AGREEMENT:
        die(f"cnn: the OpenCL session differs from onnxruntime by {error:g}")
    timings = time_interleaved({"ours": lambda: session.run(feed), "onnxruntime cpu": lambda: cpu.run(None, feed)},
                               args.blocks, args.block_ms)
    io, launches = our_launches(session, feed)
    profile = profile_pass(session.program.context, session.program.device, io, x, launches)
    print(f"opencl: cnn batch {len(x)}: ours p50 {us(timings['ours'].p50_us)} us, onnxruntime cpu "
          f"{us(timings['onnxruntime cpu'].p50_us)} us", flush=True)
    return OpenCLRow("cnn_onnx CNN", len(x), timings, {"ours": error}, {"ours": profile})


def run_opencl_part(args: argparse.Namespace) -> list[OpenCLResults]:
    """The OpenCL comparisons on every OpenCL device, one after the other. With pocl that is both of
    its CPU drivers (see POCL_DRIVERS): `basic` runs kernels in the calling thread, `pthread` hands
    them to a pool of threads, which costs a wake-up per launch and pays off only for big kernels."""
    from mlscore.accelerators import available_devices

    devices = [info.name for info in available_devices() if info.kind == "opencl"]
    if not devices:
        print("opencl: no OpenCL device here (pip install 'pyopencl[pocl]'); part skipped", flush=True)
        return []
    return [run_opencl_on(device, args) for device in devices]


def run_opencl_on(device: str, args: argparse.Namespace) -> OpenCLResults:
    from mlscore.accelerators import load

    digits = EXAMPLE_MODELS[0].batch(OPENCL_BATCH)
    big_input = np.random.default_rng(1).standard_normal((OPENCL_BATCH, BIG_MLP_WIDTHS[0])).astype(np.float32)
    big_label = "synthetic MLP " + "-".join(map(str, BIG_MLP_WIDTHS)) + " (extra row)"
    mlps = [compare_mlp(EXAMPLE_MODELS[0].name, DIGITS_MLP, digits, device, args),
            compare_mlp(big_label, build_big_mlp(BIG_MLP, BIG_MLP_WIDTHS), big_input, device, args)]
    cnn = compare_cnn(EXAMPLE_MODELS[1].batch(OPENCL_BATCH), device, args)
    program = load(DIGITS_MLP, device="opencl", opencl_device=device).program
    return OpenCLResults(device, mlps, cnn, empty_launch_costs(program.context, program.device, (1, 4, 6, 9), args))


def opencl_tables(results: OpenCLResults) -> list[str]:
    lines = [["model", "batch", "contender", "p50 µs", "p99 µs", "max |Δ| vs onnxruntime", "naive / this (p50)"],
             ["---", "--:", "---", "--:", "--:", "--:", "--:"]]
    for row in results.rows:
        naive = row.timings.get("naive")
        for name, timing in row.timings.items():
            label = {"ours": "mlscore OpenCL session", "naive": "naive OpenCL (1 work-item/output)",
                     "numpy": "numpy float32", "onnxruntime cpu": "onnxruntime CPU (context)"}[name]
            error = f"{row.max_error[name]:.1e}" if name in row.max_error else "reference"
            ratio = f"{naive.p50_us / timing.p50_us:.2f}x" if naive else ""
            lines.append([row.label, str(row.batch), label, us(timing.p50_us), us(timing.p99_us), error, ratio])
    out = [markdown_table(lines), ""]
    launch_costs = ", ".join(f"{count} launch{'es' if count > 1 else ''} {us(cost)} µs"
                             for count, cost in results.empty_launch_us.items())
    out += [f"Empty one-work-item kernel, launched and waited for (p50 wall): {launch_costs}.", ""]
    summary = [["model", "implementation", "launches", "Σ kernels µs", "wall of a pass µs", "wall − kernels µs",
                "naive / ours: kernels", "naive / ours: wall"],
               ["---", "---", "--:", "--:", "--:", "--:", "--:", "--:"]]
    detail = [["model", "implementation", "kernel", "global size", "local size", "device µs"],
              ["---", "---", "---", "---", "---", "--:"]]
    for row in results.rows:
        naive = row.profiles.get("naive")
        for name, profile in row.profiles.items():
            ratios = ["", ""]
            if name == "ours" and naive:
                ratios = [f"{naive.kernel_us / profile.kernel_us:.2f}x", f"{naive.wall_us / profile.wall_us:.2f}x"]
            summary.append([row.label, name, str(len(profile.kernels)), us(profile.kernel_us), us(profile.wall_us),
                            us(profile.wall_us - profile.kernel_us), *ratios])
            for kernel, global_size, local_size, micros in profile.kernels:
                detail.append([row.label, name, kernel, "×".join(map(str, global_size)),
                               "×".join(map(str, local_size)) if local_size else "runtime's", us(micros)])
    out += [f"Where the time goes, on a profiling queue ({PROFILE_PASSES} passes; device µs = START to END of a "
            "kernel's event, median; the wall of a pass covers upload, launches, read-back and the wait):", "",
            markdown_table(summary), "", markdown_table(detail), ""]
    return out


def opencl_diagnosis(results: OpenCLResults) -> list[str]:
    """What bounds the ratio on the digits MLP, in figures: the fixed cost of a pass, the kernels' own
    ratio, and what ours would have to take for the target."""
    digits = results.mlps[0]
    ours, naive = digits.profiles["ours"], digits.profiles["naive"]
    costs = results.empty_launch_us
    first, last = min(costs), max(costs)
    per_launch = (costs[last] - costs[first]) / (last - first)
    floor = costs[first] + per_launch * (len(ours.kernels) - 1)
    needed = digits.timings["naive"].p50_us / NAIVE_TARGET
    return [
        f"a pass of empty kernels costs {us(costs[first])} µs for one launch and {per_launch:.1f} µs per "
        f"further launch: {us(floor)} µs for our {len(ours.kernels)} launches before any work",
        f"digits MLP on the profiling queue: ours {us(ours.kernel_us)} µs in kernels of {us(ours.wall_us)} µs "
        f"a pass, naive {us(naive.kernel_us)} of {us(naive.wall_us)} µs: the kernels alone are "
        f"{naive.kernel_us / ours.kernel_us:.2f}x apart, whole passes {naive.wall_us / ours.wall_us:.2f}x",
        f"for {NAIVE_TARGET:g}x ours would have to take {us(needed)} µs a pass (naive p50 / {NAIVE_TARGET:g})",
    ]


def opencl_verdicts(results: OpenCLResults) -> list[str]:
    digits = results.mlps[0]
    lines = [f"{'PASS' if digits.ratio >= NAIVE_TARGET else 'FAIL'} OpenCL MLP at batch {digits.batch} >= "
             f"{NAIVE_TARGET:g}x faster than naive on {results.device}: {digits.ratio:.2f}x "
             f"(p50 naive {us(digits.timings['naive'].p50_us)} µs / ours {us(digits.timings['ours'].p50_us)} µs)"]
    for row in results.mlps[1:]:
        lines.append(f"(extra, no target) {row.label} at batch {row.batch}: naive / ours {row.ratio:.2f}x "
                     f"(p50 {us(row.timings['naive'].p50_us)} / {us(row.timings['ours'].p50_us)} µs)")
    return lines


# --------------------------------------------------------------------------- part 3: HTTP


@dataclass(frozen=True)
class Target:
    """One server and the request wrk sends it."""

    label: str  # in the table
    spec: ServerSpec
    path: str
    body: bytes
    lua: Path


def lua_script(path: Path, url_path: str, body: bytes) -> Path:
    """A wrk script that POSTs `body` as JSON to `url_path` (wrk.path overrides the URL's path)."""
    text = body.decode()
    if "'" in text or "\\" in text or "\n" in text:
        die(f"the body for {url_path} cannot go in a single-quoted Lua string")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("-- generated by benchmarks/accel_bench.py\nwrk.method = \"POST\"\n"
                    f"wrk.path = \"{url_path}\"\nwrk.body = '{text}'\n"
                    "wrk.headers[\"Content-Type\"] = \"application/json\"\n")
    return path


def model_command(port: int, model: Path) -> list[str]:
    return [str(VENV_PY), "-m", "mlscore", "serve", "--model", str(model), "--host", HOST, "--port", str(port)]


def build_targets() -> list[Target]:
    """(a) and (b): the no-code server of the digits MLP, one instance each; (c) the diabetes entry
    script with http_bench's body (benchmarks/post.lua), the baseline of the ratios."""
    row = [float(v) for v in EXAMPLE_MODELS[0].batch(1)[0]]
    score_body = json.dumps({"input": [row]}, separators=(",", ":")).encode()
    v2_body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]},
                         separators=(",", ":")).encode()
    v2_path = f"/v2/models/{DIGITS_MLP.stem}/infer"
    score_port, v2_port, diabetes_port = (free_port() for _ in range(3))
    score = ServerSpec("digits-score", "mlscore", model_command(score_port, DIGITS_MLP), score_port, log_dir=LOG_DIR)
    v2 = ServerSpec("digits-v2", "mlscore", model_command(v2_port, DIGITS_MLP), v2_port, log_dir=LOG_DIR)
    diabetes = ServerSpec("diabetes-score", "mlscore",
                          mlscore_command(diabetes_port, DIABETES_SCRIPT, DIABETES_MODELS, []), diabetes_port,
                          log_dir=LOG_DIR)
    return [
        Target("(a) digits_mlp.onnx, no code: /score", score, "/score", score_body,
               lua_script(LUA_DIR / "digits_score.lua", "/score", score_body)),
        Target(f"(b) digits_mlp.onnx, no code: {v2_path}", v2, v2_path, v2_body,
               lua_script(LUA_DIR / "digits_v2.lua", v2_path, v2_body)),
        Target("(c) diabetes score.py: /score", diabetes, "/score", BODY, POST_LUA),
    ]


def check_target(target: Target, server: Server) -> bytes:
    status, body = http_status(f"http://{HOST}:{target.spec.port}{target.path}", data=target.body)
    if status != 200:
        die(f"{target.label}: POST answered {status}: {body[:300]!r}\n{log_tail(server)}")
    return body


def wait_model_ready(server: Server, deadline_s: float = 60.0) -> None:
    """GET / answers before init() and the warm-up are done; /health/ready waits for them."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if http_status(f"http://{HOST}:{server.spec.port}/health/ready")[0] == 200:
            return
        time.sleep(0.1)
    die(f"{server.spec.name} not ready after {deadline_s:.0f} s:\n{log_tail(server)}")


def start_targets(targets: list[Target], started: list[Server]) -> dict[str, float]:
    """Start the servers one after another (their start-ups compete for the cores otherwise)."""
    ready_s: dict[str, float] = {}
    for target in targets:
        print(f"starting {target.label} on {HOST}:{target.spec.port}: {shlex.join(target.spec.argv)}", flush=True)
        server = start_server(target.spec)
        started.append(server)
        ready_s[target.label] = wait_ready(server)
        wait_model_ready(server)
        wait_idle(server)
        answer = check_target(target, server)
        print(f"  ready in {ready_s[target.label]:.1f} s; POST {target.path} -> 200 "
              f"{answer[:80].decode(errors='replace')}", flush=True)
    return ready_s


def measure_http(wrk: str, targets: list[Target], servers: list[Server], args: argparse.Namespace) -> list[Row]:
    """Alternate cells: for each concurrency, for each repeat, for each target."""
    rows = {(t.label, c): Row(t.label, "mlscore", c, []) for c in args.concurrency for t in targets}
    total, done = len(rows) * args.repeats, 0
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / "wrk.log").open("w") as raw_log:
        for concurrency in args.concurrency:
            for repeat in range(args.repeats):
                for target, server in zip(targets, servers, strict=True):
                    check_target(target, server)
                    if args.warmup > 0:
                        run_wrk(wrk, target.spec.port, concurrency, args.warmup, threads=1, lua=target.lua)
                    output = run_wrk(wrk, target.spec.port, concurrency, args.duration, threads=1, lua=target.lua)
                    raw_log.write(f"### {target.label} c={concurrency} repeat={repeat + 1}\n{output}\n")
                    cell: Cell = parse_wrk(output)
                    rows[(target.label, concurrency)].cells.append(cell)
                    done += 1
                    print(f"[{done}/{total}] c={concurrency:<3} {target.label:<44} {cell.rps:8.0f} req/s  "
                          f"p50 {cell.p50_ms:6.2f} ms  p99 {cell.p99_ms:6.2f} ms  non-2xx {cell.non2xx}", flush=True)
    return list(rows.values())


@dataclass
class HttpResults:
    rows: list[Row]
    targets: list[Target]
    ready_s: dict[str, float]


def run_http_part(args: argparse.Namespace) -> HttpResults:
    wrk = require_wrk()
    targets = build_targets()
    servers: list[Server] = []
    try:
        ready_s = start_targets(targets, servers)
        for server in servers:
            wait_idle(server, deadline_s=5.0)
        rows = measure_http(wrk, targets, servers, args)
    finally:
        stop_servers(servers)
    return HttpResults(rows, targets, ready_s)


def http_ratios(results: HttpResults) -> list[str]:
    by_key = {(row.server, row.concurrency): row for row in results.rows}
    baseline = results.targets[-1].label
    lines = []
    for concurrency in sorted({row.concurrency for row in results.rows}):
        base = by_key[(baseline, concurrency)]
        for target in results.targets[:-1]:
            row = by_key[(target.label, concurrency)]
            lines.append(f"{target.label[:3]} / {baseline[:3]} at c={concurrency}: {row.rps / base.rps:.2f}x req/s, "
                         f"{row.p99_ms / base.p99_ms:.2f}x p99")
    return lines


# --------------------------------------------------------------------------- results file


def versions() -> dict[str, str]:
    found = {}
    for package in ("onnxruntime", "onnx", "pyopencl", "pocl-binary-distribution"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def device_lines() -> list[str]:
    from mlscore.accelerators import available_devices

    lines = []
    for info in available_devices():
        details = info.details
        if info.kind == "cpu":
            lines.append(f"- device cpu: {info.name}, onnxruntime {details['onnxruntime']}, "
                         f"{details['threads']} intra-op threads (the same on both sides), "
                         f"providers {', '.join(details['providers'])}")
        elif info.kind == "gpu":
            lines.append(f"- device gpu: {info.name}, provider {details.get('provider')}")
        else:
            lines.append(f"- device opencl #{details['index']}: {info.name} ({details['platform']}, "
                         f"{details['type']}, {details['compute_units']} compute units, {details['opencl_version']}, "
                         f"driver {details['driver_version']})")
    return lines


def write_results(args: argparse.Namespace, busy_before: float, body: list[str], verdicts: list[str],
                  method: list[str]) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    # The peer venv is http_bench's competitor: it plays no part here.
    machine = [line for line in environment_lines(busy_before) if not line.startswith("- peer venv")]
    section = [
        f"## {stamp}: accelerators (`benchmarks/accel_bench.py`)", "",
        *machine,
        "- " + ", ".join(f"{name} {version}" for name, version in versions().items()),
        *device_lines(),
        f"- mlscore revision: {git_revision()}",
        *method,
        "", "```", command, "```", "",
        *(["Targets:", "", *[f"- {line}" for line in verdicts], ""] if verdicts else []),
        *body, "",
    ]
    http_bench.append_results(section)


def method_lines(args: argparse.Namespace, parts: list[str], http: HttpResults | None) -> list[str]:
    lines = []
    if {"wrapper", "opencl"} & set(parts):
        lines.append(f"- in-process timings: perf_counter_ns around each call, {args.blocks} alternating blocks of "
                     f"about {args.block_ms:g} ms per contender (order rotated each block, the same number of calls "
                     f"for all); inputs: the first rows of scikit-learn's digits, float32")
    if http is not None:
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        lines += [f"- http: {wrk.split('[')[0].strip()} -t 1, cells of {args.duration:g} s after a {args.warmup:g} s "
                  f"warm-up, {args.repeats} repeats, targets alternated cell by cell, default server settings "
                  f"(processes executor, 1 worker); Lua scripts in `benchmarks/.work/accel-lua/` and "
                  f"`benchmarks/post.lua`",
                  "- start-up to ready: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in http.ready_s.items())]
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_models()
    busy_before = cpu_busy_share()
    if busy_before > BUSY_SHARE:
        print(f"warning: the CPUs are {busy_before:.0%} busy before the run: figures will be noisy", flush=True)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    body: list[str] = []
    verdicts: list[str] = []
    http = None
    if "wrapper" in args.part:
        rows, breakdowns = run_wrapper_part(args)
        body += ["### Wrapper overhead: `accelerators.load(model, device).run()` against onnxruntime called directly",
                 "", *wrapper_tables(rows, breakdowns)]
        verdicts += wrapper_verdicts(rows)
    if "opencl" in args.part:
        for opencl in run_opencl_part(args):
            body += [f"### OpenCL kernels on {opencl.device}: ours against naive ones and numpy", "",
                     *opencl_tables(opencl), "What bounds the digits MLP's ratio:", "",
                     *[f"- {line}" for line in opencl_diagnosis(opencl)], ""]
            verdicts += opencl_verdicts(opencl)
    if "http" in args.part:
        http = run_http_part(args)
        ratios = http_ratios(http)
        body += ["### No-code HTTP throughput against the diabetes entry script", "", render_table(http.rows), "",
                 "p50/p99 are medians over the repeats; errors are summed over them.", "",
                 *[f"- {line}" for line in ratios], ""]
    print()
    print("\n".join(body))
    if verdicts:
        print("Targets:\n" + "\n".join(f"- {line}" for line in verdicts))
    if args.write_results:
        write_results(args, busy_before, body, verdicts, method_lines(args, args.part, http))
    return 0


if __name__ == "__main__":
    http_bench.run_script(main)
