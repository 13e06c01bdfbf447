"""Slow bodies at scale (issue 16, item 3): many connections that each declare a large body and send
one byte of it every few seconds, against an mlscore server whose connection bound is below their
number, while health and scoring are probed on fresh connections once a second.

Before the fix such a trickle never paused for --body-timeout, so it held its connection for as long
as its body was long, the table stayed full, and every probe, /health/live included, was a 503. Now a
body must average --body-min-rate bytes a second after its first --body-timeout seconds (defaults 500
and 30: a byte every 20 s is cut at about 30 s), and the health routes answer past the bound.

The server is ``mlscore serve`` on ``examples/diabetes/score.py`` (extra flags: ``--server-args``),
the attackers and probes are asyncio raw sockets in this one process. The soft limit on open files
is raised to the hard one (the server inherits it); --connections is capped below it. Printed: the
attackers' connections held over time, when the server cut them (408) or refused them (503), and
the status counts of the health and scoring probes, every --report-every seconds and in total.
``--reconnect`` has each attacker open a new connection as soon as one is closed, as a persistent
attacker would: then the table refills and only the health routes keep answering.

    .venv/bin/python benchmarks/slow_bodies.py                     # 2000 connections, bound 1950, 75 s
    .venv/bin/python benchmarks/slow_bodies.py --duration 40 --server-args "--body-min-rate 0"
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import shlex
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from http_bench import (  # run as a script, benchmarks/ is on sys.path
    BODY, HOST, REPO, ServerSpec, _raise_on_sigterm, check_score, free_port, mlscore_command, run_script,
    start_server, stop_servers, wait_ready,
)

ENTRY_SCRIPT = REPO / "examples" / "diabetes" / "score.py"
MODEL_DIR = REPO / "examples" / "diabetes" / "models"
FILES_SPARE = 200  # open files left to the rest of each process (the server's own, the probes)
CONNECT_AT_ONCE = 200  # connections being opened at a time, within the server's listen backlog
PROBE_TIMEOUT_S = 5.0


@dataclass
class Figures:
    """What the attackers and the probes saw, in seconds since the attack began."""

    started: float
    over: bool = False  # the attack's time is up: attackers stop reconnecting
    held: int = 0  # attacker connections open now
    opened: int = 0
    answers: list[tuple[float, int]] = field(default_factory=list)  # (when, status) of attackers answered
    held_for: list[float] = field(default_factory=list)  # seconds from connect to the server's 408
    closed_unanswered: int = 0  # closed or reset by the server without an answer
    probes: list[tuple[float, str, str, float]] = field(default_factory=list)  # when, route, outcome, seconds

    def now(self) -> float:
        return time.monotonic() - self.started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000, help="slow-body connections (default 2000)")
    parser.add_argument("--max-connections", type=int, help="the server's --max-connections "
                        "(default: 50 below --connections, as in the issue's 10,050 against 10,000)")
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between an attacker's bytes (20)")
    parser.add_argument("--content-length", type=int, default=1_000_000, help="declared body length (1000000)")
    parser.add_argument("--duration", type=float, default=75.0, help="seconds of attack and probes (75)")
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds per line of the timeline (5)")
    parser.add_argument("--reconnect", action="store_true", help="attackers reconnect when closed")
    parser.add_argument("--server-args", default="", help="more mlscore serve flags, one string")
    return parser.parse_args()


def raise_open_files(wanted: int) -> int:
    """Raise the soft limit on open files to the hard one; the connections that fit under it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return min(wanted, hard - FILES_SPARE)


async def slow_client(port: int, head: bytes, interval: float, figures: Figures, opening: asyncio.Semaphore,
                      reconnect: bool) -> None:
    """One attacker: the headers, then a byte every `interval` seconds (the first after a random part
    of it, to spread the bytes), until the server answers or closes; again when `reconnect`, at once
    after a 408 and a second after a 503 (its Retry-After: the run measures a table held full, not a
    flood of connections the server turns away)."""
    while not figures.over:
        async with opening:
            reader, writer = await asyncio.open_connection(HOST, port)
        connected = figures.now()
        figures.opened += 1
        figures.held += 1
        status: int | None = None
        try:
            writer.write(head)
            next_byte = connected + random.uniform(0, interval)
            answer = None
            while answer is None:
                try:
                    async with asyncio.timeout(max(next_byte - figures.now(), 0)):
                        answer = await reader.read(256)
                except TimeoutError:
                    writer.write(b"x")
                    next_byte += interval
            if not answer.startswith(b"HTTP/1.1 "):
                raise ConnectionResetError
            status = int(answer.split(b" ", 2)[1])
            figures.answers.append((figures.now(), status))
            if status == 408:
                figures.held_for.append(figures.now() - connected)
        except ConnectionError:  # reset, or closed without an answer
            figures.closed_unanswered += 1
        finally:
            figures.held -= 1
            writer.close()
        if not reconnect:
            return
        if status == 503:
            await asyncio.sleep(1)


