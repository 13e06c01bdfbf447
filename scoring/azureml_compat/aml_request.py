"""`azureml.contrib.services.aml_request`: the request object a `@rawhttp` run() receives, and the decorator."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import orjson
from starlette.datastructures import Headers, QueryParams

F = TypeVar("F", bound=Callable[..., Any])

RAWHTTP_ATTR = "_mlscore_rawhttp"


def rawhttp(func: F) -> F:
    """Mark run() as taking the whole HTTP request (an AMLRequest) instead of decoded arguments."""
    setattr(func, RAWHTTP_ATTR, True)
    return func


class BadRequestBody(ValueError):
    """get_json() on a body that is not JSON; the pipeline answers it with a 400."""


class AMLRequest:
    """A Flask-like view of one request: method, path, headers, args (query) and the body."""

    __slots__ = ("method", "path", "headers", "args", "query_string", "_body")

    def __init__(self, method: str, path: str, headers: Headers, query_string: bytes, body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.query_string = query_string
        self.args = QueryParams(query_string.decode("latin-1"))
        self._body = body

    @property
    def full_path(self) -> str:
        return f"{self.path}?{self.query_string.decode('latin-1')}"

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    @property
    def is_json(self) -> bool:
        mimetype = self.mimetype
        return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))

    @property
    def data(self) -> bytes:
        return self._body

    @property
    def json(self) -> Any:
        return self.get_json()

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> bytes | str:
        if as_text:
            return self._body.decode("utf-8", errors="replace")
        return self._body

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """The body parsed as JSON; None for an empty body. A body that is not JSON raises
        BadRequestBody (a 400), or gives None with `silent=True`."""
        if not self._body:
            return None
        try:
            return orjson.loads(self._body)
        except orjson.JSONDecodeError as error:
            if silent:
                return None
            raise BadRequestBody(f"Request body could not be decoded as JSON: {error}") from None

    def __repr__(self) -> str:
        return f"<AMLRequest {self.method} {self.full_path}>"
