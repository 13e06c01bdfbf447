"""A server's life in three steps: start (settings, port, script, init, warm-up), serve, shut down."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import uvicorn

from mlscore.scoring.entry_script import EntryScriptError, load_entry_script, resolve_script_path
from mlscore.scoring.model_path import MODEL_DIR_ENV
from mlscore.scoring.pipeline import ScoringPipeline
from mlscore.scoring.swagger import SwaggerDocuments
from mlscore.server.admission import AdmissionQueue
from mlscore.server.app import ServerState, create_app
from mlscore.server.executors import InlineExecutor, ThreadExecutor
from mlscore.server.supervisor import ProcessExecutor
from mlscore.server.settings import Settings, log_level_number

logger = logging.getLogger("mlscore.server")

EXIT_STARTUP_FAILED = 3  # Azure's scoring server exits 3 when the entry script cannot start
EXIT_BAD_SETTINGS = 2
EXIT_PORT_UNAVAILABLE = 1


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class Started:
    state: ServerState
    sock: socket.socket


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=log_level_number(level),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def bind(host: str, port: int) -> socket.socket:
    """Take the port before the (possibly slow) init(), so a busy port fails at once; the socket
    listens only once the app serves, so nothing connects to a server that cannot answer yet."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}", EXIT_PORT_UNAVAILABLE) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        reason = "address already in use" if error.errno == 98 else error.strerror
        raise StartupError(f"cannot listen on {host}:{port}: {reason}", EXIT_PORT_UNAVAILABLE) from None
    sock.set_inheritable(True)
    return sock


def start(settings: Settings) -> Started:
    """Everything before serving; raises StartupError or EntryScriptError."""
    if settings.entry_script is None:
        raise StartupError(
            "no entry script: pass --entry-script PATH or set AZUREML_ENTRY_SCRIPT", EXIT_BAD_SETTINGS
        )
    sock = bind(settings.host, settings.port)
    try:
        state = build_state(settings)
    except BaseException:
        sock.close()
        raise
    return Started(state, sock)


def build_state(settings: Settings) -> ServerState:
    """Load the entry script, start the executor (init() and the warm-up run where the executor
    scores), build Swagger: a state ready to serve."""
    if settings.model_dir is not None:
        os.environ[MODEL_DIR_ENV] = str(settings.model_dir.resolve())
    pipeline = load_script(settings)
    try:
        swagger = SwaggerDocuments.build(
            pipeline.run, app_root=settings.app_root, service_name=settings.service_name,
            service_version=settings.service_version, path_prefix=settings.path_prefix,
        )
    except ValueError as error:  # a user-supplied swagger file that is not JSON
        raise StartupError(str(error), EXIT_STARTUP_FAILED) from error
    admission = AdmissionQueue(settings.max_concurrent_requests, settings.max_queue_size, settings.max_queue_wait_ms)
    init_started = time.monotonic()
    if settings.executor == "processes":
        executor: ProcessExecutor | ThreadExecutor = ProcessExecutor.launch(settings, admission)
        state = ServerState(settings=settings, admission=admission, executor=executor, swagger=swagger)
        _report_warm_up(state, executor.warm_up_error)
        state.metrics.init_seconds.set(time.monotonic() - init_started)
        return state
    logger.info("running init()")
    pipeline.script.call_init()
    executor: ThreadExecutor | InlineExecutor = (
        ThreadExecutor(pipeline, settings.max_concurrent_requests, settings.scoring_timeout_ms)
        if settings.executor == "threads" else InlineExecutor(pipeline)
    )
    admission.bind(executor.submit)
    state = ServerState(settings=settings, admission=admission, executor=executor, swagger=swagger)
    _report_warm_up(state, warm_up(pipeline))
    state.metrics.init_seconds.set(time.monotonic() - init_started)
    return state


def serve(started: Started) -> None:
    settings = started.state.settings
    config = uvicorn.Config(
        create_app(started.state),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level_number(settings.log_level),
        log_config=None,
        timeout_keep_alive=75,  # longer than common load balancers' idle timeouts
        server_header=False,
    )
    server = uvicorn.Server(config)
    host, port = started.sock.getsockname()[:2]
    readiness = "ready" if started.state.ready else f"not ready: {started.state.not_ready_reason}"
    logger.info("serving %s on http://%s:%d (%s; executor %s)", settings.entry_script, host, port, readiness,
                started.state.executor.name)
    # uvicorn re-raises the signal that stopped it once it has shut down; a handler of ours in place
    # of the default makes that a no-op, so a graceful stop ends with exit status 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped_gracefully)
    server.run(sockets=[started.sock])
    logger.info("stopped")


def _stopped_gracefully(signum: int, frame: object) -> None:
    """Called when uvicorn re-raises the stop signal after its graceful shutdown."""


def run(settings: Settings) -> int:
    configure_logging(settings.log_level)
    logger.info("settings: %s", settings.redacted())
    try:
        started = start(settings)
    except StartupError as error:
        logger.error("cannot start: %s", error)
        return error.exit_code
    except EntryScriptError as error:
        logger.error("cannot start: %s", error, exc_info=error.__cause__ or error)
        return EXIT_STARTUP_FAILED
    serve(started)
    return 0


def load_script(settings: Settings) -> ScoringPipeline:
    """The entry script imported and its input mode decided; init() not run yet."""
    assert settings.entry_script is not None
    path = resolve_script_path(settings.entry_script, settings.app_root)
    source_directory = settings.source_directory
    if source_directory is not None and not source_directory.is_absolute():
        source_directory = settings.app_root / source_directory
    pipeline = ScoringPipeline(load_entry_script(path, source_directory))
    logger.info("entry script %s loaded (input mode: %s)", path, pipeline.mode.name)
    return pipeline


def load_pipeline(settings: Settings) -> ScoringPipeline:
    """The entry script loaded and its init() run: what a scoring worker serves with."""
    pipeline = load_script(settings)
    pipeline.script.call_init()
    return pipeline


def warm_up(pipeline: ScoringPipeline) -> str:
    """One run() with the input sample; the error as text, or "" when it passed (or has no sample)."""
    try:
        pipeline.warm_up()
    except Exception as error:
        logger.exception("warm-up run() with the input sample failed")
        return f"warm-up run() with the input sample failed: {type(error).__name__}: {error}"
    return ""


def _report_warm_up(state: ServerState, error: str) -> None:
    """Readiness waits for a passed warm-up; a failed one keeps the replica unready, with the reason."""
    state.ready = not error
    state.not_ready_reason = error
    if not error:
        logger.info("init() and warm-up done")
