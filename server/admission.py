"""Admission control: who may score now, who waits, and who is turned away.

At most `max_concurrent` requests hold a slot; up to `max_queue_size` more wait in FIFO order.
A waiter whose deadline passes is rejected by a timer at that moment, not when it reaches the
head of the queue.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


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


class AdmissionQueue:
    def __init__(self, max_concurrent: int, max_queue_size: int, max_queue_wait_ms: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.max_queue_wait = max_queue_wait_ms / 1000.0
        self._free = max_concurrent
        self._waiters: deque[asyncio.Future[Slot]] = deque()
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

    async def acquire(self, wait: float) -> Slot:
        """A slot, waiting at most `wait` seconds; raises Rejected."""
        slot = self.try_acquire()
        if slot is not None:
            return slot
        if len(self._waiters) >= self.max_queue_size:
            raise Rejected("queue_full", f"Queue full: {self.max_queue_size} requests are already waiting "
                           "for a scoring slot.", self.retry_after())
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Slot] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(wait, self._expire, waiter, round(wait * 1000))
        try:
            return await waiter
        except asyncio.CancelledError:
            # The client went away while queued. A slot handed over in the same instant goes back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().release()
            else:
                self._remove(waiter)
            raise
        finally:
            timer.cancel()

    def record_hold(self, seconds: float) -> None:
        """Feed the time a slot was held, which Retry-After estimates the drain rate from."""
        self._hold_seconds += (seconds - self._hold_seconds) * 0.1

    def retry_after(self) -> int:
        """Seconds until the queue in front of a newcomer has drained at the measured rate (≥ 1)."""
        backlog = len(self._waiters) + self.in_use
        return max(1, math.ceil(backlog * self._hold_seconds / self.max_concurrent))

    def _expire(self, waiter: asyncio.Future[Slot], waited_ms: int) -> None:
        if waiter.done():
            return
        self._remove(waiter)
        waiter.set_exception(Rejected(
            "queue_timeout", f"Waited {waited_ms} ms for a scoring slot (maxQueueWaitMs or the request's own "
            "deadline) without getting one.", self.retry_after(),
        ))

    def _remove(self, waiter: asyncio.Future[Slot]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(Slot(self))
                return
        self._free += 1
