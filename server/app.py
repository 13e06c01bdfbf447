"""Wiring: the Starlette application for one loaded entry script."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.swagger import SwaggerDocuments
from mlscore.server.errors import http_exception, unhandled_exception
from mlscore.server.routes import Routes
from mlscore.server.settings import Settings

Scorer = Callable[[RawRequest], Awaitable[RawResponse]]


@dataclass(slots=True)
class ServerState:
    """What the routes need: the settings, how to score, the Swagger documents and readiness."""

    settings: Settings
    score: Scorer
    swagger: SwaggerDocuments
    ready: bool = False
    not_ready_reason: str = "starting"


def create_app(state: ServerState) -> Starlette:
    routes = Routes(state)
    health = ["GET", "HEAD"]
    table = [
        Route("/", routes.healthy, methods=health),
        Route("/health/live", routes.live, methods=health),
        Route("/health/ready", routes.ready, methods=health),
        Route("/v2/health/live", routes.live, methods=health),
        Route("/v2/health/ready", routes.ready, methods=health),
        Route("/score", routes.score, methods=["GET", "POST", "OPTIONS", "HEAD"]),
        Route("/swagger.json", routes.swagger, methods=["GET"]),
    ]
    middleware = []
    if state.settings.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware,
            allow_origins=list(state.settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "x-ms-request-id", "x-ms-run-fn-exec-ms", "x-ms-run-function-failed"],
        ))
    return Starlette(
        routes=table,
        middleware=middleware,
        exception_handlers={HTTPException: http_exception, Exception: unhandled_exception},
    )
