"""The `processes` executor: supervised worker processes, each of which ran init() once.

The front hands a worker the raw request and gets raw response bytes back over a socket pair. A
worker past the scoring timeout is killed and replaced; one that dies costs only the request it
held. Either way its slot is released only when the replacement is ready, so capacity is never
over-promised. Replacements whose init() fails are retried with backoff, and readiness says why.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from mlscore.scoring.entry_script import EntryScriptError
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.pipeline import error_response
from mlscore.server.admission import Slot
from mlscore.server.executors import timeout_response
from mlscore.server.settings import Settings
from mlscore.server.worker import (
    CHUNK, CONTROL, END, FAILED, STREAMED, FrameBuffer, read_control_blocking, request_frame, worker_main,
)

logger = logging.getLogger("mlscore.server")
MAX_BACKOFF = 30.0


class WorkerConnection(asyncio.Protocol):
    """The front's end of one worker's socket: sends request frames and, as the response frames
    arrive in order, runs each request's bookkeeping and resolves its future (if anyone still waits)."""

    def __init__(self) -> None:
        self._buffer = FrameBuffer()
        self._pending: deque[tuple[asyncio.Future[RawResponse], Callable[[], None]]] = deque()
        self._stream: asyncio.Queue[bytes | Exception | None] | None = None  # chunks of the body in flight
        self._transport: asyncio.WriteTransport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        for frame in self._buffer.feed(data):
            if frame.status == CONTROL or not self._pending:
                continue
            if frame.status == CHUNK and self._stream is not None:
                self._stream.put_nowait(frame.body)
            elif frame.status == END and self._stream is not None:
                self._stream.put_nowait(ConnectionError("run()'s streamed body failed") if frame.flags & FAILED
                                        else None)
                self._stream = None
                self._finish(None)
            elif frame.flags & STREAMED:
                # The head of a streamed body: the client gets it now, the request ends at END.
                self._stream = asyncio.Queue()
                response = frame.response()
                response.body = _chunks(self._stream)
                waiter = self._pending[0][0]
                if not waiter.done():
                    waiter.set_result(response)
            else:
                self._finish(frame.response())

    def _finish(self, response: RawResponse | None) -> None:
        waiter, answered = self._pending.popleft()
        answered()
        if response is not None and not waiter.done():
            waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._stream is not None:
            self._stream.put_nowait(ConnectionError("the worker died while streaming the body"))
        while self._pending:
            waiter, _ = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the worker closed its socket"))

    def send(self, frame: bytes, answered: Callable[[], None]) -> asyncio.Future[RawResponse]:
        """The future of this request's response; `answered` runs when the worker has answered, even
        if nobody awaits the future any more."""
        assert self._transport is not None
        waiter: asyncio.Future[RawResponse] = asyncio.get_running_loop().create_future()
        if self.lost:
            waiter.set_exception(ConnectionError("the worker closed its socket"))
            return waiter
        self._pending.append((waiter, answered))
        self._transport.write(frame)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass(eq=False)
class Worker:
    process: multiprocessing.process.BaseProcess
    sock: socket.socket
    pid: int = 0
    warm_up_error: str = ""
    connection: WorkerConnection | None = field(default=None, repr=False)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        if self.connection is not None:
            self.connection.close()
        else:
            self.sock.close()


def spawn_worker(settings: Settings) -> Worker:
    """Start one worker and block until it is ready; EntryScriptError when its init() failed."""
    front, back = socket.socketpair()
    process = multiprocessing.get_context("spawn").Process(
        target=worker_main, args=(settings, back), name="mlscore-worker", daemon=True
    )
    process.start()
    back.close()
    message = read_control_blocking(front)
    if message is None or "init_error" in message:
        process.join(timeout=5)
        front.close()
        cause = message["init_error"] if message else f"the worker exited with status {process.exitcode}"
        raise EntryScriptError(settings.entry_script or "?", cause)
    return Worker(process, front, pid=message["pid"], warm_up_error=message.get("warm_up_error", ""))


