"""The child process that builds (or loads) the program for one device and proves it before any
server runs it: small models that launch every kernel the device's tuning uses, at every work shape
a plan can launch it with, their answers checked against numpy. Then it writes the program's
binary, which on pocl now holds every work-group function those launches compiled.

    python -m mlscore.accelerators.opencl.verify --device 0 --expect "Portable Computing Language \
        pthread-AMD EPYC" --parent PID --out program.bin --result result.json (--tuning JSON | --binary PATH)

Exit status 0: verified, the binary written. 2: a refusal that is an answer (the compiler rejected
the source, a binary of other kernels, wrong results), its message in the result file. Anything
else, a signal above all, is the compiler's crash, which the parent reports (toolchain.py).

Why every work shape: pocl compiles a kernel's work-group function when it is first launched, once
per (work-group size, zero global offset, grid narrower than 65535 work-items in dimensions 0 and
1 or not). Every kernel requires its work-group size, plans launch with zero offsets, and the
checks below launch each kernel with a narrow grid and a wide one: no launch of a plan can make
pocl compile anything this process has not compiled already.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from mlscore.accelerators.base import AcceleratorError

# pocl specializes a work-group function for grids narrower than this in every dimension it
# counts (its CPU devices' grid_width_specialization_limit, USHRT_MAX).
WIDE_GRID = 65535
RESULT_ERROR = 2  # the exit status of a refusal, whose message is in the result file
TOLERANCE = 1e-4
_rng = np.random.default_rng(14)


@dataclasses.dataclass(frozen=True)
class Check:
    """A model that exercises some kernels, the batch sizes to run it at, and its answers in numpy."""

    name: str
    build: Callable[[Path], Path]  # writes the ONNX model into a folder, returns its path
    batches: tuple[int, ...]  # the last is wide enough to make every kernel it launches a wide grid
    expected: Callable[[np.ndarray, dict[str, np.ndarray]], dict[str, np.ndarray]]  # (input, weights) -> outputs


def check_program(program) -> set[tuple[str, bool]]:
    """Run every check on `program` (program.Program); AcceleratorError naming the first wrong
    answer, or the kernels and work shapes the checks left out. Returns the (kernel, wide grid)
    pairs launched."""
    from mlscore.accelerators.opencl.session import OpenCLSession

    launched: set[tuple[str, bool]] = set()
    with tempfile.TemporaryDirectory(prefix="mlscore-verify-") as folder:
        for check in CHECKS:
            path = check.build(Path(folder))
            session = OpenCLSession(path, program, plan_cache=len(check.batches))
            weights = _weights(path)
            for batch in check.batches:
                print(f"verify: check {check.name!r} at batch {batch}", flush=True)  # what a crash report quotes
                x = _rng.standard_normal((batch, *session.inputs[0].shape[1:])).astype(np.float32)
                got = session.run({session.inputs[0].name: x})
                for name, want in check.expected(x, weights).items():
                    _compare(program, check.name, batch, name, got[name], want)
            for plan in session._plans.values():
                launched.update((launch.kernel.function_name, _is_wide(launch.global_size)) for launch in plan.launches)
    missing = sorted(required_launches(program.tuning) - launched)
    if missing:
        raise AcceleratorError("mlscore's kernel checks do not launch " + ", ".join(
            f"{name} on a {'wide' if wide else 'narrow'} grid" for name, wide in missing))
    return launched


def required_launches(tuning) -> set[tuple[str, bool]]:
    """Every (kernel, wide grid) a plan of a program with `tuning` can launch."""
    from mlscore.accelerators.opencl.kernels import KERNEL_NAMES

    unused = {"program_info", "gemm" if tuning.direct_rows else "gemm_direct"}
    return {(name, wide) for name in KERNEL_NAMES - unused for wide in (False, True)}


def _is_wide(global_size: tuple[int, ...]) -> bool:
    return max(global_size[:2]) >= WIDE_GRID


def _compare(program, check: str, batch: int, name: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape == want.shape and np.allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE):
        return
    worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
    raise AcceleratorError(f"mlscore's kernels give wrong answers on the OpenCL device "
                           f"{program.device.name.strip()!r}: check {check!r} at batch {batch}, output {name!r}: "
                           f"shape {list(got.shape)} against {list(want.shape)}, largest difference {worst:.3g}")


# ---- the checks -----------------------------------------------------------------------------------------


def _save(folder: Path, name: str, nodes: list, x_shape: list, outputs: dict[str, list],
          weights: dict[str, np.ndarray]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape) for out, shape in outputs.items()],
        [numpy_helper.from_array(value, key) for key, value in weights.items()])
    path = folder / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


def _weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(str(path)).graph.initializer}


def _weight(*shape: int) -> np.ndarray:
    return (_rng.standard_normal(shape) * 0.5).astype(np.float32)


def _softmax(values: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values))


def _layers(folder: Path) -> Path:
    """Matrix products with every epilogue: bias and Relu, Tanh, bias and Sigmoid, a row softmax."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["p1"]), helper.make_node("Add", ["p1", "b1"], ["q1"]),
             helper.make_node("Relu", ["q1"], ["hidden"]),
             helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
             helper.make_node("MatMul", ["x", "w3"], ["p3"]), helper.make_node("Tanh", ["p3"], ["bounded"]),
             helper.make_node("MatMul", ["x", "w4"], ["p4"]), helper.make_node("Add", ["p4", "b4"], ["q4"]),
             helper.make_node("Sigmoid", ["q4"], ["gate"])]
    weights = {"w1": _weight(6, 20), "b1": _weight(20), "w2": _weight(20, 10), "b2": _weight(10),
               "w3": _weight(6, 3), "w4": _weight(6, 18), "b4": _weight(18)}
    outputs = {"probabilities": ["batch", 10], "bounded": ["batch", 3], "gate": ["batch", 18]}
    return _save(folder, "layers", nodes, ["batch", 6], outputs, weights)


