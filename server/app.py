"""Wiring: the Starlette application for one loaded entry script."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlscore.scoring.swagger import SwaggerDocuments
from mlscore.server.admission import AdmissionQueue, Slot, Ticket
from mlscore.server.busy_poll import BusyPoll
from mlscore.scoring.onnx_model import OnnxPipeline
from mlscore.server.data_collection import DataCollector
from mlscore.server.errors import INTERNAL_ERROR, http_exception, json_error, unhandled_exception, v2_error_body
from mlscore.server.logs import AccessLog
from mlscore.server.metrics import Metrics
from mlscore.server.protocol import DirectRequest
from mlscore.server.routes import CONNECTION_CLOSE, Routes
from mlscore.server.settings import Settings

logger = logging.getLogger("mlscore.server")

class Executor(Protocol):
    """Runs the scoring pipeline off the event loop (see executors.py)."""

    name: str

    @property
    def ready(self) -> bool: ...

    @property
    def not_ready_reason(self) -> str: ...

    async def start(self) -> None: ...

    def submit(self, ticket: Ticket, slot: Slot) -> None:
        """Start scoring a ticket that has its slot, without awaiting: the ticket's answer gets the
        response (a 504 after the scoring timeout), and the slot is released when the executor
        can take another request."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class ServerState:
    """What the routes need: the settings, admission, the executor, Swagger and readiness."""

    settings: Settings
    admission: AdmissionQueue
    executor: Executor
    swagger: SwaggerDocuments
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False  # init() and the warm-up passed
    draining: bool = False  # stopping: every response closes its connection, so clients move elsewhere
    not_ready_reason: str = "starting"
    model: OnnxPipeline | None = None  # the model served without a script (--model), for the V2 routes
    collector: DataCollector | None = None  # model data collection (--collect-data)
    busy_poll: BusyPoll = field(default_factory=BusyPoll)  # the front's reads keep it going, once started


def _health_routes(routes: Routes) -> list[Route]:
    return [Route(path, getattr(routes, answer), methods=["GET", "HEAD"]) for path, answer in HEALTH_ROUTES.items()]


def create_health_app(state: ServerState) -> ASGIApp:
    """The app of the health listener (`--health-port`, azmlinfsrv's SEPERATE_HEALTH_ENDPOINT): the
    health routes of the same server, answered by the event loop, and nothing else."""
    return Starlette(routes=_health_routes(Routes(state)),
                     exception_handlers={HTTPException: _health_port_only, Exception: unhandled_exception})


