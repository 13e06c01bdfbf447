"""Getting the kernels onto a device: built from our OpenCL C source (GPUs, CPUs) or loaded from a
prebuilt binary (FPGA boards, whose toolchains compile offline). Either way the program is first
built and checked in a child process (toolchain.py), where a compiler that crashes or hangs cannot
take this process with it; this process loads the binary that passed. Once per device and origin,
shared by every session on that device."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyopencl as cl

from mlscore.accelerators.base import AcceleratorError
from mlscore.accelerators.opencl.device import device_type
from mlscore.accelerators.opencl.kernels import KERNEL_NAMES, PARALLEL, SERIAL, Tuning, abi_stamp, kernel_source
from mlscore.accelerators.opencl.toolchain import Origin, verified_binary


@dataclass(frozen=True)
class Program:
    """The built program on one device, with the context its buffers and queues must share and the
    work shapes compiled into it."""

    context: Any  # cl.Context
    device: Any  # cl.Device
    program: Any  # cl.Program
    tuning: Tuning
    origin: str  # "source", or the binary's path

    def binary(self) -> bytes:
        """The program as this device's binary: what `opencl_binary=` loads back."""
        return self.program.get_info(cl.program_info.BINARIES)[0]


_contexts: dict[Any, Any] = {}
_programs: dict[tuple[Any, ...], Program] = {}
_lock = threading.Lock()


def default_tuning(device: Any) -> Tuning:
    return SERIAL if device_type(device) == "CPU" else PARALLEL


def built_program(device: Any, tuning: Tuning | None = None) -> Program:
    """The program built from our source for `device`, with `tuning` (default: the one that suits
    the device's type); built once per device and tuning, so a second model costs no second build."""
    tuning = tuning or default_tuning(device)
    return _cached((device, tuning), device, "source", lambda: verified_binary(device, Origin(tuning=tuning)))


def loaded_program(device: Any, path: Path) -> Program:
    """The program in the prebuilt binary at `path`, checked to be for `device` and to hold this
    version of our kernels; loaded once per device, binary content and path (the path is the
    program's origin, which errors name)."""
    data = _read_binary(path)
    key = (device, hashlib.sha256(data).hexdigest(), str(path))
    return _cached(key, device, str(path), lambda: verified_binary(device, Origin(binary=data, name=str(path))))


def _cached(key: tuple[Any, ...], device: Any, origin: str, verified: Callable[[], bytes]) -> Program:
    with _lock:
        if key not in _programs:
            context = _contexts.setdefault(device, cl.Context([device]))
            program = load_binary(context, device, verified(), origin)
            _programs[key] = Program(context, device, program, tuning_of(context, program, origin), origin)
        return _programs[key]


def build_source(context: Any, device: Any, tuning: Tuning) -> Any:
    """Our source with `tuning`, compiled for `device`: only ever in verify's child process."""
    try:
        return cl.Program(context, kernel_source(tuning)).build(devices=[device])
    except cl.Error as error:  # the compiler's log is in the message
        raise AcceleratorError(f"the OpenCL compiler of {device.name.strip()!r} rejected mlscore's kernels: {error}") \
            from None


def _read_binary(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise AcceleratorError(f"opencl_binary: cannot read {path}: {error.strerror or error}") from None


def load_binary(context: Any, device: Any, data: bytes, path: Path | str) -> Any:
    """The program in `data`, refused with a message naming `path` unless it is a binary for this
    device that holds this version of our kernels."""
    name = device.name.strip()
    try:
        program = cl.Program(context, [device], [data]).build(devices=[device])
    except cl.Error as error:
        raise AcceleratorError(f"opencl_binary {path} is not a program binary for the OpenCL device {name!r} "
                               f"({_first_line(error)}); build one for it with build_binary(), or compile "
                               f"kernel_source() with the board's offline compiler") from None
    missing = sorted(KERNEL_NAMES - set(program.kernel_names.split(";")))
    if missing:
        raise AcceleratorError(f"opencl_binary {path} was not built from mlscore's kernels: it lacks "
                               f"{', '.join(missing)}")
    return program


def tuning_of(context: Any, program: Any, origin: str) -> Tuning:
    """The work shapes the program was compiled with, after checking it holds this version of the kernels."""
    info = np.zeros(7, np.uint32)
    buffer = cl.Buffer(context, cl.mem_flags.WRITE_ONLY, info.nbytes)
    kernel = cl.Kernel(program, "program_info")
    kernel.set_args(buffer)
    queue = cl.CommandQueue(context)
    cl.enqueue_nd_range_kernel(queue, kernel, (1,), (1,))  # the one work shape program_info has
    cl.enqueue_copy(queue, info, buffer)
    queue.finish()
    stamp, tile, work_per_item, tile_k, reduce_group, direct_rows, flat_group = (int(value) for value in info)
    if stamp != abi_stamp():
        raise AcceleratorError(f"the program from {origin} holds another version of mlscore's kernels "
                               f"(stamp {stamp}, this version's is {abi_stamp()}): rebuild it")
    return Tuning(tile, work_per_item, tile_k, reduce_group, direct_rows, flat_group)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
