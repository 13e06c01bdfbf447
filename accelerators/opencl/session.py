"""A loaded model on one OpenCL device: weights uploaded once, a plan per recent input shape, and
run() replaying the plan.

Thread safety: one in-order command queue per session, and a lock held for the whole of a run
(upload, kernels, read-back). Runs from several threads are therefore serialized on the device,
which is how one set of intermediate buffers per input shape can serve them all; pyopencl
releases the GIL while a run waits for the device.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np
import pyopencl as cl

from mlscore.accelerators.base import TensorInfo, UnsupportedModel, check_inputs, read_signature
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
            self._ops = build_ops(graph)
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
        arrays = check_inputs(self.inputs, inputs)
        key = tuple(array.shape for array in arrays.values())
        with self._lock:
            plan = self._plan(key)
            for name, array in arrays.items():
                if array.size:
                    cl.enqueue_copy(self._queue, plan.inputs[name], array, is_blocking=False)
            for launch in plan.launches:
                cl.enqueue_nd_range_kernel(self._queue, launch.kernel, launch.global_size, launch.local_size)
            results = {name: np.empty(tensor.shape, _FLOAT32) for name, tensor in plan.outputs.items()}
            for name, result in results.items():
                if result.size:
                    cl.enqueue_copy(self._queue, result, plan.outputs[name].buffer, is_blocking=False)
            self._queue.finish()
        return results

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
        plan = build_plan(self.program, self._ops, self._weights, constant_shapes, shapes, self._graph.output_names)
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
