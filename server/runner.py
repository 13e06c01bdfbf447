"""A server's life in three steps: start (settings, port, script, Swagger), serve (init() and the
warm-up run while health answers), shut down (what was accepted is finished within a grace period)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import uvicorn

from mlscore.scoring import json_limits
from mlscore.scoring import collect
from mlscore.scoring.entry_script import EntryScriptError, load_entry_script, resolve_script_path
from mlscore.scoring.model_path import MODEL_DIR_ENV
from mlscore.accelerators import DEVICE_ENV, OPENCL_BINARY_ENV, OPENCL_DEVICE_ENV
from mlscore.accelerators.onnx_runtime import CPU_THREADS_ENV, default_threads
from mlscore.scoring.onnx_model import OnnxPipeline, signature_schema
from mlscore.scoring.input_modes import UncallableMode
from mlscore.scoring.pipeline import ScoringPipeline
from mlscore.scoring.kserve_v2 import model_metadata
from mlscore.scoring.swagger import SwaggerDocuments
from mlscore.server.admission import AdmissionQueue, Slot, Ticket
from mlscore.server.app import HEALTH_ROUTES, Executor, ScoreFirst, ServerState, create_app, create_health_app
from mlscore.server.executors import Batcher, InlineExecutor, ThreadExecutor
from mlscore.server import logs
from mlscore.server.data_collection import DataCollectionError, DataCollector
from mlscore.server.protocol import DirectRequest, fallback_limits, protocol_class
from mlscore.server.supervisor import ProcessExecutor
from mlscore.server.settings import Settings, log_level_number

logger = logging.getLogger("mlscore.server")

EXIT_STARTUP_FAILED = 3  # Azure's scoring server exits 3 when the entry script cannot start
EXIT_BAD_SETTINGS = 2
EXIT_PORT_UNAVAILABLE = 1
STARTING = "init() and the warm-up run() have not finished yet"
APP_ROOT_ENV, ENTRY_SCRIPT_ENV = "AML_APP_ROOT", "AZUREML_ENTRY_SCRIPT"
Pipeline = ScoringPipeline | OnnxPipeline
T = TypeVar("T")


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class Started:
    """A server about to listen: its state (the executor a stand-in until init() ran), the bound
    socket and the loaded script."""

    state: ServerState
    sockets: list[socket.socket]
    pipeline: Pipeline
    health_sockets: list[socket.socket] = field(default_factory=list)  # the health listener's (--health-port)


def configure_logging(level: str, log_format: str = "text") -> None:
    logs.configure(log_level_number(level), log_format)


def bind(host: str, port: int) -> socket.socket:
    """Take the port before loading the script, so a busy port fails at once."""
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
    """Everything before listening: the port, the script imported, Swagger; raises StartupError or
    EntryScriptError. init() and the warm-up run once the server listens (see `Server`)."""
    if settings.entry_script is None and settings.model is None:
        raise StartupError("nothing to serve: pass --entry-script PATH (or set AZUREML_ENTRY_SCRIPT), or "
                           "--model MODEL.onnx", EXIT_BAD_SETTINGS)
    sockets = inherited(settings.listen_fds) if settings.listen_fds else [bind(settings.host, settings.port)]
    health: list[socket.socket] = []
    try:
        health.extend(inherited(settings.health_fds, "--health-fd"))
        if settings.health_port is not None:
            health.append(bind(settings.host, settings.health_port))
        state, pipeline = prepare_state(settings)
    except BaseException:
        for sock in (*sockets, *health):
            sock.close()
        raise
    return Started(state, sockets, pipeline, health)


def inherited(fds: tuple[int, ...], flag: str = "--fd") -> list[socket.socket]:
    """Listening sockets handed down by the process that started this one (`--fd`, `--health-fd`): a
    process that owns the port across restarts, so an old and a new server can share it while they
    overlap."""
    sockets = []
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as error:
            raise StartupError(f"{flag} {fd}: not an open socket ({error.strerror})", EXIT_BAD_SETTINGS) from None
        if sock.type != socket.SOCK_STREAM or not listening:
            sock.detach()
            raise StartupError(f"{flag} {fd}: not a listening TCP or Unix socket", EXIT_BAD_SETTINGS)
        sockets.append(sock)
    return sockets


def build_state(settings: Settings) -> ServerState:
    """A state ready to serve, in one blocking call (init() and the warm-up done): for in-process use.
    The executor starts with the app's lifespan."""
    state, pipeline = prepare_state(settings)
    init_started = time.monotonic()
    executor, warm_up_error = launch_executor(state, pipeline)
    use_executor(state, executor, warm_up_error, time.monotonic() - init_started)
    return state


