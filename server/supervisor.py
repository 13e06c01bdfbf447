"""The `processes` executor: supervised worker processes, each of which ran init() once.

The front hands a worker the raw request and gets raw response bytes back over a socket pair. A
worker past the scoring timeout is killed and replaced; one that dies costs only the request it
was running. Either way its slot is released only when the replacement is ready, so capacity is
never over-promised. Replacements whose init() fails are retried with backoff, and readiness says why.

A worker is never left idle between requests: while it runs one, the front may hold the next few
queued requests ready in its socket (more when run() is quick, none when it is slow). They are
still queued: they get a slot only when the worker reaches them, in order, and the worker skips
one whose queue deadline passed or whose client left (the front sends a cancel frame).

Workers can be recycled: one past --worker-max-requests or --worker-max-rss-mb says so after a
request, and the front starts its replacement while it goes on serving. Once the replacement has
run init() it takes the old one's place, and the old one answers what it holds, then exits. No
request waits for an init(); only a leak so fast that the old worker passes 1.5 times the memory
bound first stops it early (its requests then wait in the queue for the replacement).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import orjson


from mlscore.scoring.entry_script import EntryScriptError, resolve_script_path
from mlscore.scoring.messages import RawResponse
from mlscore.scoring.pipeline import error_response
from mlscore.server import logs
from mlscore.server.admission import AdmissionQueue, Slot, Ticket, queue_timeout
from mlscore.server.busy_poll import BusyPoll
from mlscore.server.deadlines import Deadlines, Timer, on_loop
from mlscore.server.executors import timeout_response
from mlscore.server.settings import Settings
from mlscore.server.worker import (
    BATCH_STARTED, CHUNK, CONTROL, END, FAILED, RSS_HARD_FACTOR, SKIPPED, STREAMED, FrameBuffer, cancel_frame,
    read_control_blocking, request_frame, worker_main,
)

logger = logging.getLogger("mlscore.server")
MAX_BACKOFF = 30.0
WORKER_EXIT_S = 2.0  # how long a stop waits for an idle worker to exit by itself
# Requests held ready per worker: enough to cover about HOLD_READY_SECONDS of run()s, at most MAX_HELD_READY.
HOLD_READY_SECONDS = 0.002
MAX_HELD_READY = 6
# A held request is skipped this long before its queue deadline, so that the front's 503 at the
# deadline never races a run() that has just begun.
START_MARGIN = 0.001


class Call:
    """A request sent to a worker. It holds a slot once the worker runs it (`slot`); until then it
    is held ready and its ticket is still queued. `stream` carries a streamed body's chunks."""

    __slots__ = ("ticket", "slot", "timer", "worker", "sequence", "stream", "head")

    def __init__(self, ticket: Ticket, slot: Slot | None) -> None:
        self.ticket = ticket
        self.slot = slot
        self.timer: Timer | None = None  # its scoring timeout, once it holds a slot
        self.worker: Worker | None = None
        self.sequence = 0
        self.stream: asyncio.Queue[bytes | Exception | None] | None = None
        self.head: Call | None = None  # in a batch, the call holding the batch's slot (and timer)


