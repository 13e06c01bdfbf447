"""Admission control: who may score now, who waits, and who is turned away.

At most `max_concurrent` requests hold a slot; up to `max_queue_size` more wait in FIFO order.
A waiter whose deadline passes is rejected by a timer at that moment, not when it reaches the
head of the queue. A freed slot is handed to the next waiter synchronously, inside the callback
that freed it: the executor gets the next request without a trip through the event loop, so a
scoring worker is not left idle between requests.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any, Callable

from mlscore.scoring.messages import RawRequest
from mlscore.server.deadlines import Deadlines, Timer, on_loop


class Rejected:
    """Why a request gets no slot: `reason` is the metric label, `message` the client's text. It is
    a ticket's answer (a value, never raised: an exception kept in a future holds its traceback's
    frames in a reference cycle, and under overload those cycles cost long full garbage collections)."""

    __slots__ = ("reason", "message", "retry_after", "status")

    def __init__(self, reason: str, message: str, retry_after: int, status: int = 503) -> None:
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.status = status


def queue_timeout(waited_ms: int, retry_after: int) -> Rejected:
    return Rejected("queue_timeout", f"Waited {waited_ms} ms for a scoring slot (maxQueueWaitMs or the request's "
                    "own deadline) without getting one.", retry_after)


class Slot:
    """One scoring slot, released exactly once, however many times release() is called."""

    __slots__ = ("_queue", "_released")

    def __init__(self, queue: "AdmissionQueue") -> None:
        self._queue = queue
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._queue._release()


class Ticket:
    """One request on its way to run(): queued, then given a slot (`started` is the loop time it
    got one). `answer` is the future its handler awaits; a rejection or a departure completes it
    instead. An executor may `pull` a queued ticket to hold it ready next to a busy worker: it is
    still waiting for a slot then (`prefetched`), and its queue deadline still holds."""

    __slots__ = ("request", "arrived", "budget", "answer", "loop", "timer", "started", "state", "on_leave")

    def __init__(self, request: RawRequest, arrived: float, budget: float, answer: asyncio.Future[Any]) -> None:
        self.request = request
        self.arrived = arrived
        self.budget = budget  # seconds for queue and run together
        self.answer = answer
        # Its loop, kept: on Python 3.11 each asyncio.get_running_loop() is a getpid() system call.
        self.loop = answer.get_loop()
        self.timer: Timer | None = None  # its queue deadline, while it waits
        self.started = arrived
        self.state = WAITING
        self.on_leave: Callable[[], None] | None = None  # set by the executor that pulled it

    @property
    def waiting(self) -> bool:
        """Still waiting for a slot: queued, or held ready by a worker."""
        return self.state == WAITING or self.state == PULLED

    def run_timeout(self, scoring_timeout: float) -> float:
        """Seconds run() may take: the scoring timeout, or less when the request's own budget ends sooner."""
        return min(scoring_timeout, self.budget - (self.started - self.arrived))


WAITING, PULLED, STARTED, GONE = range(4)


