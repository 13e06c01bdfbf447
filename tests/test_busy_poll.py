"""server/busy_poll.py: the front's loop polls after a read only in periods that follow a busy
one, stops a window after the last read, and never polls when idle; plus the setting's rules and
a real server's polling stopping once its clients stop. The policy runs on a fake loop and fake
clocks (wall and CPU), so nothing here depends on this machine's speed."""

from __future__ import annotations

import asyncio
import http.client
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from mlscore.server import runner
from mlscore.server.busy_poll import BUSY, EMPTY_TURN, LONG_GAPS, PERIOD, BusyPoll
from mlscore.server.settings import Settings, SettingsError
from conftest import ROOT, start_server

MODEL = Path(__file__).resolve().parents[1] / "examples" / "digits_onnx" / "models" / "digits_mlp.onnx"
WINDOW = 0.001


class FakeLoop:
    """call_soon's callbacks run a turn at a time, as a loop runs those ready when its turn starts."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.ready.append(callback)

    def turn(self) -> int:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()
        return len(ready)


class Front:
    """A BusyPoll on a fake loop, with a wall clock and the loop thread's CPU clock moved by hand."""

    def __init__(self) -> None:
        self.wall = 1000.0
        self.cpu = 5.0
        self.loop = FakeLoop()
        self.poll = BusyPoll(clock=lambda: self.wall, cpu_clock=lambda: self.cpu)
        self.poll.start(self.loop, WINDOW)  # type: ignore[arg-type]  # the one call BusyPoll makes

    def read(self, work: float) -> None:
        """A read whose handling takes `work` seconds of the loop's time, in the turn after it."""
        self.poll.woke()
        self.pass_time(work, busy=True)
        self.loop.turn()

    def pass_time(self, seconds: float, busy: bool) -> None:
        self.wall += seconds
        if busy:
            self.cpu += seconds

    def idle_turns(self, seconds: float, turn: float = 1e-6) -> int:
        """Turns of a loop with nothing to do for `seconds`: each polls (CPU time) while a poll is
        ready, else the loop sleeps (no CPU time). The polls made."""
        polls = 0
        end = self.wall + seconds
        while self.wall < end:
            if self.loop.ready:
                self.pass_time(turn, busy=True)
                polls += self.loop.turn()
            else:
                self.wall = end
        return polls

    def busy_period(self, gap: float = 20e-6, work: float = 15e-6) -> None:
        """A period of reads `gap` apart, each with `work` of handling (work/gap of the loop's time)."""
        end = self.wall + PERIOD
        while self.wall < end:
            self.read(work)
            self.idle_turns(gap - work)


def test_a_poller_not_started_or_turned_off_never_polls() -> None:
    BusyPoll().woke()  # the protocols' default, never started: nothing to poll on
    loop = FakeLoop()
    poll = BusyPoll()
    poll.start(loop, 0.0)  # type: ignore[arg-type]  # --busy-poll-us 0
    for _ in range(1000):
        poll.woke()
        loop.turn()
    assert loop.ready == [] and poll.spent == 0


def test_a_busy_front_polls_through_its_gaps_and_stops_a_window_after_the_last_read() -> None:
    front = Front()
    front.busy_period()  # 75 % busy, every read within the window of the one before
    front.busy_period()
    spent = front.poll.spent
    assert spent > 0, "the period after a busy one polls"
    front.read(15e-6)
    polls = front.idle_turns(0.5)  # then nothing comes
    polled = front.poll.spent - spent
    assert WINDOW <= polled <= WINDOW + 10e-6, polled
    assert polls >= WINDOW / 1e-6 * 0.9
    assert front.loop.ready == [], "no poll left once the window passed: the loop sleeps"
    assert front.idle_turns(10.0) == 0, "an idle server does not poll"


def test_a_front_that_mostly_waits_does_not_poll() -> None:
    front = Front()
    # Reads well within the window of each other, but the loop works 20 % of the time: its
    # clients (or its worker) are the slow side, and polling would burn the rest.
    for _ in range(5):
        front.busy_period(gap=100e-6, work=20e-6)
    assert front.poll.spent == 0
    assert 0.2 < BUSY


def test_a_front_whose_reads_come_after_long_gaps_does_not_poll() -> None:
    """A large model: bursts of reads when a batch is answered, then the worker computes for longer
    than the window, during which polling would only take the cores from it."""
    front = Front()
    for _ in range(40):
        for _ in range(4):  # one read in five after a long gap: past LONG_GAPS
            front.read(400e-6)
        front.pass_time(3 * WINDOW, busy=True)  # busy enough, but not with reads
        front.read(400e-6)
    assert 1 / 5 > LONG_GAPS
    assert front.poll.spent == 0


def test_polling_stops_in_a_period_that_follows_a_quiet_one() -> None:
    front = Front()
    front.busy_period()
    front.busy_period()
    assert front.poll.spent > 0
    front.idle_turns(PERIOD * 2)  # no reads: the period is not busy
    spent = front.poll.spent
    front.read(15e-6)  # the first read after it ends that period: the next does not poll
    assert front.loop.ready == []
    front.idle_turns(WINDOW)
    assert front.poll.spent == spent


