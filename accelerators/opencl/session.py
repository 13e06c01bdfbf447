"""A loaded model on one OpenCL device: weights uploaded once, a plan per recent input shape, and
run() replaying the plan.

Thread safety: one in-order command queue per session, and a lock held for the whole of a run
(upload, kernels, read-back). Runs from several threads are therefore serialized on the device,
which is how one set of intermediate buffers per input shape can serve them all; pyopencl
releases the GIL while a run waits for the device.

A run costs little besides the kernels: inputs a cached plan already serves skip check_inputs();
the kernels, their arguments bound once per plan, are enqueued back to back and waited for once;
and on devices in the host's memory the inputs and outputs are plain copies in shared memory
rather than commands of their own (on pocl, a command costs several microseconds).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np
import pyopencl as cl

from mlscore.accelerators.base import TensorInfo, UnsupportedModel, check_inputs, read_signature
from mlscore.accelerators.opencl.device import shares_host_memory
from mlscore.accelerators.opencl.graph import Graph, read_graph
from mlscore.accelerators.opencl.ops import Op, Shape, Tensor, build_ops
from mlscore.accelerators.opencl.plan import Plan, build_plan
from mlscore.accelerators.opencl.program import Program

_FLOAT32 = np.dtype(np.float32)


class OpenCLSession:
    device = "opencl"

    def __init__(self, path: Path, program: Program, plan_cache: int) -> None:
        self.inputs, self.outputs = read_signature(path)
        try:
            graph = read_graph(path)
            self._ops = build_ops(graph, row_softmax=program.tuning.direct_rows > 0)
            _require_float32(self.inputs + self.outputs)
        except UnsupportedModel as error:
            raise UnsupportedModel(f"{path}: {error}") from None
        self.program = program
        self._graph = graph
        self._queue = cl.CommandQueue(program.context, program.device)
        self._weights = self._upload_weights(graph, self._ops)
        self._lock = threading.Lock()
        self._plans: OrderedDict[tuple[Shape, ...], Plan] = OrderedDict()
        self._plan_cache = plan_cache
        self._allocations = 0
        self._shared_io = shares_host_memory(program.device)
        self._ranks = tuple((info.name, len(info.shape)) for info in self.inputs)

    @property
    def allocations(self) -> int:
        """How many device buffers plans have allocated since load: it stays put while inputs keep
        shapes that a cached plan already serves."""
        return self._allocations

    @property
    def cached_shapes(self) -> list[tuple[Shape, ...]]:
        """The input shapes (in input order) whose plans are cached, least recently used first."""
        return list(self._plans)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = self._cached_key(inputs)
        if key is None:
            inputs = check_inputs(self.inputs, inputs)
            key = tuple(array.shape for array in inputs.values())
        queue = self._queue
        with self._lock:
            plan = self._plan(key)
            for name, _ in self._ranks:
                array, view = inputs[name], plan.shared.get(name)
                if view is not None:
                    np.copyto(view, array)
                elif array.size:
                    cl.enqueue_copy(queue, plan.inputs[name], array, is_blocking=False)
            for launch in plan.launches:
                cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size)
            read: dict[str, np.ndarray] = {}
            for name, tensor in plan.outputs.items():
                if name not in plan.shared:
                    read[name] = np.empty(tensor.shape, _FLOAT32)
                    if read[name].size:
                        cl.enqueue_copy(queue, read[name], tensor.buffer, is_blocking=False)
            queue.finish()
            return {name: read[name] if name in read else plan.shared[name].copy() for name in plan.outputs}

    def _cached_key(self, inputs: Mapping[str, np.ndarray]) -> tuple[Shape, ...] | None:
        """The shapes of `inputs`, in input order, when they are exactly the model's inputs, each a
        contiguous float32 ndarray of its rank, and a cached plan serves those shapes: inputs of
        those shapes passed check_inputs() when the plan was made. None otherwise."""
        if len(inputs) != len(self._ranks):
            return None
        shapes = []
        for name, rank in self._ranks:
            array = inputs.get(name)
            if not isinstance(array, np.ndarray) or array.dtype is not _FLOAT32 or array.ndim != rank \
                    or not array.flags.c_contiguous:
                return None
            shapes.append(array.shape)
        key = tuple(shapes)
        return key if key in self._plans else None

    def save_binary(self, path: str | Path) -> Path:
        """Write the device's binary of the program this session runs: `opencl_binary=` loads it back."""
        path = Path(path)
        path.write_bytes(self.program.binary())
        return path

    def _plan(self, key: tuple[Shape, ...]) -> Plan:
        """The cached plan for these input shapes, or a new one that evicts the least recently used
        beyond the cache's bound. Called under the lock, with the queue drained."""
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        shapes = dict(zip((info.name for info in self.inputs), key))
        constant_shapes = {name: value.shape for name, value in self._graph.constants.items()}
        plan = build_plan(self.program, self._ops, self._weights, constant_shapes, shapes, self._graph.output_names,
                          self._shared_io)
        self._allocations += len(plan.buffers)
        self._plans[key] = plan
        while len(self._plans) > self._plan_cache:
            self._plans.popitem(last=False)[1].release()
        return plan

    def _upload_weights(self, graph: Graph, ops: list[Op]) -> dict[str, Tensor]:
        """Every float32 constant a kernel reads or the model outputs, on the device once for all runs."""
        wanted = {name for op in ops for name in op.device_inputs()} | set(graph.output_names)
        weights = {}
        for name, value in graph.constants.items():
            if name in wanted and value.dtype == _FLOAT32:
                host = np.ascontiguousarray(value) if value.size else np.zeros(1, _FLOAT32)
                buffer = cl.Buffer(self.program.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                                   hostbuf=host)
                weights[name] = Tensor(buffer, tuple(value.shape))
        return weights


def _require_float32(tensors: list[TensorInfo]) -> None:
    other = [info.describe() for info in tensors if info.dtype != _FLOAT32]
    if other:
        raise UnsupportedModel(f"the opencl device runs float32 models only: {', '.join(other)}")
