"""Per-request deadlines (queue waits, scoring timeouts) on one event-loop timer.

Every request gets deadlines that almost never pass: a loop timer each (call_later, then cancel)
costs about 1.8 µs, and a queued request has two, a tenth of the front's own work on a small model. These deadlines
are set in order, most of them by one setting (queue wait, scoring timeout), so they pass in the
order they were set: a FIFO of deadlines needs one loop timer, armed for the earliest, and a
cancelled deadline at the head leaves at once (requests end roughly in order, so the FIFO holds
about the requests in flight). The timer fires at the earliest deadline still set, as a timer of
its own would; when that one was cancelled meanwhile, it is armed again for the next, so it fires
about once per deadline length rather than once per request. A deadline earlier than the last
one set (a client's own shorter x-ms-request-timeout-ms) gets a loop timer of its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Protocol


# Cancelled deadlines kept behind a live head before the FIFO is compacted, beyond twice the live ones.
COMPACT_SLACK = 256


class Timer(Protocol):
    """What a deadline's holder may do with it: what asyncio's TimerHandle offers, and all it needs."""

    def cancel(self) -> None: ...

    def when(self) -> float: ...


class Deadline:
    __slots__ = ("_when", "_callback", "_args", "_queue", "done")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...], queue: "Deadlines") -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._queue = queue
        self.done = False  # cancelled, or called

    def when(self) -> float:
        """The loop time it passes at."""
        return self._when

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._args = ()  # its holder is among them, and holds it: no cycle for the garbage collector
            self._queue._cancelled()


class Deadlines:
    """Deadlines in one event loop, called back when they pass unless cancelled first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: deque[Deadline] = deque()
        self._live = 0  # of those, the ones neither cancelled nor called
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Deadlines held: those set and not yet passed, and cancelled ones behind an uncancelled one."""
        return len(self._pending)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        """`callback(*args)` once `delay` seconds have passed, unless cancelled first."""
        when = self.loop.time() + delay
        pending = self._pending
        if pending and when < pending[-1]._when:
            return self.loop.call_at(when, callback, *args)
        deadline = Deadline(when, callback, args, self)
        pending.append(deadline)
        self._live += 1
        if len(pending) == 1:
            # The new head. The timer may still be armed for a deadline since cancelled: when that
            # is earlier it fires, then arms itself for this one; when later (one set with a longer
            # delay), it is armed again now. With others pending, the timer is armed for the
            # earliest of them (or is about to be, when this is called back from _passed).
            timer = self._timer
            if timer is None or timer.when() > when:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(when, self._passed)
        return deadline

    def _cancelled(self) -> None:
        """One was cancelled: those at the head leave. Cancelled ones behind a head that stays (one
        worker in a long run() while another answers thousands) are dropped once they outnumber
        the live ones, so the FIFO holds at most about twice the deadlines in flight."""
        self._live -= 1
        pending = self._pending
        while pending and pending[0].done:
            pending.popleft()
        if len(pending) > 2 * self._live + COMPACT_SLACK:
            self._pending = deque(deadline for deadline in pending if not deadline.done)

    def _passed(self) -> None:
        self._timer = None
        now = self.loop.time()
        # self._pending each time round: a callback that cancels may have compacted it.
        while self._pending and (self._pending[0].done or self._pending[0]._when <= now):
            deadline = self._pending.popleft()
            if not deadline.done:
                deadline.done = True
                self._live -= 1
                args, deadline._args = deadline._args, ()
                deadline._callback(*args)
        if self._pending and self._timer is None:
            self._timer = self.loop.call_at(self._pending[0]._when, self._passed)


def on_loop(deadlines: Deadlines | None, loop: asyncio.AbstractEventLoop) -> Deadlines:
    """`deadlines` when they are `loop`'s, else new ones for it (for a holder that outlives a loop, as in tests)."""
    return deadlines if deadlines is not None and deadlines.loop is loop else Deadlines(loop)
