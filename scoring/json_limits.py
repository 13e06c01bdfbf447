"""Decoding request JSON within a nesting limit. orjson itself refuses more than 1024 levels; the
code after it (numpy, pandas, inference-schema, run()) recurses in Python, so the server takes a
lower limit (the `max_json_depth` setting), checked on the bytes before decoding."""

from __future__ import annotations

import re
from typing import Any

import orjson

DEFAULT_MAX_DEPTH = 64
_max_depth = DEFAULT_MAX_DEPTH

_ESCAPES = (b"\\\\", b'\\"')  # an escaped backslash, an escaped quote: removed, in this order
_NOT_SHAPE = bytes(byte for byte in range(256) if byte not in b'[]{}"')
_STRING = re.compile(rb'"[^"]*"')  # a string, once only brackets and quotes are left
_INNERMOST = re.compile(rb"\[\]|\{\}")


class JsonTooDeep(ValueError):
    """JSON nested deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nested deeper than the limit of {limit} levels")
        self.limit = limit


def set_max_depth(depth: int) -> None:
    """The limit for this process, from the server's settings (set where the script is loaded)."""
    global _max_depth
    _max_depth = depth


def loads(data: bytes | str) -> Any:
    """orjson.loads, after refusing JSON nested deeper than the limit with JsonTooDeep; invalid
    JSON raises orjson.JSONDecodeError as orjson.loads does."""
    limit = _max_depth
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if nesting_exceeds(raw, limit):
        raise JsonTooDeep(limit)
    return orjson.loads(data)


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether JSON bytes nest arrays and objects deeper than `limit`. Everything runs in C: escapes
    are removed, then every byte but brackets and quotes, then strings; the innermost pairs are then
    peeled one level per pass, at most `limit` passes. Malformed JSON may answer either way: orjson
    then refuses it."""
    if b"\\" in data:
        for escape in _ESCAPES:
            data = data.replace(escape, b"")
    shape = data.translate(None, _NOT_SHAPE)
    if len(shape) <= limit:
        return False
    if b'"' in shape:
        shape = _STRING.sub(b"", shape)
    for _ in range(limit):
        shape, peeled = _INNERMOST.subn(b"", shape)
        if not shape or not peeled:
            return False
    return _INNERMOST.search(shape) is not None