def prepare_state(settings: Settings) -> tuple[ServerState, Pipeline]:
    """The script imported and Swagger built; the state's executor is a stand-in that is not ready,
    and the pipeline's init() has not run."""
    export_script_environment(settings)
    export_device_settings(settings)
    collector = open_collector(settings)  # before the script: a folder that cannot be written fails at once
    pipeline = load_script(settings)
    if isinstance(pipeline, ScoringPipeline) and isinstance(pipeline.mode, UncallableMode):
        logger.warning("entry script %s: %s. Serving it anyway, as Azure does: every request is answered 500.",
                       pipeline.script.path, pipeline.mode.message)
    try:
        swagger = build_swagger(settings, pipeline)
    except ValueError as error:  # a user-supplied swagger file that is not JSON
        raise StartupError(str(error), EXIT_STARTUP_FAILED) from error
    admission = AdmissionQueue(settings.max_concurrent_requests, settings.max_queue_size, settings.max_queue_wait_ms)
    state = ServerState(settings=settings, admission=admission, executor=NotStarted(settings.executor),
                        swagger=swagger, not_ready_reason=STARTING,
                        model=pipeline if isinstance(pipeline, OnnxPipeline) else None, collector=collector)
    return state, pipeline


def open_collector(settings: Settings) -> DataCollector | None:
    """The model data collector --collect-data asks for, its folder made; StartupError when that
    folder cannot be written to."""
    if settings.collect_data is None:
        return None
    try:
        collector = DataCollector.open(settings.collect_data, settings.collect_rotate_bytes,
                                       settings.collect_rotate_seconds, settings.collect_buffer,
                                       settings.service_name, settings.model_name)
    except DataCollectionError as error:
        raise StartupError(f"{settings.sources['collect_data']}: {error}", EXIT_BAD_SETTINGS) from None
    collect.enable()  # with threads and inline, run()'s collect() calls are made in this process
    logger.info("data collection: inputs and outputs of scored requests go to %s", collector.folder)
    return collector


def export_script_environment(settings: Settings) -> None:
    """Azure's variables, where the script reads them (`os.environ["AML_APP_ROOT"]` to find its files),
    in this process and the workers it spawns: the app root and the entry script always, as absolute
    paths, and the model folder when one is given."""
    os.environ[APP_ROOT_ENV] = str(settings.app_root.resolve())
    if settings.entry_script is not None:
        os.environ[ENTRY_SCRIPT_ENV] = str(resolve_script_path(settings.entry_script, settings.app_root))
    if settings.model_dir is not None:
        os.environ[MODEL_DIR_ENV] = str(settings.model_dir.resolve())


