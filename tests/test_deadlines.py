"""server/deadlines.py: deadlines on one loop timer pass at their time, in order, never when
cancelled, whatever order they are cancelled or set in. Loop time is stepped by a fake loop, so
nothing here waits on a clock."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any, Callable

from mlscore.server.deadlines import Deadlines, on_loop


class FakeTimer:
    def __init__(self, loop: "FakeLoop", when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.loop, self._when, self.callback, self.args, self.cancelled = loop, when, callback, args, False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The loop calls Deadlines makes (time, call_at), and a clock that `advance` moves, firing timers due."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> FakeTimer:
        timer = FakeTimer(self, when, callback, args)
        self.timers.append(timer)
        return timer

    def armed(self) -> list[FakeTimer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = sorted((timer for timer in self.armed() if timer.when() <= target), key=FakeTimer.when)
            if not due:
                break
            timer = due[0]
            timer.cancelled = True  # fired: not again
            self.now = max(self.now, timer.when())
            timer.callback(*timer.args)
        self.now = target


def make() -> tuple[FakeLoop, Deadlines, list[tuple[str, float]]]:
    loop = FakeLoop()
    fired: list[tuple[str, float]] = []
    return loop, Deadlines(loop), fired  # type: ignore[arg-type]  # the calls Deadlines makes


def test_deadlines_pass_at_their_time_in_order() -> None:
    loop, deadlines, fired = make()
    for name, delay in [("a", 1.0), ("b", 1.5), ("c", 3.0)]:
        deadlines.call_later(delay, lambda n: fired.append((n, loop.time())), name)
    assert len(loop.armed()) == 1, "one loop timer for deadlines set in order"
    loop.advance(0.99)
    assert fired == []
    loop.advance(0.02)
    assert fired == [("a", 101.0)]
    loop.advance(5)
    assert fired == [("a", 101.0), ("b", 101.5), ("c", 103.0)]
    assert len(deadlines) == 0


def test_a_cancelled_deadline_never_passes_and_leaves_at_once_from_the_head() -> None:
    loop, deadlines, fired = make()
    handles = [deadlines.call_later(1.0 + i / 10, fired.append, i) for i in range(5)]
    handles[0].cancel()
    handles[1].cancel()
    assert len(deadlines) == 3, "cancelled deadlines at the head are dropped"
    handles[3].cancel()  # behind an uncancelled one: stays until the head moves past it
    assert len(deadlines) == 3
    loop.advance(10)
    assert fired == [2, 4]
    assert len(deadlines) == 0


def test_the_timer_is_armed_again_for_the_next_deadline_when_the_head_was_cancelled() -> None:
    loop, deadlines, fired = make()
    first = deadlines.call_later(1.0, fired.append, "first")
    deadlines.call_later(2.0, fired.append, "second")
    first.cancel()
    loop.advance(1.5)  # the timer fires for the cancelled head, and arms itself for the next
    assert fired == []
    assert [timer.when() for timer in loop.armed()] == [102.0]
    loop.advance(0.5)
    assert fired == ["second"]


def test_many_requests_in_flight_cost_one_timer_and_the_fifo_holds_only_those_in_flight() -> None:
    loop, deadlines, fired = make()
    in_flight = []
    for _ in range(10_000):  # each request ends before the one after the next starts
        in_flight.append(deadlines.call_later(60.0, fired.append, "late"))
        if len(in_flight) > 2:
            in_flight.pop(0).cancel()
        loop.advance(0.001)
    assert len(deadlines) <= 3
    assert len(loop.timers) <= 2  # armed once, armed again at most once per deadline length
    assert fired == []


def test_an_earlier_deadline_than_the_last_gets_a_timer_of_its_own() -> None:
    loop, deadlines, fired = make()
    deadlines.call_later(5.0, fired.append, "long")
    short = deadlines.call_later(1.0, fired.append, "short")  # a client's shorter timeout
    assert short.when() == 101.0
    loop.advance(1.0)
    assert fired == ["short"]
    loop.advance(4.0)
    assert fired == ["short", "long"]


def test_a_callback_may_set_deadlines() -> None:
    loop, deadlines, fired = make()

    def again(name: str) -> None:
        fired.append(name)
        if name == "a":
            deadlines.call_later(1.0, again, "c")

    deadlines.call_later(1.0, again, "a")
    deadlines.call_later(1.5, again, "b")
    loop.advance(1.0)
    assert fired == ["a"]
    loop.advance(0.5)
    assert fired == ["a", "b"]
    loop.advance(0.5)
    assert fired == ["a", "b", "c"]


def test_a_cancel_from_a_callback_of_the_same_pass_holds() -> None:
    loop, deadlines, fired = make()
    later: list[Any] = []
    deadlines.call_later(1.0, lambda: (fired.append("a"), later[0].cancel()))
    later.append(deadlines.call_later(1.0, fired.append, "b"))
    loop.advance(2.0)
    assert fired == ["a"]


def test_on_a_real_loop() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        fired: list[str] = []
        done = loop.create_future()
        deadlines.call_later(0.01, fired.append, "a")
        deadlines.call_later(0.02, fired.append, "cancelled").cancel()
        deadlines.call_later(0.03, done.set_result, None)
        await asyncio.wait_for(done, 30)
        return fired

    assert asyncio.run(main()) == ["a"]


def test_a_cancelled_or_passed_deadline_lets_go_of_its_arguments() -> None:
    """A holder that keeps its deadline while the deadline keeps it as an argument is a reference
    cycle: freed only by the garbage collector, whose collections grow with every request."""

    class Holder:
        timer: Any = None

    loop, deadlines, fired = make()
    gc.disable()
    try:
        for end in ("cancel", "pass"):
            holder = Holder()
            holder.timer = deadlines.call_later(1.0, fired.append, holder)
            if end == "cancel":
                holder.timer.cancel()
            else:
                loop.advance(1.0)
            gone = weakref.ref(holder)
            del holder
            fired.clear()
            assert gone() is None, f"a {end}ed deadline still holds its arguments"
    finally:
        gc.enable()


def test_a_shorter_deadline_after_a_cancelled_longer_one_passes_on_time() -> None:
    """The timer armed for a long deadline that was cancelled must not hold back a shorter one set after it."""
    loop, deadlines, fired = make()
    deadlines.call_later(20.0, fired.append, "gone").cancel()  # a queued request whose client left
    deadlines.call_later(0.4, fired.append, "short")  # the next one, with its own 400 ms deadline
    loop.advance(0.4)
    assert fired == ["short"]
    loop.advance(30)
    assert fired == ["short"]


def test_cancelled_deadlines_behind_a_head_that_stays_do_not_pile_up() -> None:
    """One worker in a long run() (its scoring deadline at the head) while another answers thousands:
    their cancelled deadlines must not stay until the head's passes."""
    loop, deadlines, fired = make()
    deadlines.call_later(60.0, fired.append, "long run")
    for _ in range(100_000):
        deadlines.call_later(60.0, fired.append, "quick").cancel()
        loop.advance(0.0001)
    assert len(deadlines) <= 2 * 1 + 256 + 1
    loop.advance(60.0)
    assert fired == ["long run"]


def test_a_cancel_from_a_callback_that_compacts_the_fifo_loses_nothing() -> None:
    loop, deadlines, fired = make()
    later: list[Any] = []
    deadlines.call_later(1.0, lambda: (fired.append("first"), [handle.cancel() for handle in later[:900]]))
    later.extend(deadlines.call_later(1.0, fired.append, i) for i in range(1000))
    loop.advance(1.0)  # the first cancels 900 of those due with it: the FIFO is compacted mid-pass
    assert fired == ["first", *range(900, 1000)]
    assert len(deadlines) == 0


def test_on_loop_keeps_a_loops_deadlines_and_makes_new_ones_for_another() -> None:
    first, second = FakeLoop(), FakeLoop()
    kept = on_loop(None, first)  # type: ignore[arg-type]
    assert on_loop(kept, first) is kept  # type: ignore[arg-type]
    other = on_loop(kept, second)  # type: ignore[arg-type]
    assert other is not kept and other.loop is second
