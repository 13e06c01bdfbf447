"""The HTTP routes: health, scoring and Swagger, answered per DESIGN.md's contract."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mlscore.scoring.messages import RawRequest
from mlscore.scoring.swagger import UnsupportedSwaggerVersion
from mlscore.server.errors import RawResponse, json_error
from mlscore.server.request_ids import RequestIdTooLong, response_id_headers

if TYPE_CHECKING:
    from mlscore.server.app import ServerState

# Headers the server owns; a run() that sets them through an AMLResponse does not override them.
_SERVER_HEADERS = {
    b"x-request-id", b"x-ms-request-id", b"x-ms-client-request-id", b"traceid",
    b"x-ms-run-fn-exec-ms", b"x-ms-run-function-failed", b"content-length", b"transfer-encoding",
}
_TRUE, _FALSE = b"True", b"False"
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})


class BodyTooLarge(Exception):
    pass


class Routes:
    """The endpoints, bound to one server's state."""

    def __init__(self, state: "ServerState") -> None:
        self.state = state
        self._keys = [key.encode() for key in state.settings.auth_keys]
        self._max_body = state.settings.max_body_bytes

    async def healthy(self, request: Request) -> Response:
        return RawResponse(200, [(b"content-type", b"text/plain; charset=utf-8")], b"Healthy")

    async def live(self, request: Request) -> Response:
        return RawResponse(200, [(b"content-type", b"application/json")], _LIVE)

    async def ready(self, request: Request) -> Response:
        if self.state.ready:
            return RawResponse(200, [(b"content-type", b"application/json")], _READY)
        body = orjson.dumps({"ready": False, "message": self.state.not_ready_reason})
        return RawResponse(503, [(b"content-type", b"application/json"), (b"retry-after", b"1")], body)

    async def swagger(self, request: Request) -> Response:
        try:
            document = self.state.swagger.get(request.query_params.get("version"))
        except UnsupportedSwaggerVersion as error:
            return json_error(404, str(error))
        return RawResponse(200, [(b"content-type", b"application/json")], document)

    async def score(self, request: Request) -> Response:
        try:
            ids = response_id_headers(request.headers)
        except RequestIdTooLong as error:
            return json_error(431, str(error), error.headers)
        if request.method == "HEAD":
            return json_error(405, "Method HEAD is not allowed for /score; allowed: GET, POST, OPTIONS.",
                              [(b"allow", b"GET, POST, OPTIONS"), *ids])
        if self._keys and not self._authorized(request):
            return json_error(401, "Missing or invalid key: send the header 'Authorization: Bearer <key>'.",
                              [(b"www-authenticate", b"Bearer"), *ids])
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            return json_error(413, f"Request body is larger than the limit of {self._max_body} bytes.", ids)
        scope = request.scope
        raw = RawRequest(request.method, scope["path"], scope["query_string"], scope["headers"], body)
        result = await self.state.score(raw)
        headers = [item for item in result.headers if item[0] not in _SERVER_HEADERS]
        headers.extend(ids)
        headers.append((b"x-ms-run-function-failed", _TRUE if result.run_failed else _FALSE))
        if result.run_ms is not None:
            headers.append((b"x-ms-run-fn-exec-ms", b"%.3f" % result.run_ms))
        if isinstance(result.body, bytes):
            return RawResponse(result.status, headers, result.body)
        streamed = StreamingResponse(result.body, status_code=result.status)
        streamed.raw_headers = headers
        return streamed

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        # Every key is compared, so the time taken does not tell which one nearly matched.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        return any(matches)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)
