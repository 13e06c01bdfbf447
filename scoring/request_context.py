"""The request that run() is answering in this thread (or task): its id, which tags the log lines
run() writes, and the fields it collects for model data collection. The pipeline sets it around
each run(); outside one (import, init(), the warm-up) there is none."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any


class RequestContext:
    __slots__ = ("request_id", "fields")

    def __init__(self, request_id: bytes) -> None:
        self.request_id = request_id
        self.fields: dict[str, Any] | None = None  # made by the first collect()


CURRENT: ContextVar[RequestContext | None] = ContextVar("mlscore_request", default=None)


def current_request_id() -> str | None:
    """The id of the request being scored here, or None outside run()."""
    context = CURRENT.get()
    if context is None or not context.request_id:
        return None
    return context.request_id.decode("latin-1")