def _layers_expected(x: np.ndarray, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    hidden = np.maximum(x @ w["w1"] + w["b1"], 0)
    return {"probabilities": _softmax(hidden @ w["w2"] + w["b2"], -1), "bounded": np.tanh(x @ w["w3"]),
            "gate": _sigmoid(x @ w["w4"] + w["b4"])}


def _narrow_product(folder: Path) -> Path:
    """One column per row: at a million rows, the matrix-product kernels' widest grids."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    return _save(folder, "narrow_product", nodes, ["batch", 2], {"y": ["batch", 1]}, {"w": _weight(2, 1)})


def _element_wise(folder: Path) -> Path:
    """The element-wise kernels and softmax on their own (no product to finish), broadcasting."""
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Add", ["r", "row"], ["a"]),
             helper.make_node("Sub", ["a", "s"], ["d"]), helper.make_node("Mul", ["d", "t"], ["m"]),
             helper.make_node("Div", ["m", "two"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=1)]
    weights = {"row": _weight(5), "two": np.array(2.0, np.float32)}
    return _save(folder, "element_wise", nodes, ["batch", 3, 5], {"y": ["batch", 3, 5]}, weights)


def _element_wise_expected(x: np.ndarray, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    combined = (np.maximum(x, 0) + w["row"] - _sigmoid(x)) * np.tanh(x) / w["two"]
    return {"y": _softmax(combined, 1)}


def _convolution(folder: Path) -> Path:
    """Conv (padded: im2col) with its Relu, MaxPool, GlobalAveragePool."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "k", "c"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["active"]),
             helper.make_node("MaxPool", ["active"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["pooled"], ["y"])]
    outputs = {"y": ["batch", 4, 1, 1], "pooled": ["batch", 4, 2, 2]}
    return _save(folder, "convolution", nodes, ["batch", 2, 4, 4], outputs, {"k": _weight(4, 2, 3, 3), "c": _weight(4)})


def _convolution_expected(x: np.ndarray, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch, channels, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.stack([padded[:, :, i:i + height, j:j + width] for i in range(3) for j in range(3)], axis=2)
    kernel = w["k"].reshape(w["k"].shape[0], channels, 9)
    conv = np.maximum(np.einsum("nckhw,ock->nohw", windows, kernel) + w["c"][:, None, None], 0)
    pooled = conv.reshape(batch, -1, height // 2, 2, width // 2, 2).max(axis=(3, 5))
    return {"pooled": pooled, "y": pooled.mean(axis=(2, 3), keepdims=True)}


# Batch sizes: 1 and 17 (not a multiple of any group) on narrow grids; the last makes every
# kernel of its model launch on a wide grid (im2col: batch x 18 rows; max_pool: batch x 4 x 2
# rows; global_average_pool: batch x 4 groups; the element-wise kernels: batch x 15 values;
# softmax: batch x 5 rows; the products: a million rows).
CHECKS = (
    Check("layers", _layers, (1, 17), _layers_expected),
    Check("narrow_product", _narrow_product, (3, 1 << 20), lambda x, w: {"y": x @ w["w"]}),
    Check("element_wise", _element_wise, (1, 17, 1 << 14), _element_wise_expected),
    Check("convolution", _convolution, (1, 17, 1 << 14), _convolution_expected),
)


# ---- the process ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _die_with_parent(args.parent)
    warnings.simplefilter("ignore")  # pyopencl's CompilerWarning: the build log is printed once, below
    try:
        binary = _verified(args)
    except AcceleratorError as error:
        Path(args.result).write_text(json.dumps({"error": str(error)}))
        return RESULT_ERROR
    Path(args.out).write_bytes(binary)
    Path(args.result).write_text(json.dumps({"bytes": len(binary)}))
    return 0


def _verified(args: argparse.Namespace) -> bytes:
    import pyopencl as cl

    from mlscore.accelerators.opencl.device import all_devices
    from mlscore.accelerators.opencl.kernels import Tuning
    from mlscore.accelerators.opencl.program import Program, build_source, load_binary, tuning_of

    devices = all_devices()
    device = devices[args.device] if args.device < len(devices) else None
    if device is None or f"{device.platform.name.strip()} {device.name.strip()}" != args.expect:
        raise AcceleratorError(f"OpenCL device {args.device} is not {args.expect!r} in the verifying process")
    context = cl.Context([device])
    if args.binary:
        origin = args.origin or args.binary
        program = load_binary(context, device, Path(args.binary).read_bytes(), origin)
    else:
        origin = "source"
        program = build_source(context, device, Tuning(**json.loads(args.tuning)))
    build_log = program.get_build_info(device, cl.program_build_info.LOG).strip()
    if build_log:  # the compiler's warnings: the first thing to read if it crashes on the checks
        print(build_log, file=sys.stderr, flush=True)
    verified = Program(context, device, program, tuning_of(context, program, origin), origin)
    check_program(verified)
    return verified.binary()


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the one that started it dies: a server killed mid-build must not
    leave its compiler running (Linux; prctl PR_SET_PDEATHSIG)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:
        raise SystemExit(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlscore.accelerators.opencl.verify")
    parser.add_argument("--device", type=int, required=True, help="index into all OpenCL devices")
    parser.add_argument("--expect", required=True, help='"platform device" that index must name')
    parser.add_argument("--parent", type=int, required=True, help="the process to die with")
    parser.add_argument("--out", required=True, help="where the verified binary goes")
    parser.add_argument("--result", required=True, help="where the outcome goes (JSON)")
    parser.add_argument("--tuning", help="build our source with this tuning (kernels.Tuning's fields, JSON)")
    parser.add_argument("--binary", help="load this prebuilt binary instead")
    parser.add_argument("--origin", help="the binary's name in messages (its path as the user gave it)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
