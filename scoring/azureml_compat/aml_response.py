"""`azureml.contrib.services.aml_response`: what a `@rawhttp` run() returns to set body, status and headers."""

from __future__ import annotations

from typing import Any, Mapping


class AMLResponse:
    """A response from run(): `message` is bytes, str, a generator of chunks, or anything JSON-able.

    With `json_str=True` a str message is sent JSON-encoded (quoted) rather than as plain text.
    """

    __slots__ = ("message", "status_code", "headers", "json_str")

    def __init__(
        self,
        message: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        json_str: bool = False,
    ) -> None:
        self.message = message
        self.status_code = int(status_code)
        self.headers = dict(headers or {})
        self.json_str = json_str

    @property
    def status(self) -> int:
        return self.status_code

    def __repr__(self) -> str:
        return f"<AMLResponse {self.status_code}>"
