"""`azureml.contrib.services.aml_request` and `azureml_inference_server_http.api.aml_request`: the
`@rawhttp` decorator, and the request such a run() receives: werkzeug's Request, which is what Flask
hands it on Azure, built from the raw request in the worker. Only raw-HTTP scripts import this module,
so only they load werkzeug."""

from __future__ import annotations

import io
import sys
from typing import Any, Callable, NoReturn, TypeVar

from werkzeug.wrappers import Request

from mlscore.scoring import json_limits
from mlscore.scoring.input_modes import RAWHTTP_ATTR, BadRequestBody
from mlscore.scoring.messages import RawRequest

__all__ = ["AMLRequest", "BadRequestBody", "rawhttp"]

F = TypeVar("F", bound=Callable[..., Any])


def rawhttp(func: F) -> F:
    """Mark run() as taking the whole HTTP request (an AMLRequest) instead of decoded arguments."""
    setattr(func, RAWHTTP_ATTR, True)
    return func


class _Json:
    """get_json()'s decoder: orjson within the server's nesting limit, instead of the stdlib's json."""

    loads = staticmethod(json_limits.loads)


class AMLRequest(Request):
    """One request, as werkzeug (and so Flask) presents it: headers, args, form, files, values, data,
    get_json(), url, remote_addr, environ... A body that get_json() cannot decode is a 400 that says so
    (BadRequestBody); `silent=True` gives None, as in werkzeug."""

    json_module = _Json

    @classmethod
    def from_raw(cls, request: RawRequest) -> AMLRequest:
        return cls(wsgi_environ(request))

    def on_json_loading_failed(self, e: ValueError | None) -> NoReturn:
        if e is None:  # not a JSON content type: werkzeug's 415, which the pipeline answers as such
            super().on_json_loading_failed(e)
        raise BadRequestBody(f"Request body could not be decoded as JSON: {e}")


def wsgi_environ(request: RawRequest) -> dict[str, Any]:
    """The WSGI environ of a raw request, as a WSGI server (gunicorn, on Azure) would build it."""
    body = request.body
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # WSGI carries the path's raw bytes as Latin-1 text; werkzeug decodes them back.
        "PATH_INFO": request.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": request.query.decode("latin-1"),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,  # the body is all there: werkzeug reads it without a length guard
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if request.client:
        environ["REMOTE_ADDR"] = request.client
    for name, value in request.headers:
        if name == b"content-type":
            key = "CONTENT_TYPE"
        elif name == b"content-length":
            key = "CONTENT_LENGTH"
        elif b"_" in name:
            # As gunicorn does: `X_Forwarded_For` would pass for `X-Forwarded-For` once in the environ.
            continue
        else:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        earlier = environ.get(key)
        environ[key] = text if earlier is None else f"{earlier},{text}"
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))  # the body as it arrived, chunked or not
    environ["SERVER_NAME"], environ["SERVER_PORT"] = _server_of(environ.get("HTTP_HOST", ""))
    return environ


def _server_of(host: str) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT from a Host header (`name`, `name:port`, `[v6]:port`)."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") and rest[1:] else "80"
    name, _, port = host.partition(":")
    return name or "localhost", port or "80"