class WorkerConnection(asyncio.Protocol):
    """The front's end of one worker's socket: writes request and cancel frames and, as response
    frames arrive (in order), hands each to the executor for the call at the head of `calls`."""

    def __init__(self, executor: "ProcessExecutor", worker: "Worker") -> None:
        self._executor = executor
        self._worker = worker
        self._buffer = FrameBuffer()
        self.calls: deque[Call] = deque()
        self._outgoing: list[bytes] = []  # frames of held requests, written together
        self._transport: asyncio.WriteTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        self._loop = asyncio.get_running_loop()  # kept: each call is a getpid() system call on Python 3.11

    def data_received(self, data: bytes) -> None:
        self._executor.busy_poll.woke()
        for frame in self._buffer.feed(data):
            if frame.status == BATCH_STARTED:
                self._executor._batch_started(self._worker, frame.batch, frame.run_ms / 1000.0)
                continue
            if frame.status == CONTROL:
                self._control(frame.body)
                continue
            if not self.calls:
                continue
            call = self.calls[0]
            if frame.status == CHUNK and call.stream is not None:
                call.stream.put_nowait(frame.body)
            elif frame.status == END and call.stream is not None:
                call.stream.put_nowait(ConnectionError("run()'s streamed body failed") if frame.flags & FAILED
                                       else None)
                self.calls.popleft()
                self._executor._answered(self._worker, call, None)
            elif frame.status == SKIPPED:
                self.calls.popleft()
                self._executor._skipped(self._worker, call)
            elif frame.flags & STREAMED:
                # The head of a streamed body: the client gets it now; the call ends at END.
                call.stream = asyncio.Queue()
                response = frame.response()
                response.body = _chunks(call.stream)
                if not call.ticket.answer.done():
                    call.ticket.answer.set_result(response)
            else:
                self.calls.popleft()
                self._executor._answered(self._worker, call, frame.response())

    def _control(self, body: bytes) -> None:
        message = orjson.loads(body)
        if message.get("log_dropped"):
            logs.worker_dropped(self._worker.pid, message["log_dropped"])
        if message.get("retire"):
            self._executor._retire(self._worker, message["retire"], message.get("rss_mb", 0))

    def connection_lost(self, exc: Exception | None) -> None:
        self._executor._lost(self._worker)

    def send(self, frame: bytes, call: Call) -> None:
        """Write now when the worker may be waiting for it; a request held ready behind others
        waits for the end of this turn of the event loop, to go out with the others in one write."""
        assert self._transport is not None
        self.calls.append(call)
        if len(self.calls) == 1:
            self._flush()
            self._transport.write(frame)
        elif self._outgoing:
            self._outgoing.append(frame)
        else:
            self._outgoing = [frame]
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._outgoing and self._transport is not None:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing = []

    def cancel(self, call: Call) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            self._transport.write(cancel_frame(call.sequence))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass(eq=False)
class Worker:
    process: multiprocessing.process.BaseProcess
    sock: socket.socket
    pid: int = 0
    warm_up_error: str = ""
    rss_after_init_mb: int = 0
    batch: int = 1  # the most requests it takes in one model call (1: its pipeline does not batch)
    answered_by_size: dict[int, int] = field(default_factory=dict, repr=False)  # see _count_call
    connection: WorkerConnection | None = field(default=None, repr=False)
    # Recycling (--worker-max-requests, --worker-max-rss-mb): why the worker is being replaced, once
    # it said it is due; `replaced` once its replacement is ready, `stopped` when its memory passed
    # the hard bound first; the slots it held when it died before its replacement was ready.
    replacing: str = ""
    replaced: bool = False
    stopped: bool = False
    orphaned_slots: list[Slot] = field(default_factory=list, repr=False)
    stop_reason: str = ""  # why the front killed it (scoring_timeout), for the restart count

    @property
    def retired(self) -> bool:
        """It takes no more requests."""
        return self.replaced or self.stopped

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
        served = (settings.model.resolve() if settings.model is not None
                  else resolve_script_path(settings.entry_script or "", settings.app_root))
        raise EntryScriptError(served, cause, message.get("traceback", "") if message else "")
    return Worker(process, front, pid=message["pid"], warm_up_error=message.get("warm_up_error", ""),
                  rss_after_init_mb=message.get("rss_after_init_mb", 0), batch=message.get("batch", 1))


