"""The operators this backend runs: each checks its node's attributes at load, infers its output
shape from its input shapes, and turns one input shape into kernel launches.

Every operator computes in float32. Reshape, Flatten and Identity launch nothing: their output is
their input's buffer under another shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, NoReturn, Protocol, Sequence

import numpy as np

from mlscore.accelerators.base import UnsupportedModel
from mlscore.accelerators.opencl.graph import Graph, Node
from mlscore.accelerators.opencl.kernels import ACTIVATIONS, DIRECT_COLUMNS, ROW_SOFTMAX, Tuning

Shape = tuple[int, ...]


class ShapeError(Exception):
    """Input shapes an operator cannot take; the planner names the node and the model's input shapes."""


@dataclass(frozen=True)
class Tensor:
    buffer: Any  # cl.Buffer, dense float32, at least as large as the shape needs
    shape: Shape


class Encoder(Protocol):
    """What an operator asks of the plan it is being encoded into."""

    tuning: Tuning  # the work shapes the program was compiled with

    def launch(self, kernel: str, global_size: Sequence[int], local_size: Sequence[int], *args: Any) -> None:
        """Bind `args` (buffers, ints as int32, floats as float32, int32 arrays by value as the
        struct they lay out) to a kernel launched on every run, in groups of `local_size`: the
        size the kernel requires (kernels.Tuning)."""

    def scratch(self, shape: Shape) -> Tensor:
        """A float32 buffer for use within this operator's launches only."""

    def table(self, values: Sequence[int]) -> Any:
        """A small read-only int32 buffer holding `values`."""


class Op:
    """One node. Subclasses say which attributes they understand, how many inputs they take, and
    which inputs must be constants read at load (`host_inputs`); the rest live on the device."""

    op_type: ClassVar[str]
    attributes: ClassVar[frozenset[str]] = frozenset()
    arity: ClassVar[tuple[int, int]] = (1, 1)
    host_inputs: ClassVar[frozenset[int]] = frozenset()
    is_alias: ClassVar[bool] = False

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        self.node = node
        unknown = sorted(set(node.attributes) - self.attributes)
        if unknown:
            self.reject(f"attribute {', '.join(unknown)} is not supported")
        low, high = self.arity
        if not low <= len(node.inputs) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            self.reject(f"takes {expected} inputs, got {len(node.inputs)}")
        if not node.outputs[0] or any(node.outputs[1:]):
            self.reject("only its first output is supported")

    def reject(self, problem: str) -> NoReturn:
        raise UnsupportedModel(f"{self.node.describe()}: {problem}")

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        raise NotImplementedError

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        raise NotImplementedError

    def device_inputs(self) -> list[str]:
        return [name for index, name in enumerate(self.node.inputs) if name and index not in self.host_inputs]


# ---- shapes and strides ------------------------------------------------------------------------------


def size_of(shape: Sequence[int]) -> int:
    return math.prod(shape)


