"""The ONNX model as this backend sees it: nodes in order with decoded attributes, every constant
(initializers and Constant nodes) as a numpy array, and the default domain's opset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mlscore.accelerators.base import UnsupportedModel

_DEFAULT_DOMAINS = ("", "ai.onnx")
_CONSTANT_SCALARS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                     "value_ints": np.int64}


@dataclass(frozen=True)
class Node:
    op_type: str  # prefixed with its domain outside the default one, so that it reads as unsupported
    name: str  # the node's name, or its first output's when the model gives none
    inputs: tuple[str, ...]  # "" for an optional input left out
    outputs: tuple[str, ...]
    attributes: Mapping[str, Any]

    def describe(self) -> str:
        return f"node {self.name!r} ({self.op_type})"


@dataclass(frozen=True)
class Graph:
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    nodes: tuple[Node, ...]
    constants: Mapping[str, np.ndarray]
    opset: int


def read_graph(path: Path) -> Graph:
    """The graph of the model at `path`, its nodes checked to come in an order that can run."""
    try:
        model = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError, OSError...
        raise UnsupportedModel(f"{path}: not a readable ONNX model: {error}") from None
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    nodes = []
    for proto in model.graph.node:
        node = _node(proto)
        if node.op_type == "Constant":
            constants[node.outputs[0]] = _constant_value(node)
        else:
            nodes.append(node)
    input_names = tuple(value.name for value in model.graph.input if value.name not in constants)
    graph = Graph(input_names, tuple(value.name for value in model.graph.output), tuple(nodes), constants,
                  _default_opset(model))
    _check_order(graph)
    return graph


def _node(proto: Any) -> Node:
    op_type = proto.op_type if proto.domain in _DEFAULT_DOMAINS else f"{proto.domain}.{proto.op_type}"
    attributes = {attribute.name: _decode(helper.get_attribute_value(attribute)) for attribute in proto.attribute}
    return Node(op_type, proto.name or proto.output[0], tuple(proto.input), tuple(proto.output), attributes)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _constant_value(node: Node) -> np.ndarray:
    if "value" in node.attributes:
        return node.attributes["value"]
    for name, dtype in _CONSTANT_SCALARS.items():
        if name in node.attributes:
            return np.asarray(node.attributes[name], dtype=dtype)
    raise UnsupportedModel(f"{node.describe()}: only tensor and numeric values are supported, "
                           f"not {', '.join(sorted(node.attributes))}")


def _default_opset(model: Any) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in _DEFAULT_DOMAINS), 1)


def _check_order(graph: Graph) -> None:
    known = {*graph.input_names, *graph.constants}
    for node in graph.nodes:
        unknown = [name for name in node.inputs if name and name not in known]
        if unknown:
            raise UnsupportedModel(f"{node.describe()} reads {', '.join(map(repr, unknown))}, which no earlier "
                                   f"node, input or initializer provides")
        known.update(node.outputs)
    missing = [name for name in graph.output_names if name not in known]
    if missing:
        raise UnsupportedModel(f"the model's outputs {', '.join(map(repr, missing))} are never computed")
