"""The OpenCL backend: runs a float32 ONNX graph on any OpenCL device through pyopencl.

    session = load(path, opencl_device="pthread", opencl_binary=None)
    session.run({"x": batch})
    session.save_binary("kernels.bin")         # this device's binary of the program, for opencl_binary=

Operators (float32 only): Gemm, MatMul (numpy batching), Conv (2-D; strides, pads, dilations,
auto_pad, groups including depthwise), MaxPool (2-D; ceil_mode too), GlobalAveragePool, Relu,
Sigmoid, Tanh, Add, Sub, Mul, Div (numpy broadcasting), Softmax (any axis; opset < 13 semantics for
older models), Flatten, Reshape (0 and -1; a constant shape), Identity, Constant. Anything else is
refused at load, naming the operator.

Options of `load()`:

- `opencl_binary=PATH`: load this prebuilt program binary instead of building our OpenCL C source.
  That is how FPGA boards run (their toolchains compile offline: feed them `kernel_source()`); on
  GPUs and CPUs it skips the build. `build_binary()` or `session.save_binary()` writes one. A binary
  for another device, or of other kernels, is refused with an error naming the file.
- `opencl_device=INDEX or NAME`: an index into `devices()`, or a case-insensitive substring of
  "platform device"; by default the first GPU or accelerator, else the first device.
- `opencl_plan_cache=8`: how many input shapes (batch sizes, mostly) keep their buffers and bound
  kernels; the least recently used beyond that are released.

The program holds every kernel (ops.py lists the operators), is built once per device and shared
by every session on it. It is built, or a given binary loaded, in a child process with a time limit
that also runs every kernel at every work shape plans launch and checks the answers (verify.py):
a compiler that crashes or hangs is an AcceleratorError naming the device, the signal or the
timeout and the compiler's last lines, never a dead server, and `devices()` says which devices
cannot run the kernels and why. The verified binary is cached (toolchain.py: MLSCORE_OPENCL_CACHE,
by default ~/.cache/mlscore/opencl) per device, driver and source, so only the first load on a
machine pays for the build (some seconds on pocl). Its work shapes (kernels.Tuning) suit the
device's type: many work-items per matrix tile staged in local memory on GPUs and accelerators; on
CPUs, matrix products straight from global memory, 16 x 16 outputs a work-item; every kernel
requires its work-group size, a binary reports the shapes it was compiled with, and
`build_binary(tuning=...)` picks others. Weights go to the device once at load. The
element-wise nodes that only finish a matrix product (MatMul's bias Add, then a Relu, Sigmoid or
Tanh) run in its kernel: one launch per layer of an MLP. Each input shape gets a plan (shapes
inferred, intermediate buffers shared between tensors whose lifetimes do not overlap, kernel
arguments bound) that later runs of that shape replay. How runs from several threads share a
session, and what else a run costs: see session.py. A CPU device for development and CI:
`pip install 'pyopencl[pocl]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlscore.accelerators.base import AcceleratorError, DeviceInfo
from mlscore.accelerators.opencl.device import all_devices, choose_device, describe
from mlscore.accelerators.opencl.kernels import PARALLEL, SERIAL, Tuning, kernel_source

__all__ = ["PARALLEL", "SERIAL", "Tuning", "build_binary", "devices", "kernel_source", "load"]

_OPTIONS = ("opencl_binary", "opencl_device", "opencl_plan_cache")


def devices() -> list[DeviceInfo]:
    """One entry per OpenCL device pyopencl finds; none, rather than an error, when there is no
    platform, no device, or no pyopencl. Each says whether mlscore's kernels work on it ("usable"),
    and if not, why ("problem"): they are built and checked for it in a child process the first
    time (toolchain.py), then the verdict is cached."""
    try:
        found = all_devices()
        return [_with_verdict(describe(index, device), device) for index, device in enumerate(found)]
    except Exception:  # DeviceUnavailable, or a driver failing a query: listing devices must not fail
        return []


def _with_verdict(info: DeviceInfo, device: Any) -> DeviceInfo:
    from mlscore.accelerators.opencl.program import default_tuning
    from mlscore.accelerators.opencl.toolchain import verification_problem

    problem = verification_problem(device, default_tuning(device))
    verdict = {"usable": True} if problem is None else {"usable": False, "problem": problem}
    return DeviceInfo(info.kind, info.name, {**info.details, **verdict})


def load(path: str | Path, **options: Any) -> Any:
    """A session (base.Session, plus `save_binary()`) for the ONNX model at `path`."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise AcceleratorError(f"unknown option {', '.join(unknown)} for the opencl device: use {', '.join(_OPTIONS)}")
    plan_cache = options.get("opencl_plan_cache", 8)
    if isinstance(plan_cache, bool) or not isinstance(plan_cache, int) or plan_cache < 1:
        raise AcceleratorError(f"opencl_plan_cache must be an int >= 1, got {plan_cache!r}")
    from mlscore.accelerators.opencl.program import built_program, loaded_program
    from mlscore.accelerators.opencl.session import OpenCLSession

    device = choose_device(options.get("opencl_device"))
    binary = options.get("opencl_binary")
    program = built_program(device) if binary is None else loaded_program(device, Path(binary))
    return OpenCLSession(Path(path), program, plan_cache)


def build_binary(out_path: str | Path, device: int | str | None = None, tuning: Tuning | None = None) -> Path:
    """Build the program for `device` (as `opencl_device=` names it) and write its binary to
    `out_path`. The program serves every model, so one binary per device is enough. `tuning`
    overrides the work shapes that suit the device's type (kernels.PARALLEL or kernels.SERIAL)."""
    from mlscore.accelerators.opencl.program import built_program

    out = Path(out_path)
    out.write_bytes(built_program(choose_device(device), tuning).binary())
    return out