async def _health_port_only(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code != 404:
        return await http_exception(request, error)
    return json_error(404, f"{request.url.path} is not on the health port, which answers only {', '.join(HEALTH_ROUTES)}: "
                      "score on the service's port.")


def create_app(state: ServerState) -> ASGIApp:
    routes = Routes(state)
    health = ["GET", "HEAD"]
    table = [
        *_health_routes(routes),
        Route("/swagger.json", routes.swagger, methods=["GET"]),
        Route("/docs", routes.docs, methods=health),
        Route("/docs/", routes.docs_redirect, methods=health),
        Route("/docs/{name}", routes.docs_file, methods=health),
        Route("/metrics", routes.metrics, methods=["GET"]),
        Route("/v2", routes.v2_server, methods=health),
        Route("/v2/models/{name}", routes.v2_model, methods=health),
        Route("/v2/models/{name}/versions/{version}", routes.v2_model, methods=health),
        Route("/v2/models/{name}/ready", routes.v2_model_ready, methods=health),
        Route("/v2/models/{name}/versions/{version}/ready", routes.v2_model_ready, methods=health),
        Route("/v2/models/{name}/infer", routes.v2_unknown_model, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", routes.v2_unknown_model, methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.executor.start()
        if state.collector is not None:
            state.collector.start()
        key_file_watch = asyncio.ensure_future(routes.auth.watch())
        yield
        key_file_watch.cancel()
        await state.executor.close()
        if state.collector is not None:  # after every accepted request was answered: its record is queued
            await asyncio.get_running_loop().run_in_executor(None, state.collector.close)

    state.metrics.watch(state)
    infer_path = state.model.infer_path if state.model is not None else None
    app: ASGIApp = ScoreFirst(routes, state.metrics, Starlette(
        routes=table,
        exception_handlers={HTTPException: http_exception, Exception: unhandled_exception},
        lifespan=lifespan,
    ), infer_path, AccessLog() if state.settings.access_log else None)
    if state.settings.cors_origins:
        app = CORSMiddleware(
            app,
            allow_origins=list(state.settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "x-ms-request-id", "x-ms-run-fn-exec-ms", "x-ms-run-function-failed"],
        )
    return app


class ScoreFirst:
    """Answers /score itself and hands every other request to the Starlette app, counting both. It
    is also the connection's DirectHandler (protocol.py): most scoring POSTs reach it through
    `direct`, without ASGI."""

    def __init__(self, routes: Routes, metrics: Metrics, other: ASGIApp, infer_path: str | None,
                 access: AccessLog | None = None) -> None:
        self._routes = routes
        self._metrics = metrics
        self._other = other
        self._infer_path = infer_path  # POST /v2/models/NAME/infer when a model is served
        self._access = access
        self.paths = frozenset(path.encode() for path in ("/score", infer_path) if path)
        self.max_body = routes.state.settings.max_body_bytes
        self.cross_origin = bool(routes.state.settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._other(scope, receive, send)
            return
        started = time.perf_counter() if self._access is not None else 0.0
        route = scope["path"]
        if route != "/score" and route != self._infer_path:
            await self._other(scope, receive, self._counting(scope, send, started))
            return
        try:
            response = await self._routes.score(scope, receive, route)
        except asyncio.CancelledError:
            # The graceful shutdown's grace period ran out with this request still open: it gets a
            # JSON 503, and the task ends quietly (the cancellation has done its work).
            self._metrics.request(route, 503)
            with contextlib.suppress(Exception):
                await _stopped()(scope, receive, send)
            return
        except Exception:
            logger.exception("unhandled error answering %s %s", scope["method"], route)
            response = json_error(500, INTERNAL_ERROR)
        response = self._counted(route, response)
        await response(scope, receive, send)
        if self._access is not None:
            self._access.request(scope, route, response.status_code, response.raw_headers, started)

    def direct(self, request: DirectRequest) -> None:
        """A scoring POST with its body, from the connection itself: answered at once when it is
        refused, else from the ticket's done callback (no task is made for it)."""
        started = time.perf_counter() if self._access is not None else 0.0
        routes = self._routes
        try:
            picked = request.picked
            checked = routes.check(request.method, request.path, request.headers, picked)
            if isinstance(checked, tuple):
                headers, ids = checked
                client = request.client
                begun = routes.begin(request.loop, request.method, request.path, request.query, headers,
                                     request.body, picked, ids, client[0] if client else "")
                if isinstance(begun, Ticket):
                    if begun.waiting:
                        request.on_disconnect = functools.partial(routes.client_left, begun)
                    begun.answer.add_done_callback(
                        functools.partial(self._scored, request, begun, ids, started))
                    return
                checked = begun
        except Exception:
            logger.exception("unhandled error answering POST %s", request.path)
            checked = json_error(500, INTERNAL_ERROR)
        self._answer(request, checked, started)

    def _scored(self, request: DirectRequest, ticket: Ticket, ids: list[tuple[bytes, bytes]], started: float,
                answer: asyncio.Future[object]) -> None:
        request.on_disconnect = None
        try:
            response = self._routes.finish(ticket, ids)
        except Exception:
            logger.exception("unhandled error answering POST %s", request.path)
            response = json_error(500, INTERNAL_ERROR)
        self._answer(request, response, started)

    def _answer(self, request: DirectRequest, response: Response, started: float) -> None:
        response = self._counted(request.path, response)
        request.respond(response)
        if self._access is not None:
            self._access.request({"method": request.method, "client": request.client}, request.path,
                                 response.status_code, response.raw_headers, started)

    def cut_off(self, request: DirectRequest) -> None:
        """The shutdown's grace period ran out with this request open (queued, or its run() still going)."""
        self._metrics.request(request.path, 503)
        request.respond(_stopped())

    def _counted(self, route: str, response: Response) -> Response:
        """A scoring response counted in the metrics, in the V2 error shape on the infer route, and
        closing its connection while the server drains."""
        self._metrics.request(route, response.status_code)
        if route == self._infer_path and response.status_code >= 400:
            response = v2_error_body(response)
        if self._routes.state.draining:
            response.raw_headers.append(CONNECTION_CLOSE)
        return response

    def _counting(self, scope: Scope, send: Send, started: float) -> Send:
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        access = self._access if path not in QUIET_ROUTES else None

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._metrics.request(route, message["status"])
                if access is not None:
                    access.request(scope, path, message["status"], message.get("headers", []), started)
                if self._routes.state.draining:
                    message = {**message, "headers": [*message.get("headers", ()), CONNECTION_CLOSE]}
            await send(message)

        return counted


def _stopped() -> Response:
    return json_error(503, "The server stopped before this request was answered (its shutdown grace period "
                      "ran out).", [(b"retry-after", b"1")])


# The health routes (on the main port and the health port), with the Routes method that answers each.
HEALTH_ROUTES = {"/": "healthy", "/health/live": "live", "/health/ready": "ready", "/v2/health/live": "live",
                 "/v2/health/ready": "ready"}
# Probes and scrapes: counted in the metrics, but left out of the access log, where they would be most lines.
QUIET_ROUTES = frozenset({*HEALTH_ROUTES, "/metrics"})
KNOWN_ROUTES = frozenset({*HEALTH_ROUTES, "/swagger.json", "/docs", "/metrics", "/v2"})