async def probe(port: int, route: str, request: bytes, figures: Figures) -> None:
    """One request on a fresh connection; its outcome is the status, or what went wrong."""
    sent = figures.now()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(request)
                line = await reader.readline()
            finally:
                writer.close()
        outcome = line.split(b" ", 2)[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"
    except TimeoutError:
        outcome = "timeout"
    except OSError as error:
        outcome = type(error).__name__
    figures.probes.append((sent, route, outcome, figures.now() - sent))


async def probe_every_second(port: int, figures: Figures, until: float) -> None:
    health = f"GET /health/live HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    score = (f"POST /score HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nConnection: close\r\n"
             f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    probes: set[asyncio.Task[None]] = set()
    second = 0
    while (at := second * 1.0) < until:
        await asyncio.sleep(max(at - figures.now(), 0))
        for route, request in (("health", health), ("score", score)):
            task = asyncio.create_task(probe(port, route, request, figures))
            probes.add(task)
            task.add_done_callback(probes.discard)
        second += 1
    await asyncio.gather(*probes)


def counts(outcomes: list[str]) -> str:
    return " ".join(f"{outcome}x{number}" for outcome, number in sorted(Counter(outcomes).items())) or "-"


async def report_every(seconds: float, figures: Figures, until: float) -> None:
    print(f"{'t (s)':>6} {'held':>6} {'408s':>6} {'503s':>6} {'closed':>6}  health probes      score probes",
          flush=True)
    mark = 0.0
    while mark < until:
        mark = min(mark + seconds, until)
        await asyncio.sleep(max(mark - figures.now(), 0))
        answered = Counter(status for _, status in figures.answers)
        window = [(route, outcome) for sent, route, outcome, _ in figures.probes if mark - seconds <= sent < mark]
        print(f"{mark:6.0f} {figures.held:6d} {answered[408]:6d} {answered[503]:6d} {figures.closed_unanswered:6d}  "
              f"{counts([o for r, o in window if r == 'health']):18} {counts([o for r, o in window if r == 'score'])}",
              flush=True)


async def attack(port: int, args: argparse.Namespace, connections: int) -> Figures:
    head = (f"POST /score HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {args.content_length}\r\n\r\n").encode()
    figures = Figures(started=time.monotonic())
    opening = asyncio.Semaphore(CONNECT_AT_ONCE)
    attackers = [asyncio.create_task(slow_client(port, head, args.interval, figures, opening, args.reconnect))
                 for _ in range(connections)]
    await asyncio.gather(probe_every_second(port, figures, args.duration),
                         report_every(args.report_every, figures, args.duration))
    figures.over = True
    for attacker in attackers:
        attacker.cancel()
    await asyncio.gather(*attackers, return_exceptions=True)
    return figures


def summary(figures: Figures) -> list[str]:
    lines = [f"attacker connections opened: {figures.opened}"]
    answered = Counter(status for _, status in figures.answers)
    lines.append(f"attackers answered: {counts([str(s) for _, s in figures.answers])}; "
                 f"closed without an answer: {figures.closed_unanswered}")
    if figures.held_for:
        cuts = [when for when, status in figures.answers if status == 408]
        lines.append(f"408s: {answered[408]}, the first at {min(cuts):.1f} s and the last at {max(cuts):.1f} s "
                     f"into the attack; a connection was held {min(figures.held_for):.1f} / "
                     f"{statistics.median(figures.held_for):.1f} / {max(figures.held_for):.1f} s "
                     "(min / median / max) before its 408")
    for route in ("health", "score"):
        done = [(outcome, seconds) for _, r, outcome, seconds in figures.probes if r == route]
        latency = statistics.median(seconds for _, seconds in done) * 1000 if done else 0.0
        lines.append(f"{route} probes: {counts([outcome for outcome, _ in done])} (median {latency:.1f} ms)")
    return lines


def main() -> int:
    args = parse_args()
    connections = raise_open_files(args.connections)
    bound = args.max_connections or max(connections - 50, 1)
    port = free_port()
    extra = ["--max-connections", str(bound), *shlex.split(args.server_args)]
    spec = ServerSpec("mlscore", "mlscore", mlscore_command(port, ENTRY_SCRIPT, MODEL_DIR, extra), port)
    print(f"starting {shlex.join(spec.argv)}", flush=True)
    server = start_server(spec)
    try:
        wait_ready(server)
        check_score(server)
        print(f"{connections} connections, Content-Length {args.content_length}, a byte every {args.interval:g} s"
              f"{', reconnecting' if args.reconnect else ''}; --max-connections {bound}; probes once a second "
              f"for {args.duration:g} s", flush=True)
        figures = asyncio.run(attack(port, args, connections))
    finally:
        stop_servers([server])
    print("\n".join(summary(figures)))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    run_script(main)