def test_polling_time_is_only_the_turns_that_did_nothing() -> None:
    front = Front()
    front.busy_period()
    front.busy_period()
    front.read(15e-6)
    spent = front.poll.spent
    front.pass_time(EMPTY_TURN * 3, busy=True)  # a turn that ran a callback: work, not polling
    front.loop.turn()
    assert front.poll.spent == spent
    front.pass_time(EMPTY_TURN / 4, busy=True)
    front.loop.turn()
    assert front.poll.spent == pytest.approx(spent + EMPTY_TURN / 4)


def test_polling_on_a_real_loop_ends_once_reads_stop() -> None:
    """On uvloop, with the loop's CPU clock saying it works all the time (so every period polls):
    reads keep the loop polling, and a window after the last one no callback is left and it sleeps."""
    import uvloop

    window = 0.02

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        poll = BusyPoll(cpu_clock=lambda: 2 * (time.monotonic() - started))  # always busy enough
        poll.start(loop, window)
        while time.monotonic() - started < 3 * PERIOD:  # reads every ms, for three periods
            poll.woke()
            await asyncio.sleep(0.001)
        await asyncio.sleep(window * 5)
        spent = poll.spent
        await asyncio.sleep(window * 5)
        return spent, poll.spent

    before, after = uvloop.run(scenario())
    assert before > 0, "busy periods poll"
    assert after == before, "no polling once the window after the last read has passed"


def test_the_fronts_reads_keep_it_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """The front's real pieces (benchmarks/front_path.py: app, HTTP protocol, process executor and a
    stand-in worker): each client request and each worker answer is a read that tells the poller."""
    import uvloop

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import front_path

    reads = [0]
    monkeypatch.setattr(BusyPoll, "woke", lambda self: reads.__setitem__(0, reads[0] + 1))
    uvloop.run(front_path.measure(connections=4, batch=1, rounds=10, repeats=1, profile=0))
    requests = 4 * (10 + 200)  # with the ruler's 200 warm-up rounds
    assert reads[0] == 2 * requests


@pytest.mark.parametrize("cores, workers, executor, expected", [
    (2, "1", "processes", 0.001), (16, "4", "processes", 0.001), (3, "2", "processes", 0.001),
    (1, "1", "processes", 0.0), (2, "2", "processes", 0.0), (4, "4", "processes", 0.0),
    (4, "1", "threads", 0.0), (4, "1", "inline", 0.0)])
def test_by_default_the_front_polls_only_with_worker_processes_and_a_core_to_spare(
        monkeypatch: pytest.MonkeyPatch, cores: int, workers: str, executor: str, expected: float) -> None:
    monkeypatch.setattr(runner, "default_threads", lambda: cores)
    settings = Settings.build(cli={"model": MODEL, "executor": executor, "workers": workers}, environ={})
    assert runner.busy_poll_window(settings) == expected


def test_the_setting_sets_the_window_or_turns_polling_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "default_threads", lambda: 1)
    assert runner.busy_poll_window(Settings.build(cli={"model": MODEL, "busy_poll_us": "250"}, environ={})) == 250e-6
    monkeypatch.setattr(runner, "default_threads", lambda: 8)
    assert runner.busy_poll_window(Settings.build(cli={"model": MODEL}, environ={"MLSCORE_BUSY_POLL_US": "0"})) == 0


def test_the_flag_with_an_executor_without_workers_is_an_error_and_the_variable_is_unused() -> None:
    with pytest.raises(SettingsError, match="--busy-poll-us.*processes executor"):
        Settings.build(cli={"model": MODEL, "executor": "threads", "busy_poll_us": "100"}, environ={})
    settings = Settings.build(cli={"model": MODEL}, environ={"MLSCORE_EXECUTOR": "inline",
                                                            "MLSCORE_BUSY_POLL_US": "100"})
    assert settings.busy_poll_us is None and runner.busy_poll_window(settings) == 0
    with pytest.raises(SettingsError, match="busy.poll.us"):
        Settings.build(cli={"model": MODEL, "busy_poll_us": "-1"}, environ={})


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's CPU time from /proc")
def test_a_polling_server_answers_right_and_goes_quiet_when_its_clients_stop(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", str(MODEL), "--busy-poll-us", "1000", "--max-batch-size", "8")
    try:
        server.wait_log("busy polling up to 1000 us")
        body = b'{"input": [[%s]]}' % b", ".join(b"%d" % (pixel % 17) for pixel in range(64))
        with urllib.request.urlopen(urllib.request.Request(server.url + "/score", body, method="POST")) as reply:
            expected = reply.read()
        wrong: list[bytes] = []
        host, port = server.url.removeprefix("http://").rsplit(":", 1)

        def client() -> None:
            connection = http.client.HTTPConnection(host, port, timeout=30)
            for _ in range(500):
                connection.request("POST", "/score", body, {"Content-Type": "application/json"})
                got = connection.getresponse().read()
                if got != expected:
                    wrong.append(got)
            connection.close()

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []
        with urllib.request.urlopen(server.url + "/metrics") as reply:
            metrics = reply.read().decode()
        assert "mlscore_busy_poll_seconds_total" in metrics
        time.sleep(0.2)  # past any window after the last read
        before = _cpu_seconds(server.process.pid)
        time.sleep(1.0)
        idle_cpu = _cpu_seconds(server.process.pid) - before
        assert idle_cpu < 0.1, f"the front used {idle_cpu:.2f} s of CPU in a second without clients"
    finally:
        server.stop()