def export_device_settings(settings: Settings) -> None:
    """The device settings, where accelerators.load() reads them, in this process and the workers
    it spawns: entry scripts call load() without naming a device."""
    if settings.device != "auto" or DEVICE_ENV in os.environ:
        os.environ[DEVICE_ENV] = settings.device
    if settings.opencl_binary is not None:
        os.environ[OPENCL_BINARY_ENV] = str(settings.opencl_binary.resolve())
    if settings.opencl_device is not None:
        os.environ[OPENCL_DEVICE_ENV] = settings.opencl_device
    threads = settings.cpu_threads
    if not threads and settings.executor == "processes" and settings.workers > 1:
        # Each worker has its own session: together they should not ask for more cores than there are.
        threads = max(1, default_threads() // settings.workers)
    if threads:
        os.environ[CPU_THREADS_ENV] = str(threads)


def build_swagger(settings: Settings, pipeline: Pipeline) -> SwaggerDocuments:
    names = {"app_root": settings.app_root, "service_name": settings.service_name,
             "service_version": settings.service_version, "path_prefix": settings.path_prefix}
    if isinstance(pipeline, OnnxPipeline):
        # Beside Azure's three routes, the V2 routes the app answers for the model.
        return SwaggerDocuments.from_schemas(
            signature_schema(pipeline.inputs, f"The inputs of model {pipeline.name}, by name."),
            signature_schema(pipeline.outputs, f"The outputs of model {pipeline.name}, by name."), **names,
        ).with_model(model_metadata(pipeline.name, pipeline.inputs, pipeline.outputs))
    return SwaggerDocuments.build(pipeline.run, **names)


def launch_executor(state: ServerState, pipeline: Pipeline) -> tuple[Executor, str]:
    """init() and the warm-up run where the executor scores (blocking): the executor, not started
    yet, and the warm-up's error ("" when it passed). Raises EntryScriptError when init() fails."""
    settings = state.settings
    if settings.executor == "processes":
        workers = ProcessExecutor.launch(settings, state.admission)
        return workers, workers.warm_up_error
    logger.info("running init()")
    pipeline.call_init()
    batcher = (Batcher(state.admission, settings.max_batch_size, settings.max_batch_delay_ms)
               if settings.max_batch_size > 1 and pipeline.batches else None)
    executor: ThreadExecutor | InlineExecutor = (
        ThreadExecutor(pipeline, settings.max_concurrent_requests, settings.scoring_timeout_ms, batcher)
        if settings.executor == "threads" else InlineExecutor(pipeline, batcher)
    )
    state.admission.bind(executor.submit)
    return executor, warm_up(pipeline)


DEFAULT_BUSY_POLL = 0.001  # seconds


def use_executor(state: ServerState, executor: Executor, warm_up_error: str, init_seconds: float) -> None:
    """Put the launched executor in place of the stand-in; readiness follows the warm-up."""
    state.executor = executor
    state.metrics.init_seconds.set(init_seconds)
    batcher = executor if isinstance(executor, ProcessExecutor) else getattr(executor, "batcher", None)
    if batcher is not None:
        batcher.on_batch, batcher.on_batch_wait = state.metrics.batched, state.metrics.batch_waited
    if isinstance(executor, ProcessExecutor):
        executor.busy_poll = state.busy_poll
        window = busy_poll_window(state.settings)
        if window:
            state.busy_poll.start(asyncio.get_running_loop(), window)
    _report_warm_up(state, warm_up_error)


def busy_poll_window(settings: Settings) -> float:
    """Seconds the front polls after a read (server/busy_poll.py): --busy-poll-us, or by default 1 ms
    with the processes executor where the front has a core to spare (more usable cores than scoring
    processes), else 0: no polling. (With the other executors Settings leaves --busy-poll-us unset.)"""
    if settings.busy_poll_us is not None:
        return settings.busy_poll_us / 1e6
    spare = default_threads() > settings.workers
    return DEFAULT_BUSY_POLL if settings.executor == "processes" and spare else 0.0


class NotStarted:
    """The executor's stand-in while init() and the warm-up run: never ready, so /score answers 503
    with Retry-After (routes check `ready` before submitting) and /health/ready says why."""

    ready = False
    not_ready_reason = STARTING

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        """Nothing to start: `Server` launches the real executor once the server listens."""

    def submit(self, ticket: Ticket, slot: Slot) -> None:
        raise RuntimeError("no executor yet: a request was submitted before init() finished")

    async def close(self) -> None:
        """Nothing to stop: init() still running is abandoned with the process."""


HEALTH_MAX_CONNECTIONS = 64  # the health listener's own bound: probes, not clients
DRAIN_SECONDS = 1.0  # how long a stop keeps answering on open connections before closing idle ones


class Server(uvicorn.Server):
    """uvicorn's server with the two ends of our life: once it listens, init() and the warm-up run in
    the background (health answers meanwhile; ready is 503 until they pass); on a stop, it logs how
    the graceful shutdown went. uvicorn's own shutdown stops accepting, closes idle connections,
    waits up to the grace period for every request task (queued ones too: their handlers are
    running), cancels what is left, and only then runs the lifespan's shutdown, which closes the
    executor."""

    def __init__(self, config: uvicorn.Config, started: Started) -> None:
        super().__init__(config)
        self.exit_code = 0
        self.cut_off = 0  # requests still open when the grace period ran out
        self._launch = started
        self._scoring_start: asyncio.Future[None] | None = None
        self._health_servers: list[asyncio.base_events.Server] = []
        self._health_connections = uvicorn.server.ServerState()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        settings = self._launch.state.settings
        # --accept-after-init: the scoring sockets wait for _start_scoring (the shutdown still closes them).
        await super().startup(sockets=[] if settings.accept_after_init else sockets)
        scheme = "https" if settings.ssl_cert else "http"
        where = ", ".join(_address(sock, scheme) for sock in self._launch.sockets)
        if settings.accept_after_init:
            logger.info("running init() and the warm-up; %s accepts connections once they are done", where)
        else:
            logger.info("listening on %s; running init() and the warm-up (/health/ready is 503 until they pass)",
                        where)
        if self._launch.health_sockets:
            await self._serve_health()
            logger.info("health routes (/, /health/live, /health/ready) also on %s",
                        ", ".join(_address(sock, scheme) for sock in self._launch.health_sockets))
        self._scoring_start = asyncio.ensure_future(self._start_scoring(where))

    async def _serve_health(self) -> None:
        """The health listener: the health routes on a socket of their own, with connections counted
        apart, so that neither scoring nor a full connection table on the main port keeps a probe
        from its answer."""
        settings = self._launch.state.settings
        http = protocol_class(settings, HEALTH_MAX_CONNECTIONS, HEALTH_ROUTES)
        config = uvicorn.Config(
            create_health_app(self._launch.state), lifespan="off", access_log=False, log_config=None,
            http=http, **fallback_limits(http, HEALTH_MAX_CONNECTIONS),
            timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]
            ssl_certfile=settings.ssl_cert, ssl_keyfile=settings.ssl_key,
            ssl_keyfile_password=settings.ssl_key_password, server_header=False,
        )
        config.load()
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=self._health_connections,  # type: ignore[call-arg]
                                              app_state={}, _loop=loop)

        for sock in self._launch.health_sockets:
            self._health_servers.append(await loop.create_server(connection, sock=sock, ssl=config.ssl,
                                                                 backlog=config.backlog))

    async def _accept(self, sockets: list[socket.socket]) -> None:
        """Start accepting on the scoring sockets, as uvicorn's startup would have."""
        config = self.config
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=self.server_state,  # type: ignore[call-arg]
                                              app_state=self.lifespan.state, _loop=loop)

        for sock in sockets:
            self.servers.append(await loop.create_server(connection, sock=sock, ssl=config.ssl, backlog=config.backlog))

    def _close_health(self) -> None:
        for server in self._health_servers:
            server.close()
        for connection in list(self._health_connections.connections):
            connection.shutdown()

    async def _start_scoring(self, where: str) -> None:
        state = self._launch.state
        init_started = time.monotonic()
        try:
            executor, warm_up_error = await _in_daemon_thread(launch_executor, state, self._launch.pipeline)
            await executor.start()
        except Exception as error:
            self.exit_code = _cannot_start(error, state.settings)
            self.should_exit = True
            return
        use_executor(state, executor, warm_up_error, time.monotonic() - init_started)
        if state.settings.accept_after_init and not self.should_exit:
            await self._accept(self._launch.sockets)
        gc.freeze()  # see worker_main: what start-up made is left out of later full collections
        readiness = "ready" if state.ready else f"not ready: {state.not_ready_reason}"
        polling = f", busy polling up to {state.busy_poll.window * 1e6:g} us" if state.busy_poll.window else ""
        logger.info("serving %s on %s (%s; executor %s%s)", state.settings.entry_script or state.settings.model,
                    where, readiness, executor.name, polling)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.exit_code:  # init() failed: nothing was accepted, and the reason is logged already
            self._close_health()
            await super().shutdown(sockets=sockets)
            return
        admission = self._launch.state.admission
        logger.info("stopping: finishing %d in-flight request(s) (%d scoring, %d queued), grace period %g s",
                    self._open_requests(), admission.in_use, admission.queued,
                    self.config.timeout_graceful_shutdown)
        drain_started = time.monotonic()
        await self._drain(sockets)
        if self.config.timeout_graceful_shutdown is not None:
            # The drain is part of the grace period, not added in front of it: the whole stop fits.
            left = self.config.timeout_graceful_shutdown - (time.monotonic() - drain_started)
            self.config.timeout_graceful_shutdown = max(0.001, left)  # type: ignore[assignment]  # any number works
        await super().shutdown(sockets=sockets)
        self._close_health()  # probes are answered ("stopping") until the scoring side is done
        if self.cut_off:
            logger.warning("stopped: the grace period ran out; %d request(s) were cut off", self.cut_off)
        else:
            logger.info("stopped: every accepted request was answered")

    async def _drain(self, sockets: list[socket.socket] | None) -> None:
        """Stop accepting, then keep answering on open connections for a moment, each response
        closing its connection, before uvicorn closes the idle ones. A client in the middle of
        sending its next request on a kept-alive connection would otherwise see it reset; this way
        it is answered and reconnects, to a server that still listens (a replacement sharing the
        port, another replica)."""
        for server in self.servers:
            server.close()
        for sock in sockets or ():
            sock.close()
        state = self._launch.state
        state.draining, state.ready, state.not_ready_reason = True, False, "stopping"
        deadline = time.monotonic() + min(DRAIN_SECONDS, self.config.timeout_graceful_shutdown or 0)
        while self.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _open_requests(self) -> int:
        """Requests accepted and not answered yet: ASGI tasks, and scoring POSTs answered without ASGI."""
        return len(self.server_state.tasks) + len(self._direct_requests())

    def _direct_requests(self) -> list[DirectRequest]:
        """The scoring POSTs accepted without ASGI and not answered yet."""
        return [pending for connection in list(self.server_state.connections)
                if (pending := getattr(connection, "pending_direct", None)) is not None]

    async def _wait_tasks_to_complete(self) -> None:
        # uvicorn cancels this wait when the grace period runs out, and then every request task
        # left; the count is taken here because that is the only place that sees the moment.
        try:
            await super()._wait_tasks_to_complete()
        except asyncio.CancelledError:
            pending = self._direct_requests()
            self.cut_off = len(self.server_state.tasks) + len(pending)
            for request in pending:  # only connections with a direct handler have any
                self.config.http.direct_handler.cut_off(request)  # type: ignore[union-attr]
            raise


