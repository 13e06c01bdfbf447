"""What inference-schema's decorators on run() declare, read from their wrappers.

inference-schema 1.8 keeps each `input_schema`'s parameter type only in the closure of the wrapper
it builds, so this is the one place that reaches into that closure; input decoding and Swagger
both read it from here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from inference_schema.parameter_types.abstract_parameter_type import AbstractParameterType

_DECORATORS_MODULE = "inference_schema.schema_decorators"


@dataclass(frozen=True, slots=True)
class InputSchema:
    param_type: AbstractParameterType
    optional: bool  # input_schema(optional=True)
    convert: bool  # input_schema(convert_to_provided_type=...)


def input_schemas(run: Callable[..., Any]) -> dict[str, InputSchema]:
    """Parameter name → what its input_schema decorator declares (the outermost one wins)."""
    found: dict[str, InputSchema] = {}
    for wrapper in _wrappers(run):
        captured = inspect.getclosurevars(wrapper).nonlocals if getattr(wrapper, "__closure__", None) else {}
        if isinstance(captured.get("param_type"), AbstractParameterType) and "param_name" in captured:
            found.setdefault(captured["param_name"], InputSchema(
                captured["param_type"], bool(captured.get("optional", False)),
                bool(captured.get("convert_to_provided_type", True)),
            ))
    return found


def undecorated_target(run: Callable[..., Any]) -> Callable[..., Any]:
    """The user's own function when every wrapper above it is inference-schema's (they only decode
    and check arguments, which the server has done already), else run() itself, so that the user's
    other decorators still run."""
    func: Any = run
    while hasattr(func, "__wrapped__"):
        if getattr(getattr(func, "_self_wrapper", None), "__module__", None) != _DECORATORS_MODULE:
            return run
        func = func.__wrapped__
    return func


def _wrappers(run: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The wrapper functions of the wrapt layers around run(), outermost first."""
    wrappers = []
    layer: Any = run
    for _ in range(100):
        wrapper = getattr(layer, "_self_wrapper", None)
        if wrapper is not None:
            wrappers.append(wrapper)
        if not hasattr(layer, "__wrapped__"):
            break
        layer = layer.__wrapped__
    return wrappers