def broadcast_shape(*shapes: Shape) -> Shape:
    """numpy's broadcasting of `shapes` into one."""
    rank = max(len(shape) for shape in shapes)
    padded = [(1,) * (rank - len(shape)) + tuple(shape) for shape in shapes]
    result = []
    for dims in zip(*padded):
        wanted = {dim for dim in dims if dim != 1}
        if len(wanted) > 1:
            raise ShapeError(f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")
        result.append(wanted.pop() if wanted else 1)
    return tuple(result)


def broadcast_strides(shape: Shape, out_shape: Shape, unit: int = 1) -> tuple[int, ...]:
    """The strides, in elements, that read a dense tensor of `shape` at the indices of `out_shape`
    under broadcasting: 0 along the dimensions it repeats. `unit` is the size of one element block."""
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides, step = [], unit
    for dim in reversed(padded):
        strides.append(step if dim != 1 else 0)
        step *= dim
    return tuple(reversed(strides))


def collapse(dims: Shape, *strides: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """The fewest dimensions that address the same elements: dimensions of size 1 dropped, and
    neighbours merged wherever every operand steps through them as through one."""
    kept: list[int] = []
    kept_strides: list[list[int]] = [[] for _ in strides]
    for d in reversed(range(len(dims))):
        if dims[d] == 1:
            continue
        if kept and all(s[d] == ks[0] * kept[0] for s, ks in zip(strides, kept_strides)):
            kept[0] *= dims[d]
            continue
        kept.insert(0, dims[d])
        for s, ks in zip(strides, kept_strides):
            ks.insert(0, s[d])
    return kept, kept_strides


def normalized_axis(axis: int, rank: int, inclusive: bool = False) -> int:
    limit = rank + 1 if inclusive else rank
    if not -limit <= axis < limit:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % limit if axis < 0 else axis


def launch_flat(encoder: Encoder, kernel: str, count: int, *args: Any) -> None:
    """Launch a one-dimensional kernel over `count` work-items, with `args` and then `count`: in
    groups of the program's flat_group (the only group size it was compiled for), rounded up to
    whole groups; the kernel skips the work-items past `count`."""
    group = encoder.tuning.flat_group
    encoder.launch(kernel, (math.ceil(count / group) * group,), (group,), *args, count)


# ---- matrix products -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """A matrix inside a buffer: element (i, j) of batch (outer, inner) lies at
    offset + i * strides[0] + j * strides[1] + outer * batch[0] + inner * batch[1]."""

    buffer: Any
    strides: tuple[int, int]
    offset: int = 0
    batch: tuple[int, int] = (0, 0)


def launch_gemm(encoder: Encoder, m: int, n: int, k: int, a: Operand, b: Operand, y: Operand,
                bias: Operand | None = None, alpha: float = 1.0, beta: float = 1.0,
                batches: tuple[int, int] = (1, 1), activation: int = 0) -> None:
    """Y = activation(alpha * A.B + beta * bias), for outer x inner products of M x K by K x N,
    `activation` 0 or 1 + an index into kernels.ACTIVATIONS. Y is dense (its strides are (n, 1));
    a missing bias is never read. The program's tuning picks the kernel: tiled, or direct on CPUs."""
    if bias is None:
        bias, beta = Operand(y.buffer, (0, 0)), 0.0
    tuning = encoder.tuning
    if tuning.direct_rows:
        kernel, group = "gemm_direct", (1, 1, 1)
        items = (math.ceil(n / DIRECT_COLUMNS), math.ceil(m / tuning.direct_rows), batches[0] * batches[1])
    else:
        kernel, group = "gemm", tuning.gemm_group
        items = (math.ceil(n / tuning.tile) * group[0], math.ceil(m / tuning.tile) * group[1],
                 batches[0] * batches[1])
    layout = np.array([m, n, k, batches[1], activation, a.offset, *a.strides, *a.batch, b.offset, *b.strides,
                       *b.batch, bias.offset, *bias.strides, *bias.batch, y.offset, *y.batch], np.int32)
    encoder.launch(kernel, items, group, layout, float(alpha), float(beta), a.buffer, b.buffer, bias.buffer, y.buffer)


class Product(Op):
    """An operator whose work is the matrix-product kernel. fuse_epilogues() may hand it the
    element-wise nodes that only finish its output, which the kernel then applies to each value
    as it stores it; its node takes on their extra input, their output and their names (op_type
    "MatMul+Add+Relu"), so that errors name what runs."""

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        super().__init__(node, constants, opset)
        self.activation = 0  # 0, or 1 + the index in kernels.ACTIVATIONS of what the kernel applies

    def absorb(self, node: Node, constant: str | None = None) -> None:
        """Compute `node` too: it reads only this op's output and, when given, `constant`."""
        inputs = self.node.inputs + ((constant,) if constant else ())
        self.node = replace(self.node, op_type=f"{self.node.op_type}+{node.op_type}", inputs=inputs,
                            outputs=node.outputs)
        if node.op_type.lower() in ACTIVATIONS:
            self.activation = ACTIVATIONS.index(node.op_type.lower()) + 1
        elif node.op_type == "Softmax":
            self.activation = ROW_SOFTMAX

    def bias_of(self, add: "Add", constants: Mapping[str, np.ndarray]) -> str | None:
        """The input of `add` (which reads this op's output) that the kernel can add as it stores
        each value, or None: only MatMul takes one (Gemm and Conv have a bias input of their own)."""
        return None

    def rows_fit(self, softmax: "Softmax", constants: Mapping[str, np.ndarray]) -> bool:
        """Whether `softmax` runs along this product's rows of at most DIRECT_COLUMNS values, so
        that the work-item that computes a row can finish it: the product's columns come from a
        constant 2-D weight matrix, and the softmax is along the last axis."""
        return False

    def _columns_of_constant(self, name: str, constants: Mapping[str, np.ndarray], transposed: bool) -> int | None:
        weights = constants.get(name)
        if weights is None or weights.ndim != 2:
            return None
        return int(weights.shape[0] if transposed else weights.shape[1])


class Gemm(Product):
    op_type = "Gemm"
    attributes = frozenset({"alpha", "beta", "transA", "transB"})
    arity = (2, 3)

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        super().__init__(node, constants, opset)
        self.alpha = float(node.attributes.get("alpha", 1.0))
        self.beta = float(node.attributes.get("beta", 1.0))
        self.trans_a = bool(node.attributes.get("transA", 0))
        self.trans_b = bool(node.attributes.get("transB", 0))

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        a, b = shapes[0], shapes[1]
        if len(a) != 2 or len(b) != 2:
            raise ShapeError(f"A and B must be matrices, got {list(a)} and {list(b)}")
        (m, k), (k_b, n) = a[::-1] if self.trans_a else a, b[::-1] if self.trans_b else b
        if k != k_b:
            raise ShapeError(f"inner dimensions differ: A {list(a)}{' transposed' * self.trans_a}, "
                             f"B {list(b)}{' transposed' * self.trans_b}")
        c = shapes[2] if len(shapes) > 2 else None
        if c is not None and broadcast_shape(c, (m, n)) != (m, n):
            raise ShapeError(f"C {list(c)} does not broadcast to the product's shape {[m, n]}")
        return (m, n)

    def rows_fit(self, softmax: "Softmax", constants: Mapping[str, np.ndarray]) -> bool:
        columns = self._columns_of_constant(self.node.inputs[1], constants, self.trans_b)
        return columns is not None and columns <= DIRECT_COLUMNS and softmax.axis in (1, -1)

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        a, b = inputs[0], inputs[1]
        m, n = output.shape
        k = a.shape[0] if self.trans_a else a.shape[1]
        a_strides = (1, m) if self.trans_a else (k, 1)
        b_strides = (1, k) if self.trans_b else (n, 1)
        c = inputs[2] if len(inputs) > 2 else None
        bias = None if c is None else Operand(c.buffer, broadcast_strides(c.shape, (m, n)))
        launch_gemm(encoder, m, n, k, Operand(a.buffer, a_strides), Operand(b.buffer, b_strides),
                    Operand(output.buffer, (n, 1)), bias, self.alpha, self.beta, activation=self.activation)


class MatMul(Product):
    """numpy's matmul: 1-D operands promoted, batch dimensions broadcast. Once fused with the Add
    after it, a third input: the bias (see bias_of)."""

    op_type = "MatMul"
    arity = (2, 2)

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        a, b = shapes[0], shapes[1]
        if not a or not b:
            raise ShapeError("MatMul needs operands of rank 1 or more")
        batch, m, k, k_b, n = self._dims(a, b)
        if k != k_b:
            raise ShapeError(f"inner dimensions differ: {list(a)} and {list(b)}")
        product = batch + ((m,) if len(a) > 1 else ()) + ((n,) if len(b) > 1 else ())
        # A bias of shape [1, ..., 1, n] adds leading 1s at most: the values are laid out alike.
        return broadcast_shape(product, shapes[2]) if len(shapes) > 2 else product

    def bias_of(self, add: "Add", constants: Mapping[str, np.ndarray]) -> str | None:
        """A constant of shape [1, ..., 1, n] or [1, ..., 1] when B is a constant n-column matrix,
        the layer of an MLP. None for anything else."""
        weights, product = constants.get(self.node.inputs[1]), self.node.outputs[0]
        other = [name for name in add.node.inputs if name != product]
        if weights is None or weights.ndim != 2 or len(other) != 1 or other[0] not in constants:
            return None
        shape = constants[other[0]].shape
        if any(dim != 1 for dim in shape[:-1]) or shape[-1:] not in ((), (1,), (weights.shape[1],)):
            return None
        return other[0]

    def rows_fit(self, softmax: "Softmax", constants: Mapping[str, np.ndarray]) -> bool:
        # Softmax before opset 13 flattens from its axis on, so only axis -1 is surely the rows.
        columns = self._columns_of_constant(self.node.inputs[1], constants, False)
        return columns is not None and columns <= DIRECT_COLUMNS and softmax.axis == -1

    @staticmethod
    def _dims(a: Shape, b: Shape) -> tuple[Shape, int, int, int, int]:
        a2 = a if len(a) > 1 else (1, *a)
        b2 = b if len(b) > 1 else (*b, 1)
        return broadcast_shape(a2[:-2], b2[:-2]), a2[-2], a2[-1], b2[-2], b2[-1]

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        a, b = inputs[0], inputs[1]
        batch, m, k, _, n = self._dims(a.shape, b.shape)
        a_batch = a.shape[:-2] if len(a.shape) > 1 else ()
        b_batch = b.shape[:-2] if len(b.shape) > 1 else ()
        y = Operand(output.buffer, (n, 1))
        c = inputs[2] if len(inputs) > 2 else None
        bias = None if c is None else Operand(c.buffer, (0, 1 if c.shape[-1:] == (n,) and n > 1 else 0))
        if size_of(b_batch) == 1:
            # One weight matrix for the whole batch: fold the batch into the rows, so that a
            # batch of single rows fills tiles instead of wasting one tile each.
            rows = size_of(a_batch) * m
            launch_gemm(encoder, rows, n, k, Operand(a.buffer, (k, 1)), Operand(b.buffer, (n, 1)), y, bias,
                        activation=self.activation)
            return
        dims, (a_steps, b_steps, y_steps) = collapse(batch, broadcast_strides(a_batch, batch, m * k),
                                                     broadcast_strides(b_batch, batch, k * n),
                                                     broadcast_strides(batch, batch, m * n))
        if len(dims) > 2:
            raise ShapeError(f"batch dimensions {list(a_batch)} and {list(b_batch)} broadcast in a pattern "
                             f"this backend does not support")
        dims, steps = [1] * (2 - len(dims)) + dims, [[0] * (2 - len(dims)) + s for s in (a_steps, b_steps, y_steps)]
        launch_gemm(encoder, m, n, k, Operand(a.buffer, (k, 1), batch=tuple(steps[0])),
                    Operand(b.buffer, (n, 1), batch=tuple(steps[1])), Operand(y.buffer, (n, 1), batch=tuple(steps[2])),
                    bias, batches=(dims[0], dims[1]), activation=self.activation)


# ---- convolution and pooling ---------------------------------------------------------------------------

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


@dataclass(frozen=True)
class Window:
    """The sliding window of Conv and MaxPool over two spatial dimensions."""

    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]  # ONNX order: begin H, begin W, end H, end W
    auto_pad: str
    ceil_mode: bool

    def output(self, spatial: Sequence[int], kernel: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The output's spatial size and the padding before each dimension."""
        sizes, befores = [], []
        for axis in range(2):
            size, before = self._axis(axis, spatial[axis], kernel[axis])
            if size < 1:
                raise ShapeError(f"the {list(kernel)} window does not fit the {list(spatial)} input")
            sizes.append(size)
            befores.append(before)
        return (sizes[0], sizes[1]), (befores[0], befores[1])

    def _axis(self, axis: int, extent: int, kernel: int) -> tuple[int, int]:
        stride, reach = self.strides[axis], (kernel - 1) * self.dilations[axis] + 1
        if self.auto_pad == "VALID":
            return (extent - reach) // stride + 1, 0
        if self.auto_pad.startswith("SAME"):
            size = -(-extent // stride)
            total = max(0, (size - 1) * stride + reach - extent)
            return size, total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
        before, padded = self.pads[axis], extent + self.pads[axis] + self.pads[axis + 2]
        if not self.ceil_mode:
            return (padded - reach) // stride + 1, before
        size = -(-(padded - reach) // stride) + 1
        # As onnxruntime does: the last window must start inside the input or its leading padding.
        return (size - 1 if (size - 1) * stride >= extent + before else size), before


def read_window(op: Op, ceil_mode: bool = False) -> Window:
    attributes = op.node.attributes
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        op.reject(f"auto_pad {auto_pad!r} is not one of {', '.join(_AUTO_PADS)}")
    for name, length in (("kernel_shape", 2), ("strides", 2), ("dilations", 2), ("pads", 4)):
        if name in attributes and len(attributes[name]) != length:
            op.reject(f"{name} {attributes[name]} has {len(attributes[name])} values: only 2-D windows "
                      f"(over NCHW inputs) are supported")
    pads = tuple(attributes.get("pads", (0, 0, 0, 0)))
    if min(pads) < 0 or min(attributes.get("strides", (1,))) < 1 or min(attributes.get("dilations", (1,))) < 1:
        op.reject("pads must be >= 0, strides and dilations >= 1")
    return Window(tuple(attributes.get("strides", (1, 1))), tuple(attributes.get("dilations", (1, 1))), pads,
                  auto_pad, ceil_mode)


def require_nchw(shape: Shape, what: str) -> None:
    if len(shape) != 4:
        raise ShapeError(f"{what} must be 4-D (N, C, H, W), got {list(shape)}")


class Conv(Product):
    """2-D convolution, any group count (depthwise included), as im2col and the tiled GEMM: one
    product per image and group. A 1x1 convolution without stride or padding skips im2col."""

    op_type = "Conv"
    attributes = frozenset({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    arity = (2, 3)

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        super().__init__(node, constants, opset)
        self.window = read_window(self)
        self.groups = int(node.attributes.get("group", 1))
        self.kernel_shape = node.attributes.get("kernel_shape")
        if self.groups < 1:
            self.reject(f"group={self.groups} must be >= 1")
        weights = constants.get(node.inputs[1])
        problem = None if weights is None else self._weights_problem(weights.shape)
        if problem:  # weights that no input could fit are the model's fault: refused at load
            self.reject(problem)

    def _weights_problem(self, shape: Shape) -> str | None:
        if len(shape) != 4:
            return f"weights of shape {list(shape)}: only 2-D convolutions (over NCHW inputs) are supported"
        if self.kernel_shape is not None and list(shape[2:]) != list(self.kernel_shape):
            return f"weights {list(shape)} do not match kernel_shape {self.kernel_shape}"
        if shape[0] % self.groups:
            return f"{shape[0]} output channels do not split into group={self.groups}"
        return None

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        x, w = shapes[0], shapes[1]
        require_nchw(x, "the input")
        problem = self._weights_problem(w)
        if problem:
            raise ShapeError(problem)
        if x[1] != w[1] * self.groups:
            raise ShapeError(f"{x[1]} input channels do not fit weights {list(w)} with group={self.groups}")
        bias = shapes[2] if len(shapes) > 2 else None
        if bias is not None and tuple(bias) != (w[0],):
            raise ShapeError(f"bias {list(bias)} must be [{w[0]}]")
        (out_h, out_w), _ = self.window.output(x[2:], w[2:])
        return (x[0], w[0], out_h, out_w)

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        x, w = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        batch, channels, height, width = x.shape
        out_channels, _, kernel_h, kernel_w = w.shape
        (out_h, out_w), (pad_h, pad_w) = self.window.output((height, width), (kernel_h, kernel_w))
        plane, depth = out_h * out_w, channels * kernel_h * kernel_w
        if (kernel_h, kernel_w, out_h, out_w) == (1, 1, height, width) and self.window.strides == (1, 1):
            cols = x.buffer  # a 1x1 window over the unpadded input: the image is already its columns
        else:
            cols = encoder.scratch((batch, depth, plane)).buffer
            launch_flat(encoder, "im2col", batch * depth, x.buffer, cols, channels, height, width, kernel_h, kernel_w,
                        out_h, out_w, *self.window.strides, pad_h, pad_w, *self.window.dilations)
        rows, group_depth = out_channels // self.groups, depth // self.groups
        launch_gemm(encoder, rows, plane, group_depth,
                    Operand(w.buffer, (group_depth, 1), batch=(0, rows * group_depth)),
                    Operand(cols, (plane, 1), batch=(depth * plane, group_depth * plane)),
                    Operand(output.buffer, (plane, 1), batch=(out_channels * plane, rows * plane)),
                    None if bias is None else Operand(bias.buffer, (1, 0), batch=(0, rows)),
                    batches=(batch, self.groups), activation=self.activation)


class MaxPool(Op):
    op_type = "MaxPool"
    attributes = frozenset({"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"})

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        super().__init__(node, constants, opset)
        if "kernel_shape" not in node.attributes:
            self.reject("kernel_shape is required")
        self.window = read_window(self, ceil_mode=bool(node.attributes.get("ceil_mode", 0)))
        self.kernel = tuple(node.attributes["kernel_shape"])

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        x = shapes[0]
        require_nchw(x, "the input")
        (out_h, out_w), _ = self.window.output(x[2:], self.kernel)
        return (x[0], x[1], out_h, out_w)

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        x = inputs[0]
        batch, channels, height, width = x.shape
        (out_h, out_w), (pad_h, pad_w) = self.window.output((height, width), self.kernel)
        launch_flat(encoder, "max_pool", batch * channels * out_h, x.buffer, output.buffer, height, width,
                    *self.kernel, out_h, out_w, *self.window.strides, pad_h, pad_w, *self.window.dilations)


class GlobalAveragePool(Op):
    op_type = "GlobalAveragePool"

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        x = shapes[0]
        if len(x) < 3:
            raise ShapeError(f"the input must have spatial dimensions (N, C, ...), got {list(x)}")
        return (x[0], x[1]) + (1,) * (len(x) - 2)

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        x = inputs[0]
        rows = x.shape[0] * x.shape[1]
        group = encoder.tuning.reduce_group
        encoder.launch("global_average_pool", (rows * group,), (group,), x.buffer, output.buffer, size_of(x.shape[2:]))


# ---- element-wise ---------------------------------------------------------------------------------------


class Unary(Op):
    kernel: ClassVar[str]

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        return shapes[0]

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        launch_flat(encoder, self.kernel, size_of(output.shape), inputs[0].buffer, output.buffer)


class Relu(Unary):
    op_type, kernel = "Relu", "unary_relu"


class Sigmoid(Unary):
    op_type, kernel = "Sigmoid", "unary_sigmoid"


class Tanh(Unary):
    op_type, kernel = "Tanh", "unary_tanh"


class Binary(Op):
    """numpy broadcasting in full; dimensions collapse first, so same-shape operands and bias rows
    cost one or two index divisions per element."""

    kernel: ClassVar[str]
    arity = (2, 2)

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        return broadcast_shape(shapes[0], shapes[1])

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        a, b = inputs
        dims, (a_steps, b_steps) = collapse(output.shape, broadcast_strides(a.shape, output.shape),
                                            broadcast_strides(b.shape, output.shape))
        if not dims:  # every dimension is 1: a single element
            dims, a_steps, b_steps = [1], [0], [0]
        layout = encoder.table([*dims, *a_steps, *b_steps])
        launch_flat(encoder, self.kernel, size_of(output.shape), a.buffer, b.buffer, output.buffer, layout,
                    len(dims))


class Add(Binary):
    op_type, kernel = "Add", "binary_add"


class Sub(Binary):
    op_type, kernel = "Sub", "binary_sub"


class Mul(Binary):
    op_type, kernel = "Mul", "binary_mul"


class Div(Binary):
    op_type, kernel = "Div", "binary_div"


class Softmax(Op):
    """Opset 13 and later: along `axis` (default -1). Earlier opsets: over everything from `axis`
    (default 1) on, the input seen as a matrix."""

    op_type = "Softmax"
    attributes = frozenset({"axis"})

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        super().__init__(node, constants, opset)
        self.coerce_2d = opset < 13
        self.axis = int(node.attributes.get("axis", 1 if self.coerce_2d else -1))

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        self._view(shapes[0])
        return shapes[0]

    def _view(self, shape: Shape) -> tuple[int, int, int]:
        """The input as (outer, length, inner), softmax running along `length`."""
        if not shape:
            raise ShapeError("Softmax needs an input of rank 1 or more")
        axis = normalized_axis(self.axis, len(shape))
        if self.coerce_2d:
            return size_of(shape[:axis]), size_of(shape[axis:]), 1
        return size_of(shape[:axis]), shape[axis], size_of(shape[axis + 1:])

    def encode(self, encoder: Encoder, inputs: Sequence[Tensor | None], output: Tensor) -> None:
        outer, length, inner = self._view(inputs[0].shape)
        launch_flat(encoder, "softmax", outer * inner, inputs[0].buffer, output.buffer, length, inner)


# ---- views ---------------------------------------------------------------------------------------------


class Identity(Op):
    op_type = "Identity"
    is_alias = True

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        return shapes[0]


class Flatten(Op):
    op_type = "Flatten"
    attributes = frozenset({"axis"})
    is_alias = True

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        super().__init__(node, constants, opset)
        self.axis = int(node.attributes.get("axis", 1))

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        x = shapes[0]
        axis = normalized_axis(self.axis, len(x), inclusive=True)
        return (size_of(x[:axis]), size_of(x[axis:]))


class Reshape(Op):
    """The target shape must be a constant (an initializer or a Constant node): 0 copies the
    input's dimension (unless allowzero=1), -1 takes what is left."""

    op_type = "Reshape"
    attributes = frozenset({"allowzero"})
    arity = (2, 2)
    host_inputs = frozenset({1})
    is_alias = True

    def __init__(self, node: Node, constants: Mapping[str, np.ndarray], opset: int) -> None:
        super().__init__(node, constants, opset)
        target = constants.get(node.inputs[1])
        if target is None:
            self.reject("the shape must be a constant (an initializer or a Constant node), "
                        f"not the computed tensor {node.inputs[1]!r}")
        if target.ndim != 1 or target.dtype.kind not in "iu" or (target < -1).any() or (target == -1).sum() > 1:
            self.reject(f"shape {target.tolist()} is not a list of sizes with at most one -1")
        self.target = [int(dim) for dim in target]
        self.allow_zero = bool(node.attributes.get("allowzero", 0))

    def infer(self, shapes: Sequence[Shape | None]) -> Shape:
        x = shapes[0]
        dims = [x[axis] if dim == 0 and not self.allow_zero and axis < len(x) else dim
                for axis, dim in enumerate(self.target)]
        known = size_of(dim for dim in dims if dim != -1)
        if -1 in dims:
            if known == 0 or size_of(x) % known:
                raise ShapeError(f"cannot reshape {list(x)} into {self.target}")
            dims[dims.index(-1)] = size_of(x) // known
        if size_of(dims) != size_of(x):
            raise ShapeError(f"cannot reshape {list(x)} ({size_of(x)} values) into {self.target}")
        return tuple(dims)


OPS: dict[str, type[Op]] = {op.op_type: op for op in (
    Gemm, MatMul, Conv, MaxPool, GlobalAveragePool, Relu, Sigmoid, Tanh, Add, Sub, Mul, Div, Softmax, Identity,
    Flatten, Reshape)}
SUPPORTED = sorted([*OPS, "Constant"])  # Constant nodes become constants when the model is read


def build_ops(graph: Graph, row_softmax: bool = False) -> list[Op]:
    """An operator per node, or UnsupportedModel naming every operator the backend lacks (with the
    list of those it has) or the first node whose attributes or constant inputs it cannot take.
    `row_softmax`: the program's matrix products can finish a row with a softmax (gemm_direct)."""
    missing = sorted({node.op_type for node in graph.nodes if node.op_type not in OPS})
    if missing:
        raise UnsupportedModel(f"unsupported operator{'s' * (len(missing) > 1)} {', '.join(missing)}; "
                               f"the opencl device supports {', '.join(SUPPORTED)}")
    ops = [OPS[node.op_type](node, graph.constants, graph.opset) for node in graph.nodes]
    for op in ops:
        for name in op.device_inputs():
            value = graph.constants.get(name)
            if value is not None and value.dtype != np.float32:
                op.reject(f"constant input {name!r} is {value.dtype.name}; this backend computes in float32 only")
    return fuse_epilogues(ops, graph, row_softmax)


_ACTIVATION_OPS = (Relu, Sigmoid, Tanh)


def fuse_epilogues(ops: list[Op], graph: Graph, row_softmax: bool = False) -> list[Op]:
    """`ops` with the element-wise nodes that only finish a matrix product folded into its kernel:
    the Add of a bias after a MatMul by a constant matrix (see MatMul.bias_of), then a Relu, Sigmoid
    or Tanh after any product. A node folds when it is the only reader of the product's output and
    the model does not output that tensor. With `row_softmax`, a Softmax along the rows of a
    product whose rows fit one work-item (a classifier's last layer) folds too. One launch instead
    of up to three, and no tensors in between: on pocl a launch costs more than such an epilogue."""
    readers: dict[str, list[Op]] = {}
    for op in ops:
        for name in dict.fromkeys(op.node.inputs):
            readers.setdefault(name, []).append(op)
    outputs = set(graph.output_names)

    def only_reader(tensor: str) -> Op | None:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    folded: set[int] = set()
    for op in ops:
        if not isinstance(op, Product):
            continue
        follower = only_reader(op.node.outputs[0])
        bias = op.bias_of(follower, graph.constants) if isinstance(follower, Add) else None
        if bias is not None:
            op.absorb(follower.node, bias)
            folded.add(id(follower))
            follower = only_reader(op.node.outputs[0])
        if isinstance(follower, _ACTIVATION_OPS):
            op.absorb(follower.node)
            folded.add(id(follower))
        elif row_softmax and isinstance(follower, Softmax) and op.rows_fit(follower, graph.constants):
            op.absorb(follower.node)
            folded.add(id(follower))
    return [op for op in ops if id(op) not in folded]