class ProcessExecutor:
    name = "processes"

    def __init__(self, settings: Settings, workers: list[Worker], admission: AdmissionQueue) -> None:
        self._settings = settings
        self._scoring_timeout = settings.scoring_timeout_ms / 1000.0
        self._workers = workers
        self._admission = admission
        self._idle: deque[Worker] = deque()
        # Calls holding a slot while every worker is busy (only with fewer workers than slots).
        self._backlog: deque[Call] = deque()
        self._sequence = 0
        self._problem = ""
        self._closing = False
        self.restarts: dict[str, int] = {}  # replacements by reason (metrics.RESTART_REASONS)
        self.on_batch: Callable[[int], None] | None = None  # the requests of each model call
        self.on_batch_wait: Callable[[float], None] | None = None  # the seconds each batch waited to fill
        self._warned_rss = False
        self._deadlines: Deadlines | None = None  # the scoring timeouts
        self.busy_poll = BusyPoll()  # the server's, once it polls (the answers' reads keep it going)
        admission.bind(self.submit, self._queue_grew)

    @classmethod
    def launch(cls, settings: Settings, admission: AdmissionQueue) -> "ProcessExecutor":
        """Start the first workers (blocking; the server already listens and is not ready): a failing
        init() stops the start."""
        workers: list[Worker] = []
        try:
            for _ in range(settings.workers):
                workers.append(spawn_worker(settings))
        except BaseException:
            for worker in workers:
                worker.kill()
            raise
        logger.info("%d scoring worker(s) ready: pids %s", len(workers), ", ".join(str(w.pid) for w in workers))
        return cls(settings, workers, admission)

    @property
    def warm_up_error(self) -> str:
        return next((worker.warm_up_error for worker in self._workers if worker.warm_up_error), "")

    @property
    def ready(self) -> bool:
        for worker in self._workers:  # asked for every request: a loop, not any() over a generator
            if worker.connection is not None and not worker.retired:
                return True
        return False

    @property
    def not_ready_reason(self) -> str:
        if self.ready:
            return ""
        return self._problem or ("every scoring worker is being replaced (after a scoring timeout or a crash, or "
                                 "past its memory bound)")

    async def start(self) -> None:
        for worker in self._workers:
            await self._attach(worker)

    def submit(self, ticket: Ticket, slot: Slot) -> None:
        """Send a request that has its slot to an idle worker now (to the backlog when every worker
        is busy, which happens only with fewer workers than slots); the scoring timeout runs from here."""
        call = Call(ticket, slot)
        self._run_timer(call)
        if self._idle:
            self._send(self._idle.popleft(), call)
        else:
            self._backlog.append(call)

    def _send(self, worker: Worker, call: Call, start_by: float = 0.0) -> None:
        assert worker.connection is not None
        self._sequence += 1
        call.sequence = self._sequence
        call.worker = worker
        worker.connection.send(request_frame(call.ticket.request, call.sequence, start_by), call)

    def _run_timer(self, call: Call) -> None:
        timeout = call.ticket.run_timeout(self._scoring_timeout)
        self._deadlines = deadlines = on_loop(self._deadlines, call.ticket.loop)
        call.timer = deadlines.call_later(timeout, self._timed_out, call, round(timeout * 1000))

    def _queue_grew(self) -> None:
        """A request joined the queue: hold it ready next to a busy worker if one has room."""
        for worker in self._workers:
            if self._hold_ready(worker):
                return

    def _hold_ready(self, worker: Worker) -> bool:
        """Top up the requests held ready in a worker that is running one, once half of them have gone
        (so that a few go out in one write; a worker that batches, at once); True if any was added."""
        connection = worker.connection
        if connection is None:
            return False
        calls = connection.calls
        if not calls or calls[0].slot is None or worker.retired:
            return False
        if worker.batch == 1 and len(calls) > (1 + MAX_HELD_READY) // 2:
            return False  # more than half of the most it would hold: no top-up, whatever the depth
        hold = self._admission.hold_seconds
        depth = 1 + (min(MAX_HELD_READY, int(HOLD_READY_SECONDS / hold)) if hold > 0 else MAX_HELD_READY)
        if worker.batch > 1:
            # A worker that batches finds a whole batch in its socket when it is done with the one it
            # runs (of up to as many), or while it waits for one to fill: each request that joins
            # the queue joins it there.
            depth = max(depth, 2 * worker.batch)
        elif len(calls) > max(1, depth // 2):
            return False
        added = False
        while len(connection.calls) < depth:
            ticket = self._admission.pull()
            if ticket is None:
                break
            call = Call(ticket, None)
            ticket.on_leave = lambda call=call: connection.cancel(call)
            assert ticket.timer is not None
            start_by = time.time() + (ticket.timer.when() - ticket.loop.time()) - START_MARGIN
            self._send(worker, call, start_by)
            added = True
        return added

    def _answered(self, worker: Worker, call: Call, response: RawResponse | None) -> None:
        """A worker answered `call` (`response` is None at the end of a streamed body): its slot
        passes to the next request the worker holds, or goes back to admission, before the
        handler wakes, so the worker has its next request as soon as possible."""
        assert call.timer is not None and call.slot is not None
        call.timer.cancel()
        self._next(worker, call.slot)
        if worker.batch > 1 and response is not None and self.on_batch is not None:
            self._count_call(worker, response.batch)
        if response is not None and not call.ticket.answer.done():
            call.ticket.answer.set_result(response)

    def _count_call(self, worker: Worker, size: int) -> None:
        """Count the model calls of a batching worker from its answers: each says how many requests
        its call took, and a call's answers all come before the next batch's."""
        assert self.on_batch is not None
        answered = worker.answered_by_size.get(size, 0) + 1
        if answered == size:
            self.on_batch(size)
            answered = 0
        worker.answered_by_size[size] = answered

    def _batch_started(self, worker: Worker, size: int, waited: float) -> None:
        """The worker takes its next `size` requests together (after waiting `waited` seconds for
        them): those held ready are started (their queue deadlines no longer hold); the first holds
        the slot and the scoring timer for all."""
        assert worker.connection is not None
        calls = list(itertools.islice(worker.connection.calls, size))
        for call in calls[1:]:
            call.head = calls[0]
            self._admission.started(call.ticket)
        if self.on_batch_wait is not None:
            self.on_batch_wait(waited)

    def _skipped(self, worker: Worker, call: Call) -> None:
        """The worker did not run `call`: it was cancelled, or its queue deadline passed first."""
        if call.timer is not None:
            call.timer.cancel()
        if call.slot is not None:
            self._next(worker, call.slot)
        answer = call.ticket.answer
        if not answer.done():
            waited_ms = round((call.ticket.loop.time() - call.ticket.arrived) * 1000)
            answer.set_result(queue_timeout(waited_ms, self._admission.retry_after()))

    def _next(self, worker: Worker, slot: Slot) -> None:
        connection = worker.connection
        assert connection is not None
        if connection.calls:
            # The worker goes straight on to the request it held ready: the slot is that one's now.
            held = connection.calls[0]
            held.slot = slot
            # Timed even when its client has gone: the worker may have begun it an instant before
            # the cancel or the deadline reached it.
            self._admission.started(held.ticket)
            self._run_timer(held)
            self._hold_ready(worker)
            return
        if worker.retired:
            slot.release()
            if worker.replaced:  # it is done once its last request is
                connection.close()
            return
        if self._backlog:
            self._send(worker, self._backlog.popleft())
        else:
            self._idle.append(worker)
        slot.release()  # the next queued request may be sent to this worker right here
        self._hold_ready(worker)

    def _timed_out(self, call: Call, timeout_ms: int) -> None:
        answer = call.ticket.answer
        if not answer.done():
            answer.set_result(timeout_response(timeout_ms))
        elif call.stream is not None:
            call.stream.put_nowait(TimeoutError(f"the streamed body passed the scoring timeout of {timeout_ms} ms"))
        if call.worker is None:  # still waiting for a worker: it never reached run()
            self._backlog.remove(call)
            assert call.slot is not None
            call.slot.release()
            return
        logger.error("run() passed the scoring timeout of %d ms in worker %d: killing it", timeout_ms,
                     call.worker.pid)
        if call.worker.connection is not None:  # the rest of its batch timed out with it
            for member in call.worker.connection.calls:
                if member.head is call and not member.ticket.answer.done():
                    member.ticket.answer.set_result(timeout_response(timeout_ms))
        call.worker.stop_reason = "scoring_timeout"
        call.worker.kill()  # its socket closes, and _lost replaces it

    def _lost(self, worker: Worker) -> None:
        """The worker's socket closed: it died, or it was killed after a scoring timeout. The request
        it was running gets a 500 if it has no answer yet; those it held ready go back to the head
        of the queue; its slot is released when its replacement is ready."""
        assert worker.connection is not None
        calls = list(worker.connection.calls)
        worker.connection.calls.clear()
        slots: list[Slot] = []
        for call in calls:
            if call.timer is not None:
                call.timer.cancel()
            if call.slot is None:
                continue
            slots.append(call.slot)
            if call.stream is not None:
                call.stream.put_nowait(ConnectionError("the worker died while streaming the body"))
            if not call.ticket.answer.done():
                logger.error("worker %d died while scoring (exit status %s)", worker.pid, worker.process.exitcode)
                call.ticket.answer.set_result(_worker_died())
        for call in reversed(calls):
            if call.slot is None and call.head is None:
                self._admission.give_back(call.ticket)
            elif call.slot is None and not call.ticket.answer.done():  # begun in the batch the worker died in
                call.ticket.answer.set_result(_worker_died())
        # Closing, or replaced already: the front closed the socket, and the worker exits by itself,
        # writing the log lines it still holds.
        if not self._closing and not worker.replaced:
            worker.kill()
        if worker in self._idle:
            self._idle.remove(worker)
        if worker in self._workers:
            self._workers.remove(worker)
        if self._closing or worker.replaced:
            for slot in slots:
                slot.release()
            if worker.replaced and not self._closing:
                asyncio.ensure_future(self._reap(worker))
            return
        if not calls:
            logger.error("worker %d died while idle (exit status %s)", worker.pid, worker.process.exitcode)
        if worker.replacing:  # its replacement is starting already: that one stands in for it
            worker.orphaned_slots.extend(slots)
            return
        asyncio.ensure_future(self._replace(slots, worker.stop_reason or "crash"))

    def _retire(self, worker: Worker, reason: str, rss_mb: int) -> None:
        """A worker said it is due for replacement: start its replacement, which runs init() while
        this one goes on serving; once it is ready it takes this one's place. "stop": the worker's
        memory passed the hard bound first, and it takes no more requests from here on."""
        if self._closing or worker.retired:
            return
        bound = self._settings.worker_max_rss_mb
        if reason == "stop":
            logger.warning("worker %d uses %d MiB, over %g times --worker-max-rss-mb %d, before its replacement is "
                           "ready: it takes no more requests", worker.pid, rss_mb, RSS_HARD_FACTOR, bound)
            worker.stopped = True
            self._no_more_requests(worker)
            return
        if worker.replacing:
            return
        worker.replacing = reason
        why = (f"it uses {rss_mb} MiB, over --worker-max-rss-mb {bound}" if reason == "max_rss"
               else f"it served --worker-max-requests {self._settings.worker_max_requests} (and its jitter)")
        logger.info("replacing worker %d: %s; it serves until its replacement is ready", worker.pid, why)
        asyncio.ensure_future(self._recycle(worker))

    def _no_more_requests(self, worker: Worker) -> None:
        """A retired worker leaves the idle ones; once replaced, its socket is closed as soon as it has
        answered what it holds (else by `_next`, after its last answer)."""
        if worker in self._idle:
            self._idle.remove(worker)
        if worker.replaced and worker.connection is not None and not worker.connection.calls:
            worker.connection.close()

    async def _recycle(self, worker: Worker) -> None:
        replacement = await self._spawn()
        if replacement is None:
            return
        self._count(worker.replacing)
        self._workers.append(replacement)
        await self._attach(replacement)
        logger.info("worker %d replaced worker %d", replacement.pid, worker.pid)
        for slot in worker.orphaned_slots:  # it died while its replacement started
            slot.release()
        worker.orphaned_slots.clear()
        if worker in self._workers:
            worker.replaced = True
            self._no_more_requests(worker)

    async def _reap(self, worker: Worker) -> None:
        """Wait for a replaced worker to exit (it writes what it still has to log), off the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, worker.process.join, WORKER_EXIT_S)
        if worker.process.is_alive():
            worker.process.kill()
            await asyncio.get_running_loop().run_in_executor(None, worker.process.join, WORKER_EXIT_S)

    def _count(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1

    async def close(self) -> None:
        """Stop the workers. An idle one sees its socket close and exits by itself, writing the log
        lines it still holds (within WORKER_EXIT_S, else it is killed); a busy one, whose run() was
        cut off by the grace period, is killed at once."""
        self._closing = True
        workers = list(self._workers)
        for worker in workers:
            if worker.connection is not None and not worker.connection.calls:
                worker.connection.close()
            else:
                worker.kill()
        deadline = time.monotonic() + WORKER_EXIT_S
        while time.monotonic() < deadline and any(worker.process.is_alive() for worker in workers):
            await asyncio.sleep(0.01)
        for worker in workers:
            worker.kill()
            worker.process.join(timeout=5)

    async def _attach(self, worker: Worker) -> None:
        bound = self._settings.worker_max_rss_mb
        if bound and worker.rss_after_init_mb > bound and not self._warned_rss:
            self._warned_rss = True
            logger.warning("a scoring worker uses %d MiB after init(), over the bound of %d MiB (%s): workers are "
                           "not replaced for their memory (a replacement would be as large); raise the bound (images "
                           "derive it from the deployment config's memoryInGB)", worker.rss_after_init_mb, bound,
                           self._settings.sources.get("worker_max_rss_mb", "--worker-max-rss-mb"))
        worker.sock.setblocking(False)
        _, worker.connection = await asyncio.get_running_loop().create_connection(
            lambda: WorkerConnection(self, worker), sock=worker.sock)
        if self._backlog:
            self._send(worker, self._backlog.popleft())
        else:
            self._idle.append(worker)

    async def _replace(self, slots: list[Slot], reason: str) -> None:
        """Start a replacement for a worker that died or was killed; the slots of the requests that
        cost the old worker are released only when the new one is ready."""
        worker = await self._spawn()
        if worker is not None:
            self._count(reason)
            self._workers.append(worker)
            await self._attach(worker)
            logger.info("replacement worker %d ready", worker.pid)
        for slot in slots:
            slot.release()

    async def _spawn(self) -> Worker | None:
        """A new worker past its init(), retrying a failing init() with backoff; None when closing."""
        delay = 0.5
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                worker = await loop.run_in_executor(None, spawn_worker, self._settings)
            except EntryScriptError as error:
                self._problem = f"a replacement worker's init() failed: {error.cause}; retrying in {delay:g} s"
                # The script's own traceback once, with the first failure; each retry is a line.
                logs.error_with_traceback(logger, self._problem, error.user_traceback if delay == 0.5 else "")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if self._closing:
                worker.kill()
                return None
            self._problem = ""
            return worker
        return None


def _worker_died() -> RawResponse:
    died = error_response(500, "The worker process scoring this request died; it is being replaced.", run_failed=True)
    died.failure = "worker_died"
    return died


async def _chunks(stream: asyncio.Queue[bytes | Exception | None]) -> AsyncIterator[bytes]:
    while True:
        item = await stream.get()
        if item is None:
            return
        if isinstance(item, Exception):
            raise item
        yield item
