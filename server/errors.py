"""Turning errors into HTTP once: JSON `{"message": …}` bodies that never carry a traceback."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mlscore.server.request_ids import RequestIdTooLong, pick_headers, response_id_headers

logger = logging.getLogger("mlscore.server")

NOT_FOUND = "The requested URL was not found on the server: {path}"
INTERNAL_ERROR = "An unexpected internal error occurred. Check the logs for more info."
METHOD_NOT_ALLOWED = "Method {method} is not allowed for {path}; allowed: {allowed}."


class BytesResponse(Response):
    """A response whose headers are given ready-made as bytes pairs, skipping Starlette's header
    building. A 204 or 304 has neither body nor Content-Length (RFC 9110), whatever it was given."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.background = None
        if status == 204 or status == 304:
            self.body = b""
        else:
            self.body = body
            headers.append((b"content-length", str(len(body)).encode()))
        self.raw_headers = headers


def json_error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> BytesResponse:
    raw = [(b"content-type", b"application/json")]
    if headers:
        raw.extend(headers)
    return BytesResponse(status, raw, orjson.dumps({"message": message}))


async def http_exception(request: Request, error: Exception) -> Response:
    """Starlette's routing errors (404, 405) as JSON with the request ids."""
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        message = NOT_FOUND.format(path=request.url.path)
    elif error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = METHOD_NOT_ALLOWED.format(method=request.method, path=request.url.path, allowed=allowed)
    else:
        message = str(error.detail)
    headers = [(name.lower().encode(), value.encode()) for name, value in (error.headers or {}).items()]
    try:
        ids = response_id_headers(pick_headers(request.scope["headers"]))
    except RequestIdTooLong as too_long:
        ids = too_long.headers
    return json_error(error.status_code, message, headers + ids)


async def unhandled_exception(request: Request, error: Exception) -> Response:
    """A bug of ours: logged with its traceback, answered with a plain message."""
    logger.exception("unhandled error answering %s %s", request.method, request.url.path)
    return json_error(500, INTERNAL_ERROR)


def v2_error_body(response: Response) -> Response:
    """An error of the Open Inference Protocol's routes: their clients read `error` (tritonclient
    fails on a body without it), ours read `message`; the body carries both."""
    body = getattr(response, "body", b"")
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return response
    if not isinstance(decoded, dict) or "error" in decoded or "message" not in decoded:
        return response
    headers = [(name, value) for name, value in response.raw_headers if name != b"content-length"]
    return BytesResponse(response.status_code, headers,
                         orjson.dumps({"error": decoded["message"], "message": decoded["message"]}))