def serve(started: Started) -> int:
    """Serve until stopped; the exit status (0 after a stop, 3 when init() failed)."""
    settings = started.state.settings
    app = create_app(started.state)
    scoring = app if isinstance(app, ScoreFirst) else getattr(app, "app", None)  # inside CORS middleware
    # httptools with limits on slow and oversized requests, and the scoring POSTs answered without ASGI
    http = protocol_class(settings, settings.max_connections, HEALTH_ROUTES,
                          scoring if isinstance(scoring, ScoreFirst) else None, started.state.busy_poll)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=http,
        **fallback_limits(http, settings.max_connections),
        lifespan="on",
        access_log=False,
        log_level=log_level_number(settings.log_level),
        log_config=None,
        # Default 75 s: longer than common load balancers' idle timeouts.
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  # typed int, any number works
        ssl_certfile=settings.ssl_cert,  # checked by Settings.build: a pair that loads
        ssl_keyfile=settings.ssl_key,
        ssl_keyfile_password=settings.ssl_key_password,
        timeout_graceful_shutdown=settings.graceful_timeout,  # type: ignore[arg-type]  # typed int, any number works
        server_header=False,
    )
    server = Server(config, started)
    # uvicorn re-raises the signal that stopped it once it has shut down; a handler of ours in place
    # of the default makes that a no-op, so a graceful stop ends with exit status 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped_gracefully)
    server.run(sockets=started.sockets)
    if server.cut_off:
        # A run() cut off in a scoring thread cannot be stopped, and the interpreter would wait for
        # it at exit; the grace period is over, so the process ends now.
        logging.shutdown()
        os._exit(server.exit_code)
    return server.exit_code


