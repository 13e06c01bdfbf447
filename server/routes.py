"""The HTTP routes: health, scoring and Swagger, answered per DESIGN.md's contract."""

from __future__ import annotations

import asyncio
import html
from importlib import metadata, util
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope

from mlscore import __version__
from mlscore.scoring.collect import COLLECTED_HEADER
from mlscore.scoring.kserve_v2 import model_metadata
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.onnx_model import OnnxPipeline
from mlscore.scoring.swagger import UnsupportedSwaggerVersion
from mlscore.server.admission import Rejected, Ticket
from mlscore.server.auth import AuthKeys
from mlscore.server.errors import METHOD_NOT_ALLOWED, BytesResponse, json_error
from mlscore.server.metrics import CONTENT_TYPE
from mlscore.server.request_ids import RequestIdTooLong, pick_headers, request_id_of, response_id_headers

if TYPE_CHECKING:
    from mlscore.server.app import ServerState

# Headers the server owns; a run() that sets them through an AMLResponse does not override them.
_SERVER_HEADERS = {
    b"x-request-id", b"x-ms-request-id", b"x-ms-client-request-id", b"traceid",
    b"x-ms-run-fn-exec-ms", b"x-ms-run-function-failed", b"content-length", b"transfer-encoding",
    COLLECTED_HEADER,  # fields run() collected, for data collection only
}
_TRUE, _FALSE = b"True", b"False"
WATCH_AFTER = 0.01  # seconds in the queue after which the connection is watched for a departure
DISCONNECTED = Rejected("client_disconnect", "The client disconnected while waiting for a scoring slot.", 0, 400)
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
SCORE_METHODS = frozenset({"GET", "POST", "OPTIONS"})
_ALLOWED = b"GET, POST, OPTIONS"
_POST_ONLY = frozenset({"POST"})
CONNECTION_CLOSE = (b"connection", b"close")  # the connection closes after a response that says so

# Swagger UI (/docs): our page and start script, and swagger-ui's own files as the swagger-ui-py
# package ships them, all from this server. The policy keeps the page from reaching anywhere else.
# Every URL is relative, so the page works behind a proxy that serves the service under a prefix.
_UI_PACKAGE, _UI_MODULE = "swagger-ui-py", "swagger_ui"
_UI_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "index.css": "text/css",
             "favicon-32x32.png": "image/png"}
