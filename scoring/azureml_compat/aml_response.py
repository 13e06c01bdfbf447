"""`azureml.contrib.services.aml_response` and `azureml_inference_server_http.api.aml_response`: what a
run() returns to set body, status and headers. Like Azure's, it is a werkzeug (Flask) Response, so the
pipeline answers it, and any Response a script makes, the same way."""

from __future__ import annotations

from typing import Any, Mapping

from werkzeug.wrappers import Response

from mlscore.scoring.pipeline import INVALID_HEADER, NotHttp, message_body

__all__ = ["AMLResponse"]


class AMLResponse(Response):
    """`AMLResponse(message, status_code=200, response_headers=None, json_str=False, run_function_failed=False)`.

    `message` is bytes (sent as they are), a str (sent as text, or JSON-encoded with `json_str`), a
    generator of chunks (streamed), None (`{}`) or anything JSON-able (JSON). Each header replaces the
    default of its name; a value with commas becomes one header per part, as on Azure. The headers may
    also be given as `headers=`. A status of 500 or more, or `run_function_failed`, marks the run failed
    (`x-ms-run-function-failed: True`).
    """

    def __init__(
        self,
        message: Any = None,
        status_code: int | str = 200,
        response_headers: Mapping[str, Any] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        if response_headers is not None and headers is not None:
            raise TypeError("AMLResponse takes its headers once: as response_headers or as headers")
        body, content_type = message_body(message, json_str)
        super().__init__(body, status=status_code if isinstance(status_code, str) else int(status_code),
                         content_type=content_type.decode("latin-1"))
        self.headers["x-ms-run-function-failed"] = str(bool(run_function_failed))
        given = response_headers if response_headers is not None else headers
        try:
            for name, value in (given or {}).items():
                self.headers.remove(name)
                for part in str(value).split(","):
                    self.headers.add(name, part.strip())
        except ValueError:  # werkzeug refuses a line break in a value
            raise NotHttp(INVALID_HEADER) from None

    def __repr__(self) -> str:
        return f"<AMLResponse {self.status_code}>"