class ProcessExecutor:
    name = "processes"

    def __init__(self, settings: Settings, workers: list[Worker]) -> None:
        self._settings = settings
        self._workers = workers
        self._idle: asyncio.Queue[Worker] | None = None
        self._problem = ""
        self._closing = False
        self.restarts = 0

    @classmethod
    def launch(cls, settings: Settings) -> "ProcessExecutor":
        """Start the first workers before the server listens: a failing init() stops the start."""
        workers: list[Worker] = []
        try:
            for _ in range(settings.workers):
                workers.append(spawn_worker(settings))
        except BaseException:
            for worker in workers:
                worker.kill()
            raise
        logger.info("%d scoring worker(s) ready: pids %s", len(workers), ", ".join(str(w.pid) for w in workers))
        return cls(settings, workers)

    @property
    def warm_up_error(self) -> str:
        return next((worker.warm_up_error for worker in self._workers if worker.warm_up_error), "")

    @property
    def ready(self) -> bool:
        return any(worker.connection is not None for worker in self._workers)

    @property
    def not_ready_reason(self) -> str:
        if self.ready:
            return ""
        return self._problem or "every scoring worker is being replaced after a scoring timeout or a crash"

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        for worker in self._workers:
            await self._attach(worker)

    async def score(self, request: RawRequest, slot: Slot, timeout: float) -> RawResponse:
        worker = await self._next_idle()
        assert worker.connection is not None
        # The worker goes back to the idle set when it has answered, whether or not the client still
        # waits: a client that disconnects must not leave its worker marked busy.
        answer = worker.connection.send(request_frame(request, time.time() + timeout),
                                        lambda: self._answered(worker, slot))
        timer = asyncio.get_running_loop().call_later(timeout, _time_out, answer)
        try:
            return await answer
        except asyncio.TimeoutError:
            logger.error("run() passed the scoring timeout of %d ms in worker %d: killing it", round(timeout * 1000),
                         worker.pid)
            self._retire(worker, slot)
            return timeout_response(round(timeout * 1000))
        except ConnectionError:
            logger.error("worker %d died while scoring (exit status %s)", worker.pid, worker.process.exitcode)
            self._retire(worker, slot)
            died = error_response(500, "The worker process scoring this request died; it is being replaced.",
                                  run_failed=True)
            died.failure = "worker_died"
            return died
        finally:
            timer.cancel()

    def _answered(self, worker: Worker, slot: Slot) -> None:
        self._idle_put(worker)
        slot.release()

    async def close(self) -> None:
        self._closing = True
        for worker in self._workers:
            worker.kill()
        for worker in self._workers:
            worker.process.join(timeout=5)

    async def _attach(self, worker: Worker) -> None:
        worker.sock.setblocking(False)
        _, worker.connection = await asyncio.get_running_loop().create_connection(WorkerConnection, sock=worker.sock)
        self._idle_put(worker)

    def _idle_put(self, worker: Worker) -> None:
        assert self._idle is not None
        self._idle.put_nowait(worker)

    async def _next_idle(self) -> Worker:
        assert self._idle is not None
        while True:
            worker = await self._idle.get()
            if worker.process.is_alive():
                return worker
            logger.error("worker %d died while idle (exit status %s)", worker.pid, worker.process.exitcode)
            self._retire(worker, None)

    def _retire(self, worker: Worker, slot: Slot | None) -> None:
        worker.kill()
        self._workers.remove(worker)
        asyncio.ensure_future(self._replace(slot))

    async def _replace(self, slot: Slot | None) -> None:
        """Start a replacement, retrying a failing init() with backoff; the slot of the request that
        cost the old worker is released only when the new one is ready."""
        delay = 0.5
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                worker = await loop.run_in_executor(None, spawn_worker, self._settings)
            except EntryScriptError as error:
                self._problem = f"a replacement worker's init() failed: {error.cause}; retrying in {delay:g} s"
                logger.error("%s", self._problem)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if self._closing:
                worker.kill()
                break
            self.restarts += 1
            self._problem = ""
            self._workers.append(worker)
            await self._attach(worker)
            logger.info("replacement worker %d ready", worker.pid)
            break
        if slot is not None:
            slot.release()


def _time_out(answer: asyncio.Future[RawResponse]) -> None:
    if not answer.done():
        answer.set_exception(asyncio.TimeoutError())


async def _chunks(stream: asyncio.Queue[bytes | Exception | None]) -> AsyncIterator[bytes]:
    while True:
        item = await stream.get()
        if item is None:
            return
        if isinstance(item, Exception):
            raise item
        yield item