_UI_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="docs/favicon-32x32.png?v={version}">
<link rel="stylesheet" href="docs/swagger-ui.css?v={version}">
<link rel="stylesheet" href="docs/index.css?v={version}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js?v={version}"></script>
<script src="docs/start.js"></script>
</body>
</html>
"""
# The OpenAPI 3.0 document, resolved against the page's own URL; no validator badge (it would call
# validator.swagger.io); no `?url=` in the page's address picks another document.
_UI_START = b"""window.ui = SwaggerUIBundle({
  url: "swagger.json?version=3",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  validatorUrl: null,
  queryConfigEnabled: false,
  deepLinking: true,
  displayRequestDuration: true,
});
"""
_UI_POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
              b"connect-src 'self'; base-uri 'none'; form-action 'none'")
_NO_CACHE = (b"cache-control", b"no-cache")


class BodyTooLarge(Exception):
    """The body is over `max_body_bytes` (declared or as it arrives)."""


class Routes:
    """The endpoints, bound to one server's state."""

    def __init__(self, state: "ServerState") -> None:
        self.state = state
        self.auth = AuthKeys(state.settings.auth_keys, state.settings.auth_key_file)
        self._metrics_auth = state.settings.metrics_auth and self.auth.enabled
        self._max_body = state.settings.max_body_bytes
        self._queue_wait = state.settings.max_queue_wait_ms / 1000.0
        self._scoring_timeout = state.settings.scoring_timeout_ms / 1000.0
        self._collector = state.collector
        self._ui_folder, self._ui_page = _swagger_ui(state.settings.service_name) or (None, None)

    async def healthy(self, request: Request) -> Response:
        """`/`, Azure's probe: 200 `Healthy` once ready (Azure's platform and users send traffic then),
        else 503 with the reason, as /health/ready."""
        reason = self.not_ready_reason()
        if reason is None:
            return BytesResponse(200, [(b"content-type", b"text/plain; charset=utf-8")], b"Healthy")
        return json_error(503, f"Not ready: {reason}.", [_retry_after(1)])

    async def live(self, request: Request) -> Response:
        return BytesResponse(200, [(b"content-type", b"application/json")], _LIVE)

    async def ready(self, request: Request) -> Response:
        reason = self.not_ready_reason()
        if reason is None:
            return BytesResponse(200, [(b"content-type", b"application/json")], _READY)
        body = orjson.dumps({"ready": False, "message": reason})
        return BytesResponse(503, [(b"content-type", b"application/json"), _retry_after(1)], body)

    def not_ready_reason(self) -> str | None:
        """None when the replica takes traffic (init() and the warm-up passed, a scoring slot can be
        had); else why not."""
        if self.state.ready and self.state.executor.ready:
            return None
        return self.state.not_ready_reason or self.state.executor.not_ready_reason

    async def metrics(self, request: Request) -> Response:
        if self._metrics_auth:
            header = request.headers.get("authorization", "").encode("latin-1")
            if not self.auth.authorized(header):
                return _unauthorized([])
        return BytesResponse(200, [(b"content-type", CONTENT_TYPE)], self.state.metrics.exposition())

    async def v2_server(self, request: Request) -> Response:
        """Open Inference Protocol server metadata."""
        return _json(200, {"name": "mlscore", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def v2_model(self, request: Request) -> Response:
        model = self._v2_model(request)
        if model is None:
            return self._v2_unknown(request)
        return _json(200, model_metadata(model.name, model.inputs, model.outputs))

    async def v2_model_ready(self, request: Request) -> Response:
        model = self._v2_model(request)
        if model is None:
            return self._v2_unknown(request)
        reason = self.not_ready_reason()
        if reason is None:
            return _json(200, {"name": model.name, "ready": True})
        return BytesResponse(503, [(b"content-type", b"application/json"), _retry_after(1)],
                             orjson.dumps({"name": model.name, "ready": False, "error": reason, "message": reason}))

    async def v2_unknown_model(self, request: Request) -> Response:
        return self._v2_unknown(request)

    def _v2_model(self, request: Request) -> OnnxPipeline | None:
        model = self.state.model
        name, version = request.path_params["name"], request.path_params.get("version", "1")
        if model is None or name != model.name or version != "1":
            return None
        return model

    def _v2_unknown(self, request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        asked = f"{name!r}" + (f" version {version!r}" if version else "")
        if self.state.model is None:
            message = (f"No model {asked}: this server runs an entry script on /score; the V2 model routes serve "
                       "a model given with --model.")
        else:
            message = f"No model {asked}: this server serves {self.state.model.name!r} (version '1')."
        return _json(404, {"error": message, "message": message})

    async def swagger(self, request: Request) -> Response:
        try:
            document = self.state.swagger.get(request.query_params.get("version"))
        except UnsupportedSwaggerVersion as error:
            return json_error(404, str(error))
        return BytesResponse(200, [(b"content-type", b"application/json")], document)

    async def docs(self, request: Request) -> Response:
        """Swagger UI on the OpenAPI 3.0 document: open, like /swagger.json (Try it out asks for the
        key where the route needs one)."""
        if self._ui_page is None:
            return _no_swagger_ui()
        headers = [(b"content-type", b"text/html; charset=utf-8"), _NO_CACHE, (b"content-security-policy", _UI_POLICY)]
        return BytesResponse(200, headers, self._ui_page)

    async def docs_redirect(self, request: Request) -> Response:
        # Relative, like the page's own URLs: /docs/ behind a prefix is the prefix's /docs.
        return RedirectResponse("../docs")

    async def docs_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name == "start.js":
            return BytesResponse(200, [(b"content-type", b"text/javascript; charset=utf-8"), _NO_CACHE], _UI_START)
        if self._ui_folder is None:
            return _no_swagger_ui()
        media_type = _UI_FILES.get(name)
        if media_type is None:
            return json_error(404, f"No file {name!r} in /docs.")
        # The page names the package's version in each file's URL, so an upgrade is fetched anew.
        return FileResponse(self._ui_folder / name, media_type=media_type,
                            headers={"cache-control": "public, max-age=604800"})

    async def score(self, scope: Scope, receive: Receive, route: str = "/score") -> Response:
        """/score for every method (and a served model's V2 infer route), answered without
        Starlette's routing and Request object. (The server itself takes most POSTs a shorter way,
        without ASGI: see `begin` and protocol.py.)"""
        picked = pick_headers(scope["headers"])
        checked = self.check(scope["method"], route, scope["headers"], picked)
        if isinstance(checked, Response):
            return checked
        headers, ids = checked
        try:
            body = await self._read_body(receive, picked.get(b"content-length"))
        except BodyTooLarge:
            # The connection closes: the rest of the body is not worth reading.
            return json_error(413, f"Request body is larger than the limit of {self._max_body} bytes.",
                              [*ids, CONNECTION_CLOSE])
        except ClientDisconnect:
            return json_error(400, "The client disconnected before sending the whole body.", ids)
        client = scope.get("client")
        begun = self.begin(asyncio.get_running_loop(), scope["method"], scope["path"], scope["query_string"], headers,
                           body, picked, ids, client[0] if client else "")
        if isinstance(begun, Response):
            return begun
        if begun.waiting:
            begun = await self._queued(begun, receive)
        else:
            await begun.answer
        return self.finish(begun, ids)

    def check(self, method: str, route: str, headers: list[tuple[bytes, bytes]], picked: dict[bytes, bytes]
              ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]] | Response:
        """What can be refused before the body is read (431, 405, 401); else the headers run() gets
        and the request ids the response carries."""
        try:
            ids = response_id_headers(picked)
        except RequestIdTooLong as error:
            return json_error(431, str(error), error.headers)
        allowed, allowed_text = (SCORE_METHODS, _ALLOWED) if route == "/score" else (_POST_ONLY, b"POST")
        if method not in allowed:
            message = METHOD_NOT_ALLOWED.format(method=method, path=route, allowed=allowed_text.decode())
            return json_error(405, message, [(b"allow", allowed_text), *ids])
        if self.auth.enabled:
            if not self.auth.authorized(picked.get(b"authorization", b"")):
                return _unauthorized(ids)
            headers = [item for item in headers if item[0] != b"authorization"]  # the key stays here, not in run()
        return headers, ids

    def begin(self, loop: asyncio.AbstractEventLoop, method: str, path: str, query: bytes,
              headers: list[tuple[bytes, bytes]], body: bytes, picked: dict[bytes, bytes],
              ids: list[tuple[bytes, bytes]], client: str = "") -> Ticket | Response:
        """A checked request with its whole body (`client`: the client's host): refused at once (not
        ready, a bad deadline header, a full queue), or its ticket, which holds a slot and is scoring,
        or is queued.
        Either way the ticket's answer completes by itself, on time; `finish` turns it into HTTP. A
        ticket still `waiting` is taken out of the queue by `client_left` if its client goes."""
        executor = self.state.executor
        if not executor.ready:
            self.state.metrics.rejected("not_ready")
            return json_error(503, f"Not ready: {executor.not_ready_reason}.", [_retry_after(1), *ids])
        try:
            budget = self._budget(picked.get(b"x-ms-request-timeout-ms"))
        except ValueError as error:
            return json_error(400, str(error), ids)
        raw = RawRequest(method, path, query, headers, body, request_id_of(ids), client)
        ticket = Ticket(raw, loop.time(), budget, loop.create_future())
        admission = self.state.admission
        slot = admission.try_acquire(ticket)
        if slot is not None:
            executor.submit(ticket, slot)
            return ticket
        full = admission.enqueue(ticket, min(budget, self._queue_wait))
        if full is not None:
            return self._refused(full, ids)
        return ticket

    def finish(self, ticket: Ticket, ids: list[tuple[bytes, bytes]]) -> Response:
        """A ticket's answer as HTTP, counted in the metrics (and recorded, with data collection)."""
        outcome: RawResponse | Rejected = ticket.answer.result()
        if isinstance(outcome, Rejected):
            return self._refused(outcome, ids)
        finished = ticket.loop.time()
        self.state.admission.record_hold(finished - ticket.started)
        queued = ticket.started - ticket.arrived
        metrics = self.state.metrics
        metrics.scored(finished - ticket.arrived, queued, outcome.run_ms)
        if outcome.failure:
            metrics.rejected(outcome.failure)
        if self._collector is not None:
            self._collector.record(ticket.request, outcome)
        return _http_response(outcome, ids, queued * 1000.0)

    def client_left(self, ticket: Ticket) -> None:
        """The client of a queued request closed its connection: the request leaves the queue, and
        run() is never called for it (one already scoring runs to its end)."""
        if self.state.admission.leave(ticket) and not ticket.answer.done():
            ticket.answer.set_result(DISCONNECTED)

    def _refused(self, rejected: Rejected, ids: list[tuple[bytes, bytes]]) -> Response:
        self.state.metrics.rejected(rejected.reason)
        extra = [_retry_after(rejected.retry_after)] if rejected.status == 503 else []
        return json_error(rejected.status, rejected.message, [*extra, *ids])

    def _budget(self, header: bytes | None) -> float:
        """Seconds this request may take in all: the client's x-ms-request-timeout-ms can only
        shorten the server's limits."""
        limit = self._queue_wait + self._scoring_timeout
        if header is None:
            return limit
        if not header.isdigit() or int(header) == 0:
            raise ValueError(f"x-ms-request-timeout-ms must be a positive integer of milliseconds, "
                             f"got {header.decode('latin-1')!r}.")
        return min(limit, int(header) / 1000.0)

    async def _queued(self, ticket: Ticket, receive: Receive) -> Ticket:
        """Wait in the queue, then for the answer. A request still queued after WATCH_AFTER seconds
        has its connection watched: a client that leaves is taken out of the queue, and run() is
        never called for it. (A watcher costs a task; most waits end well before WATCH_AFTER. It
        ends by itself once the response is sent, as receive() then reports a disconnect: it is
        never cancelled, since a cancelled task keeps a reference cycle for the garbage collector.)"""
        watch = ticket.loop.call_later(WATCH_AFTER, _watch, receive, self, ticket)
        try:
            await ticket.answer
        finally:
            watch.cancel()
            self.state.admission.leave(ticket)  # when this handler itself is cancelled while queued
        return ticket

    async def _read_body(self, receive: Receive, declared: bytes | None) -> bytes:
        """The whole body; refused from Content-Length alone when it declares more than the limit."""
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _http_response(result: RawResponse, ids: list[tuple[bytes, bytes]], queue_ms: float) -> Response:
    """The pipeline's response with the server's own headers: ids, run status and timing."""
    headers = [item for item in result.headers if item[0] not in _SERVER_HEADERS]
    headers.extend(ids)
    headers.append((b"x-ms-run-function-failed", _TRUE if result.run_failed else _FALSE))
    if result.run_ms is not None:
        headers.append((b"x-ms-run-fn-exec-ms", b"%.3f" % result.run_ms))
    timing = b"queue;dur=%.3f, run;dur=%.3f" % (queue_ms, result.run_ms or 0.0)
    if result.batch > 1:  # the requests that shared the model call
        timing += b', batch;desc="%d"' % result.batch
    headers.append((b"server-timing", timing))
    if isinstance(result.body, bytes):
        return BytesResponse(result.status, headers, result.body)
    streamed = StreamingResponse(result.body, status_code=result.status)
    streamed.raw_headers = headers
    return streamed


def _swagger_ui(service_name: str) -> tuple[Path, bytes] | None:
    """The folder of swagger-ui's files and the /docs page; None without the package."""
    spec = util.find_spec(_UI_MODULE)  # found, not imported: its own module needs jinja2 and yaml
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        version = metadata.version(_UI_PACKAGE)
    except metadata.PackageNotFoundError:  # a module of that name from elsewhere
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    page = _UI_PAGE.format(title=html.escape(f"{service_name} - Swagger UI"), version=version)
    return folder, page.encode()


def _no_swagger_ui() -> Response:
    return json_error(404, f"Swagger UI needs the {_UI_PACKAGE} package, one of mlscore's dependencies: "
                      f"pip install {_UI_PACKAGE}.")


def _json(status: int, document: dict[str, object]) -> BytesResponse:
    return BytesResponse(status, [(b"content-type", b"application/json")], orjson.dumps(document))


def _unauthorized(ids: list[tuple[bytes, bytes]]) -> BytesResponse:
    # The message never repeats what was presented.
    return json_error(401, "Missing or invalid key: send the header 'Authorization: Bearer <key>'.",
                      [(b"www-authenticate", b"Bearer"), *ids])


def _retry_after(seconds: int) -> tuple[bytes, bytes]:
    return (b"retry-after", str(seconds).encode())


def _watch(receive: Receive, routes: Routes, ticket: Ticket) -> None:
    asyncio.ensure_future(_left_queue(receive, routes, ticket))


async def _left_queue(receive: Receive, routes: Routes, ticket: Ticket) -> None:
    """Waits until the client closes the connection or the response has been sent (the body has
    been read already, so receive() has nothing else to report); if the request is still queued
    then, its client left."""
    while (await receive())["type"] != "http.disconnect":
        pass
    routes.client_left(ticket)
