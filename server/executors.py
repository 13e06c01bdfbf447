"""In-process executors (the `processes` executor lives in supervisor.py).

`threads`: a pool sized to the concurrency limit. A run() past its timeout is answered 504 at
once, but keeps its slot until it really returns, so capacity is never over-promised.
`inline`: run() on the event loop itself, the fastest hand-off there is, for run()s of well under
a millisecond; a running run() delays every other answer and no scoring timeout can cut it short.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from mlscore.scoring.messages import RawResponse
from mlscore.scoring.pipeline import Scorer, error_response
from mlscore.server.admission import Slot, Ticket
from mlscore.server.errors import INTERNAL_ERROR

logger = logging.getLogger("mlscore.server")


def timeout_response(timeout_ms: int) -> RawResponse:
    response = error_response(504, f"run() did not finish within the scoring timeout of {timeout_ms} ms.",
                              run_failed=True)
    response.failure = "scoring_timeout"
    return response


class ThreadExecutor:
    name = "threads"

    def __init__(self, pipeline: Scorer, size: int, scoring_timeout_ms: int) -> None:
        self._pipeline = pipeline
        self._size = size
        self._scoring_timeout = scoring_timeout_ms / 1000.0
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="mlscore-run")
        self._stuck = 0

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
        loop = ticket.loop
        answer = ticket.answer
        timeout = ticket.run_timeout(self._scoring_timeout)
        future = loop.run_in_executor(self._pool, self._pipeline.handle, ticket.request)
        timer = loop.call_later(timeout, self._time_out, future, answer, round(timeout * 1000))
        future.add_done_callback(lambda done: _finished(done, slot, timer, answer))

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

    def __init__(self, pipeline: Scorer) -> None:
        self._pipeline = pipeline

    async def start(self) -> None:
        logger.warning("executor 'inline': run() is called on the event loop; the scoring timeout is not enforced")

    def submit(self, ticket: Ticket, slot: Slot) -> None:
        try:
            ticket.answer.set_result(self._pipeline.handle(ticket.request))
        finally:
            slot.release()

    async def close(self) -> None:
        """Nothing to stop."""


def _finished(done: asyncio.Future[RawResponse], slot: Slot, timer: asyncio.TimerHandle,
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
