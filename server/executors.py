"""In-process executors (the `processes` executor lives in supervisor.py).

`threads`: a pool sized to the concurrency limit. A run() past its timeout is answered 504 at
once, but keeps its slot until it really returns, so capacity is never over-promised.
`inline`: run() on the event loop itself, the fastest hand-off there is, for run()s of well under
a millisecond; a running run() delays every other answer and no scoring timeout can cut it short.

Both batch when the pipeline does and --max-batch-size is above 1: a request that gets its slot
takes up to that many queued ones with it into one model call (`Batcher`), the slot and the
scoring timeout being the batch's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from mlscore.scoring.messages import RawResponse
from mlscore.scoring.pipeline import Scorer, error_response
from mlscore.server.admission import AdmissionQueue, Slot, Ticket
from mlscore.server.deadlines import Deadlines, Timer, on_loop
from mlscore.server.errors import INTERNAL_ERROR

logger = logging.getLogger("mlscore.server")


def timeout_response(timeout_ms: int) -> RawResponse:
    response = error_response(504, f"run() did not finish within the scoring timeout of {timeout_ms} ms.",
                              run_failed=True)
    response.failure = "scoring_timeout"
    return response


class Batcher:
    """Gathers the queued requests a starting one takes into its model call: up to `size` in all,
    waiting up to `delay` seconds for more when fewer are queued. `on_batch` hears of each model
    call (the requests it took), `on_batch_wait` of each batch's wait to fill."""

    def __init__(self, admission: AdmissionQueue, size: int, delay_ms: int) -> None:
        self._admission = admission
        self.size = size
        self._delay = delay_ms / 1000.0
        self.on_batch: Callable[[int], None] | None = None
        self.on_batch_wait: Callable[[float], None] | None = None

    def gather(self, ticket: Ticket, then: Callable[[list[Ticket]], None]) -> None:
        """Call `then` with the ticket and the queued ones that join it, now or after the delay."""
        tickets = [ticket]
        self._take(tickets)
        if len(tickets) < self.size and self._delay > 0:
            ticket.loop.call_later(self._delay, self._filled, tickets, then, ticket.loop.time())
            return
        if len(tickets) > 1 and self.on_batch_wait is not None:
            self.on_batch_wait(0.0)
        then(tickets)

    def answered(self, responses: list[RawResponse]) -> None:
        """Count the model calls behind these answers (each says how many requests its call took)."""
        if self.on_batch is None:
            return
        for size, count in collections.Counter(response.batch for response in responses).items():
            for _ in range(count // size):
                self.on_batch(size)

    def _filled(self, tickets: list[Ticket], then: Callable[[list[Ticket]], None], since: float) -> None:
        self._take(tickets)
        if self.on_batch_wait is not None:
            self.on_batch_wait(tickets[0].loop.time() - since)
        then(tickets)

    def _take(self, tickets: list[Ticket]) -> None:
        while len(tickets) < self.size:
            ticket = self._admission.pull()
            if ticket is None:
                return
            if self._admission.started(ticket):  # its queue deadline no longer holds: it is in a batch
                tickets.append(ticket)


def _answer_all(tickets: list[Ticket], responses: list[RawResponse]) -> None:
    for ticket, response in zip(tickets, responses):
        if not ticket.answer.done():
            ticket.answer.set_result(response)


class ThreadExecutor:
    name = "threads"

    def __init__(self, pipeline: Scorer, size: int, scoring_timeout_ms: int, batcher: Batcher | None = None) -> None:
        self._pipeline = pipeline
        self._size = size
        self._scoring_timeout = scoring_timeout_ms / 1000.0
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="mlscore-run")
        self._stuck = 0
        self._deadlines: Deadlines | None = None  # the scoring timeouts
        self.batcher = batcher  # None: one request per call

    @property
    def ready(self) -> bool:
        return self._stuck < self._size

    @property
    def not_ready_reason(self) -> str:
        return "" if self.ready else f"every scoring slot ({self._size}) is held by a run() past the scoring timeout"

    async def start(self) -> None:
        """Nothing to start: the script was loaded and init() ran in this process."""

    def submit(self, ticket: Ticket, slot: Slot) -> None:
        """Hand the request to a thread; the ticket's answer gets the pipeline's response, or a 504
        after the scoring timeout. The slot is released when the thread is really free, after a
        timeout too."""
        if self.batcher is not None:
            self.batcher.gather(ticket, lambda tickets: self._submit_batch(tickets, slot))
            return
        self._submit_one(ticket, slot)

    def _submit_one(self, ticket: Ticket, slot: Slot) -> None:
        loop = ticket.loop
        answer = ticket.answer
        timeout = ticket.run_timeout(self._scoring_timeout)
        future = loop.run_in_executor(self._pool, self._pipeline.handle, ticket.request)
        self._deadlines = on_loop(self._deadlines, loop)
        timer = self._deadlines.call_later(timeout, self._time_out, future, answer, round(timeout * 1000))
        future.add_done_callback(lambda done: _finished(done, slot, timer, answer))
        if self.batcher is not None:
            future.add_done_callback(lambda done: self._count(done, lambda response: [response]))

    def _count(self, done: asyncio.Future, responses: Callable[[object], list[RawResponse]]) -> None:
        if self.batcher is not None and not done.cancelled() and done.exception() is None:
            self.batcher.answered(responses(done.result()))

    def _submit_batch(self, tickets: list[Ticket], slot: Slot) -> None:
        """Several requests in one call on a thread: the scoring timeout runs from here for all of them."""
        if len(tickets) == 1:
            self._submit_one(tickets[0], slot)
            return
        loop = tickets[0].loop
        timeout = min(ticket.run_timeout(self._scoring_timeout) for ticket in tickets)
        future = loop.run_in_executor(self._pool, self._pipeline.handle_batch, [ticket.request for ticket in tickets])
        answers = [ticket.answer for ticket in tickets]
        self._deadlines = on_loop(self._deadlines, loop)
        timer = self._deadlines.call_later(timeout, self._time_out_batch, future, answers, round(timeout * 1000))

        def finished(done: asyncio.Future[list[RawResponse]]) -> None:
            slot.release()
            timer.cancel()
            if done.cancelled() or done.exception() is not None:  # handle_batch answers failures itself
                logger.error("the scoring pipeline raised", exc_info=None if done.cancelled() else done.exception())
                _answer_all(tickets, [error_response(500, INTERNAL_ERROR) for _ in tickets])
            else:
                _answer_all(tickets, done.result())

        future.add_done_callback(finished)
        future.add_done_callback(lambda done: self._count(done, lambda responses: responses))

    def _time_out_batch(self, future: asyncio.Future[list[RawResponse]],
                        answers: list[asyncio.Future[RawResponse]], timeout_ms: int) -> None:
        """The batch passed the scoring timeout: each of its requests is a 504; its slot is stuck once."""
        waiting = [answer for answer in answers if not answer.done()]
        if not waiting:
            return
        self._time_out(future, waiting[0], timeout_ms)  # type: ignore[arg-type]  # any future of the call
        for answer in waiting[1:]:
            answer.set_result(timeout_response(timeout_ms))

    def _time_out(self, future: asyncio.Future[RawResponse], answer: asyncio.Future[RawResponse],
                  timeout_ms: int) -> None:
        if answer.done():
            return
        self._stuck += 1
        future.add_done_callback(self._unstick)
        logger.error("run() passed the scoring timeout of %d ms; its slot stays held until it returns", timeout_ms)
        answer.set_result(timeout_response(timeout_ms))

    def _unstick(self, _future: object) -> None:
        self._stuck -= 1

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class InlineExecutor:
    name = "inline"
    ready = True
    not_ready_reason = ""

    def __init__(self, pipeline: Scorer, batcher: Batcher | None = None) -> None:
        self._pipeline = pipeline
        self.batcher = batcher  # None: one request per call

    async def start(self) -> None:
        logger.warning("executor 'inline': run() is called on the event loop; the scoring timeout is not enforced")

    def submit(self, ticket: Ticket, slot: Slot) -> None:
        if self.batcher is not None:
            self.batcher.gather(ticket, lambda tickets: self._run_batch(tickets, slot))
            return
        try:
            ticket.answer.set_result(self._pipeline.handle(ticket.request))
        finally:
            slot.release()

    def _run_batch(self, tickets: list[Ticket], slot: Slot) -> None:
        assert self.batcher is not None
        try:
            requests = [ticket.request for ticket in tickets]
            responses = self._pipeline.handle_batch(requests) if len(requests) > 1 else [
                self._pipeline.handle(requests[0])]
            _answer_all(tickets, responses)
            self.batcher.answered(responses)
        finally:
            slot.release()

    async def close(self) -> None:
        """Nothing to stop."""


def _finished(done: asyncio.Future[RawResponse], slot: Slot, timer: Timer,
              answer: asyncio.Future[RawResponse]) -> None:
    slot.release()
    timer.cancel()
    if answer.done():
        return
    if done.cancelled() or done.exception() is not None:  # handle() answers failures itself; this is a bug
        logger.error("the scoring pipeline raised", exc_info=None if done.cancelled() else done.exception())
        answer.set_result(error_response(500, INTERNAL_ERROR))
    else:
        answer.set_result(done.result())
