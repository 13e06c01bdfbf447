"""Busy polling: the front's event loop keeps polling for a short while after each read instead of
going to sleep at once.

Each request crosses the front's event loop twice (the client's request in, the worker's answer
back), and between the two the loop may have gone to sleep in epoll_wait. Waking a sleeping
process is cheap on bare metal but not on the virtual machines most servers run on: the wake-up
is an interrupt to a halted virtual CPU, which the hypervisor must resume. Measured on a 2-core
cloud VM (AMD EPYC): a ping-pong between two processes took 34 µs a round trip across cores, 11
µs on one core. With the loop polling through its short gaps, the small MLP of benchmarks/peers.py
at 8 connections (`--max-batch-size 8`) went from about 15k to 19-20k requests a second.

Polling burns CPU, so it is bounded:

- it stops `window` seconds after the last read: an idle server sleeps, and uses no CPU;
- it happens only in a period (PERIOD) after one in which the loop was busy at least BUSY of the
  time (its thread's CPU time, polling left out) and few reads (LONG_GAPS) came after a gap
  longer than the window. A front that mostly waits, for a large model whose worker needs the
  cores or for a few clients, does not poll: its CPU time is not worth the wake-ups it would
  save. A front near saturation polls through its short gaps, which are the rest of its time;
- the server turns it on by itself only where the front has a core to spare: the processes
  executor, with more usable cores (CPU affinity and the cgroup's CPU quota) than scoring
  processes. Otherwise the front's polling would take CPU time its workers need (two workers on
  two cores at c=8: 12.5–13.2k req/s with polling, 13.0–14.0k without).

Polling is a callback the loop runs each turn while polling goes on: a turn with a callback
ready polls the sockets without waiting (epoll_wait with a zero timeout)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

PERIOD = 0.05  # seconds
BUSY = 0.5  # the share of a period the loop must have been working for polling in the next
LONG_GAPS = 0.1  # past this share of reads after a gap longer than the window, no polling next period
# A turn of the loop that only polled takes 1-2 µs (the callback, epoll_wait); a longer one did some
# work (read, wrote, ran callbacks), or the process was not running. (For `spent` only.)
EMPTY_TURN = 10e-6


class BusyPoll:
    """Keeps the loop polling for up to `window` seconds after each `woke()`, within the bounds
    above, once started. The protocols call `woke()` on each read; `spent` is the polling time so
    far (for the metrics)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        self.window = 0.0  # 0: not polling (not started, or off)
        self.spent = 0.0  # seconds spent polling, in all
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        self._cpu_clock = cpu_clock  # the loop's thread's CPU time
        self._active = False  # a read since the last poll
        self._polling = False
        self._allowed = False  # polling goes on this period
        self._last_read = 0.0
        self._last_read_polled = 0.0  # when the poll last saw a read
        self._last_tick = 0.0
        self._period_start = 0.0
        self._period_cpu = 0.0
        self._period_polled = 0.0
        self._short = 0  # reads this period that came within the window of the one before
        self._long = 0  # ... and the others

    def start(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self._loop = loop
        self.window = window
        self._period_start = self._clock()
        self._period_cpu = self._cpu_clock()

    def woke(self) -> None:
        """A read came in: poll after it, if this period allows."""
        self._active = True
        if not self.window:
            return
        now = self._clock()
        if now - self._last_read <= self.window:
            self._short += 1
        else:
            self._long += 1
        self._last_read = now
        if now - self._period_start >= PERIOD:
            self._next_period(now)
        if self._polling or not self._allowed:
            return
        self._polling = True
        self._last_read_polled = self._last_tick = now
        self._loop.call_soon(self._poll)  # type: ignore[union-attr]  # started

    def _poll(self) -> None:
        now = self._clock()
        elapsed = now - self._last_tick
        self._last_tick = now
        if self._active:  # a read since the last poll: the window starts again
            self._active = False
            self._last_read_polled = now
        elif elapsed <= EMPTY_TURN:  # a turn that only polled (a longer one did some work, or was not running)
            self._period_polled += elapsed
            self.spent += elapsed
        if now - self._last_read_polled > self.window or not self._allowed:
            self._polling = False
            return
        self._loop.call_soon(self._poll)  # type: ignore[union-attr]  # started

    def _next_period(self, now: float) -> None:
        """Whether the next period polls: the loop was busy enough in this one, and its reads came
        mostly within the window of each other."""
        cpu = self._cpu_clock()
        working = cpu - self._period_cpu - self._period_polled
        self._allowed = (working >= BUSY * (now - self._period_start)
                         and self._long <= LONG_GAPS * (self._short + self._long))
        self._period_start, self._period_cpu, self._period_polled = now, cpu, 0.0
        self._short = self._long = 0
