"""Batching in an entry script: the `@batched` decorator by which run() says it takes several requests
at once, how the decoded arguments of those requests become one call's arguments, and how its result
becomes an answer per request.

    from mlscore import batched

    @batched
    @input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
    def run(data):  # the rows of every request of the call, in one array
        return model.predict(data)  # a row per row: split back by each request's rows

Two ways, decided once per script (`batching_for`):

- `RowBatch`: a schema run() with numpy or pandas parameters. Each is concatenated along axis 0
  across the requests, and the result (an array, a DataFrame or Series, or a list) is split back by
  each request's row count. Requests join only when their arrays stack (same dtype and trailing
  shape, same columns) and their other parameters are equal (the same JSON), so a `GlobalParameters`
  dict that differs puts a request in a call of its own.
- `ListBatch`: any other batched run() (plain `run(data)`, other schema types): each parameter is a
  list of the requests' values, and run() returns a list with an answer per request.

Either way `request_headers`, when run() takes it, is a list of each request's headers.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType

from mlscore.scoring.encoding import NotEncodable, encode_json
from mlscore.scoring.input_modes import BATCHED_ATTR, REQUEST_HEADERS, BadInput, PlainMode, SchemaMode, marked

F = TypeVar("F", bound=Callable[..., Any])
Arguments = dict[str, Any]  # one request's keyword arguments, as its input mode decoded them


def batched(run: F) -> F:
    """Mark run() as taking a batch of requests (see the module's docstring). run() itself is
    returned, so the decorator goes above or below inference-schema's. Azure has no such decorator:
    a script that must also run there falls back to `batched = lambda run: run` on ImportError,
    which suits row batching (one request's rows are a batch of one), not a run() that takes lists."""
    setattr(run, BATCHED_ATTR, True)
    return run


def is_batched(run: Callable[..., Any]) -> bool:
    return marked(run, BATCHED_ATTR)


class BatchError(ValueError):
    """run()'s result on a batch cannot be split into an answer per request; the message names the
    lengths."""


class ListBatch:
    """Each parameter a list of the requests' values; run() answers a list of the same length."""

    def checked(self, arguments: Arguments) -> Arguments:
        return arguments

    def joins(self, first: Arguments, other: Arguments) -> bool:
        """Requests share a call when they give the same parameters (an optional one may be left out)."""
        return first.keys() == other.keys()

    def merge(self, each: list[Arguments]) -> Arguments:
        return {name: [arguments[name] for arguments in each] for name in each[0]}

    def split(self, result: Any, each: list[Arguments]) -> list[Any]:
        requests = _count(len(each), "request")
        length = _rows_of(result) if not isinstance(result, (pd.DataFrame, pd.Series)) else None
        if length is None:
            raise BatchError(f"run() returned a {type(result).__name__} for a batch of {requests}; a batched run() "
                             "returns a list with an answer per request")
        if length != len(each):
            raise BatchError(f"run() returned {_count(length, 'answer')} for a batch of {requests}")
        return list(result)


class RowBatch:
    """The requests' rows stacked into one array (or frame) per parameter; run()'s result split back
    by rows. `arrays` names the numpy and pandas parameters, in run()'s order: the first one a
    request gives sets its row count."""

    def __init__(self, arrays: list[str]) -> None:
        self.arrays = arrays

    def checked(self, arguments: Arguments) -> Arguments:
        """The arguments of a request that can join a batch; BadInput (400) when its arrays are not
        rows, or disagree on how many rows it has."""
        rows = {}
        for name in self._given(arguments):
            value = arguments[name]
            if isinstance(value, np.ndarray) and value.ndim == 0:
                raise BadInput(400, f"Invalid value for parameter '{name}': a batched run() takes rows; got a "
                                    "single value")
            rows[name] = len(value)
        if len(set(rows.values())) > 1:
            counts = ", ".join(f"'{name}' {count}" for name, count in rows.items())
            raise BadInput(400, f"The parameters of a batched run() must have a row each for the same rows; got "
                                f"{counts}")
        return arguments

    def joins(self, first: Arguments, other: Arguments) -> bool:
        """Requests share a call when their arrays stack and their other parameters are the same."""
        if first.keys() != other.keys() or not self._given(first):
            return False
        for name in first:
            if name == REQUEST_HEADERS:
                continue
            if name in self.arrays:
                if not _stack(first[name], other[name]):
                    return False
            elif not _same(first[name], other[name]):
                return False
        return True

    def merge(self, each: list[Arguments]) -> Arguments:
        merged = dict(each[0])
        for name in self._given(merged):
            values = [arguments[name] for arguments in each]
            merged[name] = np.concatenate(values) if isinstance(values[0], np.ndarray) else pd.concat(
                values, ignore_index=True)
        if REQUEST_HEADERS in merged:
            merged[REQUEST_HEADERS] = [arguments[REQUEST_HEADERS] for arguments in each]
        return merged

    def split(self, result: Any, each: list[Arguments]) -> list[Any]:
        counts = [self._rows(arguments) for arguments in each]
        if counts == [None]:  # a request without arrays (optional ones left out) is called alone
            return [result]
        total = sum(counts)
        batch = f"a batch of {_count(total, 'row')} ({_count(len(each), 'request')})"
        length = _rows_of(result)
        if length is None:
            raise BatchError(f"run() returned a {type(result).__name__} for {batch}; a batched run() returns an "
                             "array, a DataFrame, a Series or a list with a row per input row")
        if length != total:
            raise BatchError(f"run() returned {_count(length, 'row')} for {batch}")
        bounds = np.cumsum([0, *counts]).tolist()
        rows = result.iloc if isinstance(result, (pd.DataFrame, pd.Series)) else result
        return [rows[start:end] for start, end in zip(bounds, bounds[1:])]

    def _given(self, arguments: Arguments) -> list[str]:
        return [name for name in self.arrays if name in arguments]

    def _rows(self, arguments: Arguments) -> int | None:
        given = self._given(arguments)
        return len(arguments[given[0]]) if given else None


Batching = ListBatch | RowBatch


def batching_for(mode: SchemaMode | PlainMode) -> Batching:
    """Rows when a schema run() has numpy (of one dimension or more) or pandas parameters, else lists."""
    if not isinstance(mode, SchemaMode):
        return ListBatch()
    arrays = [parameter.name for parameter in mode.parameters if parameter.convert and (
        isinstance(parameter.param_type, PandasParameterType)
        or isinstance(parameter.param_type, NumpyParameterType) and parameter.param_type.sample_input.ndim > 0)]
    return RowBatch(arrays) if arrays else ListBatch()


def _stack(first: Any, other: Any) -> bool:
    """Whether two requests' values of a parameter concatenate along rows without changing either."""
    if isinstance(first, np.ndarray) and isinstance(other, np.ndarray):
        return first.dtype == other.dtype and first.shape[1:] == other.shape[1:]
    if isinstance(first, pd.DataFrame) and isinstance(other, pd.DataFrame):
        return first.dtypes.to_dict() == other.dtypes.to_dict() and list(first.columns) == list(other.columns)
    return False


def _same(first: Any, other: Any) -> bool:
    """Equal as JSON (1 and 1.0, or True and 1, are not): run() gets the first request's value for all."""
    try:
        return encode_json(first) == encode_json(other)
    except NotEncodable:
        return False


def _rows_of(result: Any) -> int | None:
    if isinstance(result, np.ndarray):
        return len(result) if result.ndim > 0 else None
    if isinstance(result, (pd.DataFrame, pd.Series, list, tuple)):
        return len(result)
    return None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
