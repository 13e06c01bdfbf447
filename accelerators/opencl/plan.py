"""What one set of input shapes needs on the device, prepared once and replayed on every run with
those shapes: every tensor's shape, buffers shared by tensors whose lifetimes do not overlap, and
the kernels with their arguments already bound. On devices that share the host's memory, the
model's inputs and outputs live in memory both sides address (fine-grained SVM), so that a run
moves them with numpy instead of a command each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyopencl as cl

from mlscore.accelerators.base import InvalidInput
from mlscore.accelerators.opencl.ops import Op, Shape, ShapeError, Tensor, size_of
from mlscore.accelerators.opencl.program import Program

_FLOAT = np.dtype(np.float32).itemsize
_INDEX_LIMIT = 2**31 - 1  # the kernels index with 32-bit ints


@dataclass(frozen=True)
class Launch:
    kernel: Any  # cl.Kernel, its arguments set
    global_size: tuple[int, ...]
    local_size: tuple[int, ...]


@dataclass
class Plan:
    inputs: dict[str, Any]  # input name -> the buffer each run uploads it to
    outputs: dict[str, Tensor]  # output name -> where each run reads it back
    launches: list[Launch]
    buffers: list[Any] = field(default_factory=list)  # every buffer (or SVM allocation) this plan allocated
    # Input and output names -> their host view where they live in shared memory: a run writes
    # the input into it before the launches, and copies the output out of it after them.
    shared: dict[str, np.ndarray] = field(default_factory=dict)

    def release(self) -> None:
        """Give the device memory back now rather than whenever the collector gets to it."""
        for buffer in self.buffers:
            buffer.release()
        self.buffers.clear()


def build_plan(program: Program, ops: Sequence[Op], weights: Mapping[str, Tensor], constant_shapes: Mapping[str, Shape],
               input_shapes: Mapping[str, Shape], output_names: Sequence[str], shared_io: bool = False) -> Plan:
    """The plan for inputs of `input_shapes`. `weights` are the constants on the device; the others
    (Reshape's shapes) matter here only by their shapes. `shared_io`: the device supports
    fine-grained SVM in the host's memory, where the model's inputs and outputs go. Raises
    InvalidInput naming the node when the shapes cannot pass through the model."""
    shapes = infer_shapes(ops, constant_shapes, input_shapes)
    roots = _storage_roots(ops, list(input_shapes))
    shared = ({roots[name] for name in output_names if name in roots} | set(input_shapes)) if shared_io else set()
    planner = _Planner(program, weights, shared)
    inputs = {name: planner.allocate(name, shape).buffer for name, shape in input_shapes.items()}
    frees = _frees_after(ops, roots, output_names)
    for step, op in enumerate(ops):
        planner.encode(op, shapes[op.node.outputs[0]])
        for root in frees.get(step, ()):
            planner.release(root)
    outputs = {name: planner.tensors[name] for name in output_names}
    views = {}
    for name, shape in [*input_shapes.items(), *((name, tensor.shape) for name, tensor in outputs.items())]:
        root = roots.get(name)
        if root in planner.views:  # a view of a tensor has as many values: its root's storage, reshaped
            views[name] = planner.views[root][:size_of(shape)].reshape(shape)
    return Plan(inputs, outputs, planner.launches, planner.owned, views)


def infer_shapes(ops: Sequence[Op], known: Mapping[str, Shape], input_shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    shapes = {**known, **input_shapes}
    for op in ops:
        given = [shapes[name] if name else None for name in op.node.inputs]
        try:
            shape = op.infer(given)
        except ShapeError as error:
            raise InvalidInput(f"{op.node.describe()} cannot take its inputs of shapes "
                               f"{', '.join(str(list(s)) for s in given if s is not None)}: {error} "
                               f"(model inputs {_describe(input_shapes)})") from None
        if size_of(shape) > _INDEX_LIMIT:
            raise InvalidInput(f"{op.node.describe()} would make a tensor of {size_of(shape)} values, more than this "
                               f"backend indexes (model inputs {_describe(input_shapes)}): send smaller batches")
        shapes[op.node.outputs[0]] = shape
    return shapes


def _describe(input_shapes: Mapping[str, Shape]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in input_shapes.items())


def _storage_roots(ops: Sequence[Op], input_names: Sequence[str]) -> dict[str, str]:
    """Each input's and computed tensor's storage, named by the tensor that owns it: views share
    their input's. Weights have none of their own here."""
    root = {name: name for name in input_names}
    for op in ops:
        out = op.node.outputs[0]
        if not op.is_alias:
            root[out] = out
        elif op.node.inputs[0] in root:
            root[out] = root[op.node.inputs[0]]
    return root


def _frees_after(ops: Sequence[Op], root: Mapping[str, str], output_names: Sequence[str]) -> dict[int, list[str]]:
    """For each step, the pooled storage (named by the tensor that owns it, see _storage_roots)
    whose last reader that step is. Weights and the outputs' storage are never freed."""
    last = {name: 0 for name in root.values()}
    for step, op in enumerate(ops):
        for name in op.device_inputs():
            if name in root:
                last[root[name]] = step
        if not op.is_alias:
            last[op.node.outputs[0]] = step
    kept = {root[name] for name in output_names if name in root}
    frees: dict[int, list[str]] = {}
    for name, step in last.items():
        if name not in kept:
            frees.setdefault(step, []).append(name)
    return frees


class _Planner:
    """Assigns buffers from a pool (best fit among the free ones, else a new one) and binds kernels."""

    def __init__(self, program: Program, weights: Mapping[str, Tensor], shared: set[str]) -> None:
        self.program = program
        self.tuning = program.tuning
        self.tensors: dict[str, Tensor] = dict(weights)
        self.owned: list[Any] = []
        self.launches: list[Launch] = []
        self.views: dict[str, np.ndarray] = {}  # tensors in shared memory -> their host view
        self._shared = shared  # the tensors that go in shared memory
        self._free: list[Any] = []
        self._scratch: list[Any] = []

    def allocate(self, name: str, shape: Shape) -> Tensor:
        if name in self._shared:
            tensor = Tensor(self._share(name, size_of(shape)), shape)
        else:
            tensor = Tensor(self._take(size_of(shape) * _FLOAT), shape)
        self.tensors[name] = tensor
        return tensor

    def release(self, name: str) -> None:
        if name not in self._shared:  # an input's shared memory is rewritten by every run: no kernel writes it
            self._free.append(self.tensors[name].buffer)

    def encode(self, op: Op, shape: Shape) -> None:
        inputs = [self.tensors[name] if name and index not in op.host_inputs else None
                  for index, name in enumerate(op.node.inputs)]
        out = op.node.outputs[0]
        if op.is_alias:
            self.tensors[out] = Tensor(inputs[0].buffer, shape)
            return
        op.encode(self, inputs, self.allocate(out, shape))
        self._free.extend(self._scratch)
        self._scratch.clear()

    def _share(self, name: str, count: int) -> Any:
        """Fine-grained SVM for `count` floats, kept out of the pool: its view is the host's side."""
        view = cl.fsvm_empty(self.program.context, max(count, 1), np.float32)
        self.views[name] = view
        self.owned.append(view.base)
        return cl.SVM(view)

    def _take(self, nbytes: int) -> Any:
        nbytes = max(nbytes, _FLOAT)  # OpenCL has no empty buffers; an empty tensor gets one float
        fitting = [buffer for buffer in self._free if buffer.size >= nbytes]
        if fitting:
            best = min(fitting, key=lambda buffer: buffer.size)
            self._free.remove(best)
            return best
        buffer = cl.Buffer(self.program.context, cl.mem_flags.READ_WRITE, nbytes)
        self.owned.append(buffer)
        return buffer

    # The Encoder protocol (ops.py), used by the operators while they encode.

    def launch(self, kernel: str, global_size: Sequence[int], local_size: Sequence[int], *args: Any) -> None:
        if 0 in global_size:  # an empty tensor: nothing to compute
            return
        bound = cl.Kernel(self.program.program, kernel)
        bound.set_args(*(_kernel_arg(arg) for arg in args))
        self.launches.append(Launch(bound, tuple(global_size), tuple(local_size)))

    def scratch(self, shape: Shape) -> Tensor:
        if size_of(shape) > _INDEX_LIMIT:
            raise InvalidInput(f"a convolution's unfolded input of shape {list(shape)} is more than this backend "
                               f"indexes: send smaller batches")
        tensor = Tensor(self._take(size_of(shape) * _FLOAT), shape)
        self._scratch.append(tensor.buffer)
        return tensor

    def table(self, values: Sequence[int]) -> Any:
        host = np.asarray(values, dtype=np.int32)
        buffer = cl.Buffer(self.program.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=host)
        self.owned.append(buffer)
        return buffer


def _kernel_arg(value: Any) -> Any:
    if isinstance(value, int):
        return np.int32(value)
    if isinstance(value, float):
        return np.float32(value)
    return value
