"""Encoding run()'s results as JSON with orjson: numpy arrays and scalars and pandas objects included."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class NotEncodable(TypeError):
    """run() returned something that has no JSON form."""


def encode_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as error:
        raise NotEncodable(f"run() returned a {type(value).__name__} that cannot be encoded as JSON: {error}") from None


def _default(value: Any) -> Any:
    """What orjson does not know natively: arrays it cannot take as they are (non-contiguous,
    object or float16 dtypes), numpy scalars of such types, pandas frames and series, sets."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return list(value)
    module = type(value).__module__
    if module.startswith("pandas"):
        if hasattr(value, "to_dict") and hasattr(value, "columns"):
            return value.to_dict(orient="records")
        if hasattr(value, "tolist"):
            return value.tolist()
        if hasattr(value, "isoformat"):
            return value.isoformat()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