class AdmissionQueue:
    def __init__(self, max_concurrent: int, max_queue_size: int, max_queue_wait_ms: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.max_queue_wait = max_queue_wait_ms / 1000.0
        self._free = max_concurrent
        self._waiters: deque[Ticket] = deque()
        self._pulled = 0  # tickets an executor holds ready (still waiting for a slot)
        # Mean time a slot is held (exponentially weighted), for Retry-After.
        self._hold_seconds = 0.01
        self._start: Callable[[Ticket, Slot], None] | None = None
        self._waiting_hook: Callable[[], None] | None = None
        self._deadlines: Deadlines | None = None

    def bind(self, start: Callable[[Ticket, Slot], None], waiting_hook: Callable[[], None] | None = None) -> None:
        """`start(ticket, slot)` begins scoring a ticket given a slot (the executor's submit);
        `waiting_hook` is told when a ticket joins the queue (so it may pull it)."""
        self._start = start
        self._waiting_hook = waiting_hook

    @property
    def in_use(self) -> int:
        return self.max_concurrent - self._free

    @property
    def queued(self) -> int:
        return len(self._waiters) + self._pulled

    @property
    def hold_seconds(self) -> float:
        return self._hold_seconds

    def try_acquire(self, ticket: Ticket) -> Slot | None:
        """A slot for the ticket at once (it is started then), or None when it would have to wait."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            ticket.state = STARTED
            return Slot(self)
        return None

    def enqueue(self, ticket: Ticket, wait: float) -> Rejected | None:
        """Queue a ticket for at most `wait` seconds: it is started when a slot frees, and its
        answer is a Rejected when the wait runs out. A Rejected at once when the queue is full."""
        if self.queued >= self.max_queue_size:
            return Rejected("queue_full", f"Queue full: {self.max_queue_size} requests are already waiting "
                            "for a scoring slot.", self.retry_after())
        self._deadlines = deadlines = on_loop(self._deadlines, ticket.loop)
        ticket.timer = deadlines.call_later(wait, self._expire, ticket, round(wait * 1000))
        self._waiters.append(ticket)
        if self._waiting_hook is not None:
            self._waiting_hook()
        return None

    def pull(self) -> Ticket | None:
        """The head of the queue, for an executor to hold ready; it stays counted as queued."""
        while self._waiters:
            ticket = self._waiters.popleft()
            if ticket.answer.done():
                continue
            ticket.state = PULLED
            self._pulled += 1
            return ticket
        return None

    def started(self, ticket: Ticket) -> bool:
        """A pulled ticket got a slot (its worker reached it): False when it had left or expired."""
        if ticket.state != PULLED:
            return False
        self._settle(ticket, STARTED)
        ticket.started = ticket.loop.time()
        return True

    def give_back(self, ticket: Ticket) -> None:
        """A pulled ticket that never started goes back to the head of the queue (its worker died)."""
        if ticket.state != PULLED:
            return
        self._pulled -= 1
        ticket.state = WAITING
        ticket.on_leave = None
        self._waiters.appendleft(ticket)

    def leave(self, ticket: Ticket) -> bool:
        """Take a waiting request out of the queue (its client went away); False when it already
        has its slot or was rejected."""
        if ticket.state == WAITING:
            try:
                self._waiters.remove(ticket)
            except ValueError:
                return False
        elif ticket.state != PULLED:
            return False
        on_leave = ticket.on_leave
        self._settle(ticket, GONE)
        if on_leave is not None:
            on_leave()
        return True

    def record_hold(self, seconds: float) -> None:
        """Feed the time a slot was held, which Retry-After estimates the drain rate from."""
        self._hold_seconds += (seconds - self._hold_seconds) * 0.1

    def retry_after(self) -> int:
        """Seconds until the queue in front of a newcomer has drained at the measured rate (≥ 1)."""
        backlog = self.queued + self.in_use
        return max(1, math.ceil(backlog * self._hold_seconds / self.max_concurrent))

    def _settle(self, ticket: Ticket, state: int) -> None:
        if ticket.state == PULLED:
            self._pulled -= 1
        ticket.state = state
        ticket.on_leave = None
        if ticket.timer is not None:
            ticket.timer.cancel()

    def _expire(self, ticket: Ticket, waited_ms: int) -> None:
        if not self.leave(ticket):
            return
        if not ticket.answer.done():
            ticket.answer.set_result(queue_timeout(waited_ms, self.retry_after()))

    def _release(self) -> None:
        assert self._start is not None
        while self._waiters:
            ticket = self._waiters.popleft()
            if ticket.answer.done():  # its handler was cancelled
                continue
            self._settle(ticket, STARTED)
            ticket.started = ticket.loop.time()
            slot = Slot(self)
            try:
                self._start(ticket, slot)
            except Exception as error:  # a start that fails costs its own request, not the queue
                slot.release()
                if not ticket.answer.done():
                    ticket.answer.set_exception(error)
            return
        self._free += 1
