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
from typing import AsyncIterator

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


class Call:
    """One request holding a slot: the future its handler awaits, the scoring-timeout timer, the
    worker it went to (None while every worker is busy), and its body chunks while streaming."""

    __slots__ = ("request", "slot", "answer", "timer", "worker", "stream")

    def __init__(self, request: RawRequest, slot: Slot, answer: asyncio.Future[RawResponse]) -> None:
        self.request = request
        self.slot = slot
        self.answer = answer
        self.timer: asyncio.TimerHandle | None = None
        self.worker: Worker | None = None
        self.stream: asyncio.Queue[bytes | Exception | None] | None = None


class WorkerConnection(asyncio.Protocol):
    """The front's end of one worker's socket: writes request frames and, as response frames
    arrive, hands each to the executor for the call at the head of `calls`."""

    def __init__(self, executor: "ProcessExecutor", worker: "Worker") -> None:
        self._executor = executor
        self._worker = worker
        self._buffer = FrameBuffer()
        self.calls: deque[Call] = deque()
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        for frame in self._buffer.feed(data):
            if frame.status == CONTROL or not self.calls:
                continue
            call = self.calls[0]
            if frame.status == CHUNK and call.stream is not None:
                call.stream.put_nowait(frame.body)
            elif frame.status == END and call.stream is not None:
                call.stream.put_nowait(ConnectionError("run()'s streamed body failed") if frame.flags & FAILED
                                       else None)
                self.calls.popleft()
                self._executor._answered(self._worker, call, None)
            elif frame.flags & STREAMED:
                # The head of a streamed body: the client gets it now; the call ends at END.
                call.stream = asyncio.Queue()
                response = frame.response()
                response.body = _chunks(call.stream)
                if not call.answer.done():
                    call.answer.set_result(response)
            else:
                self.calls.popleft()
                self._executor._answered(self._worker, call, frame.response())

    def connection_lost(self, exc: Exception | None) -> None:
        self._executor._lost(self._worker)

    def send(self, frame: bytes, call: Call) -> None:
        assert self._transport is not None
        self.calls.append(call)
        self._transport.write(frame)

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
        self._idle: deque[Worker] = deque()
        # Calls holding a slot while every worker is busy (only with fewer workers than slots).
        self._backlog: deque[Call] = deque()
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
        for worker in self._workers:
            await self._attach(worker)

    def submit(self, request: RawRequest, slot: Slot, timeout: float,
               answer: asyncio.Future[RawResponse]) -> None:
        """Send the request to an idle worker now (to the backlog when every worker is busy, which
        happens only with fewer workers than slots); the scoring timeout runs from here."""
        call = Call(request, slot, answer)
        call.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out, call, round(timeout * 1000))
        if self._idle:
            self._dispatch(self._idle.popleft(), call)
        else:
            self._backlog.append(call)

    def _dispatch(self, worker: Worker, call: Call) -> None:
        assert worker.connection is not None and call.timer is not None
        call.worker = worker
        deadline = time.time() + max(0.0, call.timer.when() - asyncio.get_running_loop().time())
        worker.connection.send(request_frame(call.request, deadline), call)

    def _free(self, worker: Worker) -> None:
        if self._backlog:
            self._dispatch(worker, self._backlog.popleft())
        else:
            self._idle.append(worker)

    def _answered(self, worker: Worker, call: Call, response: RawResponse | None) -> None:
        """A worker answered `call` (`response` is None at the end of a streamed body): the worker
        takes the next request, the slot goes to the next waiter (who may be sent to this worker
        at once), and only then the handler wakes."""
        assert call.timer is not None
        call.timer.cancel()
        self._free(worker)
        call.slot.release()
        if response is not None and not call.answer.done():
            call.answer.set_result(response)

    def _timed_out(self, call: Call, timeout_ms: int) -> None:
        if not call.answer.done():
            call.answer.set_result(timeout_response(timeout_ms))
        elif call.stream is not None:
            call.stream.put_nowait(TimeoutError(f"the streamed body passed the scoring timeout of {timeout_ms} ms"))
        if call.worker is None:  # still waiting for a worker: it never reached run()
            self._backlog.remove(call)
            call.slot.release()
            return
        logger.error("run() passed the scoring timeout of %d ms in worker %d: killing it", timeout_ms,
                     call.worker.pid)
        call.worker.kill()  # its socket closes, and _lost replaces it

    def _lost(self, worker: Worker) -> None:
        """The worker's socket closed: it died, or it was killed after a scoring timeout. A request
        it still held that has no answer yet gets a 500; its slots are released when its
        replacement is ready, so capacity is never over-promised."""
        assert worker.connection is not None
        calls = list(worker.connection.calls)
        worker.connection.calls.clear()
        for call in calls:
            assert call.timer is not None
            call.timer.cancel()
            if call.stream is not None:
                call.stream.put_nowait(ConnectionError("the worker died while streaming the body"))
            if not call.answer.done():
                logger.error("worker %d died while scoring (exit status %s)", worker.pid, worker.process.exitcode)
                died = error_response(500, "The worker process scoring this request died; it is being replaced.",
                                      run_failed=True)
                died.failure = "worker_died"
                call.answer.set_result(died)
        worker.kill()
        if worker in self._idle:
            self._idle.remove(worker)
        if worker in self._workers:
            self._workers.remove(worker)
        slots = [call.slot for call in calls]
        if self._closing:
            for slot in slots:
                slot.release()
            return
        if not calls:
            logger.error("worker %d died while idle (exit status %s)", worker.pid, worker.process.exitcode)
        asyncio.ensure_future(self._replace(slots))

    async def close(self) -> None:
        self._closing = True
        for worker in list(self._workers):
            worker.kill()
        for worker in self._workers:
            worker.process.join(timeout=5)

    async def _attach(self, worker: Worker) -> None:
        worker.sock.setblocking(False)
        _, worker.connection = await asyncio.get_running_loop().create_connection(
            lambda: WorkerConnection(self, worker), sock=worker.sock)
        self._free(worker)

    async def _replace(self, slots: list[Slot]) -> None:
        """Start a replacement, retrying a failing init() with backoff; the slots of the requests
        that cost the old worker are released only when the new one is ready."""
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
        for slot in slots:
            slot.release()


async def _chunks(stream: asyncio.Queue[bytes | Exception | None]) -> AsyncIterator[bytes]:
    while True:
        item = await stream.get()
        if item is None:
            return
        if isinstance(item, Exception):
            raise item
        yield item
