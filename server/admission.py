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


class Rejected(Exception):
    """A request refused a slot; `reason` is the metric label, `message` the client's text."""

    def __init__(self, reason: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


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
    """A request waiting in the queue: `grant` starts it with the slot it is given; `answer` is
    the future its handler awaits, which a rejection or a departure completes instead."""

    __slots__ = ("grant", "answer", "timer")

    def __init__(self, grant: Callable[[Slot], None], answer: asyncio.Future[Any]) -> None:
        self.grant = grant
        self.answer = answer
        self.timer: asyncio.TimerHandle | None = None


class AdmissionQueue:
    def __init__(self, max_concurrent: int, max_queue_size: int, max_queue_wait_ms: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.max_queue_wait = max_queue_wait_ms / 1000.0
        self._free = max_concurrent
        self._waiters: deque[Ticket] = deque()
        # Mean time a slot is held (exponentially weighted), for Retry-After.
        self._hold_seconds = 0.01

    @property
    def in_use(self) -> int:
        return self.max_concurrent - self._free

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> Slot | None:
        """A slot at once, or None when the caller would have to wait."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return Slot(self)
        return None

    def enqueue(self, wait: float, grant: Callable[[Slot], None], answer: asyncio.Future[Any]) -> Ticket:
        """Queue a request for at most `wait` seconds. When a slot frees, `grant(slot)` is called;
        when the wait runs out, `answer` gets a Rejected. Raises Rejected when the queue is full."""
        if len(self._waiters) >= self.max_queue_size:
            raise Rejected("queue_full", f"Queue full: {self.max_queue_size} requests are already waiting "
                           "for a scoring slot.", self.retry_after())
        ticket = Ticket(grant, answer)
        ticket.timer = asyncio.get_running_loop().call_later(wait, self._expire, ticket, round(wait * 1000))
        self._waiters.append(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> bool:
        """Take a waiting request out of the queue (its client went away); False when it already
        has its slot or was rejected."""
        try:
            self._waiters.remove(ticket)
        except ValueError:
            return False
        if ticket.timer is not None:
            ticket.timer.cancel()
        return True

    def record_hold(self, seconds: float) -> None:
        """Feed the time a slot was held, which Retry-After estimates the drain rate from."""
        self._hold_seconds += (seconds - self._hold_seconds) * 0.1

    def retry_after(self) -> int:
        """Seconds until the queue in front of a newcomer has drained at the measured rate (≥ 1)."""
        backlog = len(self._waiters) + self.in_use
        return max(1, math.ceil(backlog * self._hold_seconds / self.max_concurrent))

    def _expire(self, ticket: Ticket, waited_ms: int) -> None:
        if not self.leave(ticket):
            return
        if not ticket.answer.done():
            ticket.answer.set_exception(Rejected(
                "queue_timeout", f"Waited {waited_ms} ms for a scoring slot (maxQueueWaitMs or the request's own "
                "deadline) without getting one.", self.retry_after(),
            ))

    def _release(self) -> None:
        while self._waiters:
            ticket = self._waiters.popleft()
            if ticket.timer is not None:
                ticket.timer.cancel()
            if ticket.answer.done():  # its handler was cancelled
                continue
            slot = Slot(self)
            try:
                ticket.grant(slot)
            except Exception as error:  # a grant that cannot start fails its own request, not the queue
                slot.release()
                if not ticket.answer.done():
                    ticket.answer.set_exception(error)
            return
        self._free += 1