def _address(sock: socket.socket, scheme: str) -> str:
    name = sock.getsockname()
    if isinstance(name, str):
        return f"unix:{name}"
    return f"{scheme}://[{name[0]}]:{name[1]}" if ":" in name[0] else f"{scheme}://{name[0]}:{name[1]}"


def _stopped_gracefully(signum: int, frame: object) -> None:
    """Called when uvicorn re-raises the stop signal after its graceful shutdown."""


async def _in_daemon_thread(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a daemon thread: a stop during a long init() does not wait for it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        result, error = None, None
        try:
            result = function(*args)
        except BaseException as raised:
            error = raised
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed: the server stopped before init() finished
            pass

    threading.Thread(target=target, name="mlscore-init", daemon=True).start()
    return await done


def run(settings: Settings, notes: Sequence[str] = ()) -> int:
    """Serve until stopped; `notes`: lines the command has for the log (azmlinfsrv's)."""
    configure_logging(settings.log_level, settings.log_format)
    for note in notes:
        logger.info("%s", note)
    logger.info("settings: %s", settings.summary(), extra={"settings": settings.given()})
    logger.debug("every setting: %s", settings.redacted())
    try:
        started = start(settings)
    except (StartupError, EntryScriptError) as error:
        return _cannot_start(error, settings)
    return serve(started)


def _cannot_start(error: Exception, settings: Settings) -> int:
    """Log why the server cannot start in one line naming what and where, with the traceback of the
    user's code when the cause is in it (our own frames only at debug level); the exit status."""
    if isinstance(error, StartupError):
        logger.error("cannot start: %s", error)
        return error.exit_code
    if isinstance(error, EntryScriptError):
        served = "model" if settings.model is not None else "entry script"
        cause = error.cause.removeprefix(f"{error.script}: ")  # a cause may name the file as well
        logs.error_with_traceback(logger, f"cannot start: {served} {error.script}: {cause}", error.user_traceback)
        logger.debug("the same error, through mlscore's frames", exc_info=error)
        return EXIT_STARTUP_FAILED
    logger.error("cannot start: %s: %s", type(error).__name__, error, exc_info=error)  # ours: the whole traceback
    return EXIT_STARTUP_FAILED


def load_script(settings: Settings) -> Pipeline:
    """The entry script imported and its input mode decided (or the model's signature read); init()
    not run yet."""
    json_limits.set_max_depth(settings.max_json_depth)  # in this process: the front, or a scoring worker
    if settings.model is not None:
        assert settings.model_name is not None
        model = OnnxPipeline(settings.model.resolve(), settings.model_name)
        logger.info("model %s (%s) to be served as %r", settings.model, model.mode.name, model.name)
        return model
    assert settings.entry_script is not None
    path = resolve_script_path(settings.entry_script, settings.app_root)
    source_directory = settings.source_directory
    if source_directory is not None and not source_directory.is_absolute():
        source_directory = settings.app_root / source_directory
    pipeline = ScoringPipeline(load_entry_script(path, source_directory))
    logger.info("entry script %s loaded (input mode: %s)", path, pipeline.mode.name)
    return pipeline


def load_pipeline(settings: Settings) -> Pipeline:
    """The entry script loaded and its init() run: what a scoring worker serves with."""
    pipeline = load_script(settings)
    pipeline.call_init()
    return pipeline


def warm_up(pipeline: Pipeline) -> str:
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
