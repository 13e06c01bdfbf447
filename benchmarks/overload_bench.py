"""Overload benchmark: three times a server's capacity, offered open-loop, against mlscore and the peer.

The entry script ``benchmarks/overload_score.py`` holds a slot for 10 ms per ``run()``; each
server gets two slots (mlscore ``--max-concurrent-requests 2`` with ``--executor threads`` and
with ``--executor processes --workers 2``; azureml-inference-server-http with two gunicorn
workers), so capacity is about 200 req/s. An open-loop client sends POST /score on a fixed
schedule whatever the server does (a closed-loop client such as wrk slows down with the server
and hides overload), over keep-alive connections from a pool that grows as needed.

Cells, servers alternated cell by cell so that drift of the machine is spread over all of them:

- the sweep: ``--sweep-loads`` times capacity (default 0.5, 1, 1.5, 2, 3) for ``--sweep-duration``
  seconds each, plotted to ``benchmarks/overload.png`` (accepted p50/p99 latency and the share
  rejected against offered load);
- the main cell: 3x capacity (600 req/s) for ``--duration`` seconds, checked against the targets
  of issue 3, item 8: accepted p99 <= maxQueueWaitMs + 30 ms; every 503 carries Retry-After;
  rejections answered within 5 ms of their deadline at p99 (a queue-timeout rejection's deadline
  is maxQueueWaitMs after the request was written, a queue-full rejection's is at once); no other
  status, socket error or client timeout; server RSS (all its processes) flat over the cell.

The peer has no admission control: the main cell shows how its latency grows, window by window.
``--write-results`` appends a dated section to ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/overload_bench.py --write-results
    .venv/bin/python benchmarks/overload_bench.py --servers threads --duration 5 --sweep-duration 0
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import math
import multiprocessing
import os
import re
import resource
import shlex
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from http_bench import (  # run as a script, benchmarks/ is on sys.path
    BENCH, BUSY_SHARE, HOST, LOGS, REPO, RESULTS_MD, VENV_PY, WORK, Server, ServerSpec, _raise_on_sigterm,
    append_results, cpu_busy_share, ensure_peer_venv, environment_lines, free_port, git_revision, markdown_table,
    mlscore_command, name_list, package_versions, peer_command, run_script, start_all, stop_servers, wait_idle,
)

ENTRY_SCRIPT = BENCH / "overload_score.py"
MODEL_DIR = WORK / "overload-models"  # the script loads no model; both servers want a folder
PLOT_PNG = BENCH / "overload.png"
LOG_DIR = LOGS / "overload"

CONCURRENCY = 2
RUN_MS = 10.0
CAPACITY_RPS = CONCURRENCY * 1000.0 / RUN_MS
MAX_QUEUE_WAIT_MS = 500
MAIN_LOAD = 3.0  # times capacity

# Targets (issue 3, item 8).
ACCEPTED_P99_SLACK_MS = 30.0  # accepted p99 <= maxQueueWaitMs + this
REJECTION_LATENESS_P99_MS = 5.0
RSS_GROWTH_LIMIT_MIB = 10.0  # "flat": end minus start of the main cell
RSS_INTERVAL_S = 1.0
WINDOW_S = 5.0  # latency over time, main cell

# The client should send on time; further behind than this it is the bottleneck, not the server.
SEND_LATENESS_P99_LIMIT_MS = 5.0
ACHIEVED_RATE_SHARE = 0.99
START_DELAY_S = 0.1  # from the cell's start to its first send, so the first RSS sample comes before load
POOL_IDLE_LIMIT_S = 30.0  # well under mlscore's 75 s keep-alive: never reuse a connection the server may close

BODY = b'{"data": [[1, 2, 3]]}'
LATENESS_BUCKETS_MS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
WAITED = re.compile(r"Waited (\d+) ms")
SERVER_CHOICES = ("threads", "processes", "peer")


# --------------------------------------------------------------------------- the open-loop client


@dataclass(slots=True)
class Outcome:
    """One request: when it was due, when it went out, and what came back. Times are loop.time()."""

    scheduled: float
    started: float = math.nan  # when the client got to it: lateness = started - scheduled
    written: float = math.nan  # latency is measured from here
    done: float = math.nan
    status: int = 0  # 0: no response
    error: str = ""  # "timeout", "timeout connecting" or an exception's class name
    retry_after: str | None = None
    message: str = ""  # a 503's JSON message

    @property
    def latency_ms(self) -> float:
        return (self.done - self.written) * 1000.0


class PooledConnection:
    """A keep-alive connection; busy from the request's write until its response has been read."""

    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (not self.reader.at_eof() and not self.writer.is_closing()
                and now - self.idle_since < POOL_IDLE_LIMIT_S)

    def close(self) -> None:
        self.writer.close()


class OpenLoopClient:
    """Sends POST /score at a fixed rate, whatever the server does, and records every outcome.

    Sends are scheduled against ``loop.time()``: request i is due at start + i / rate, and the
    client never waits for an answer before sending the next one. A request takes an idle
    connection (the most recently used) or opens a new one, so the pool grows to however many
    requests are outstanding. Responses must carry Content-Length; ``Connection: close`` (the
    peer's gunicorn sync workers) closes the connection after the response.
    """

    def __init__(self, port: int, timeout_s: float) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._request = (f"POST /score HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
        self._idle: list[PooledConnection] = []

    async def run(self, rate: float, duration_s: float) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        count = max(1, round(rate * duration_s))
        start = loop.time() + START_DELAY_S
        outcomes = [Outcome(start + i / rate) for i in range(count)]
        tasks = []
        for outcome in outcomes:
            delay = outcome.scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(self._send(outcome)))
        await asyncio.gather(*tasks)
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        return outcomes

    async def _send(self, outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        outcome.started = loop.time()
        try:
            await asyncio.wait_for(self._exchange(outcome), self.timeout_s)
        except asyncio.TimeoutError:
            outcome.error = "timeout connecting" if math.isnan(outcome.written) else "timeout"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as error:
            outcome.error = type(error).__name__
        if outcome.error:
            outcome.done = loop.time()

    async def _exchange(self, outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        connection = await self._acquire()
        keep = False
        try:
            connection.writer.write(self._request)
            outcome.written = loop.time()
            head = await connection.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await connection.reader.readexactly(int(headers["content-length"]))
            outcome.done = loop.time()
            outcome.status = int(status_line.split(" ", 2)[1])
            outcome.retry_after = headers.get("retry-after")
            if outcome.status == 503:
                outcome.message = _json_message(body)
            keep = headers.get("connection", "").lower() != "close"
        except KeyError as error:
            raise ValueError(f"response without {error}") from None
        finally:
            if keep:
                connection.idle_since = loop.time()
                self._idle.append(connection)
            else:
                connection.close()

    async def _acquire(self) -> PooledConnection:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        reader, writer = await asyncio.open_connection(HOST, self.port)
        return PooledConnection(reader, writer)


def _json_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


# --------------------------------------------------------------------------- server memory


def process_tree_rss(root: int) -> int:
    """RSS in bytes of ``root``, every process in its process group and every descendant of it."""
    stats: dict[int, tuple[int, int, int]] = {}  # pid: (ppid, pgrp, rss pages)
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(path.parent.name)] = (int(fields[1]), int(fields[2]), int(fields[21]))
    members = {pid for pid, (_, pgrp, _) in stats.items() if pgrp == root or pid == root}
    grown = True
    while grown:  # descendants that started a session of their own
        more = {pid for pid, (ppid, _, _) in stats.items() if ppid in members} - members
        members |= more
        grown = bool(more)
    return sum(stats[pid][2] for pid in members) * os.sysconf("SC_PAGE_SIZE")


def sample_rss(root: int, pipe: Connection) -> None:
    """In a process of its own, so that reading /proc never delays the client's sends: one
    (monotonic time, RSS) sample now, then one a second until told to stop, then a last one."""
    while True:
        pipe.send((time.monotonic(), process_tree_rss(root)))
        if pipe.poll(RSS_INTERVAL_S):
            pipe.recv()  # read before closing: a socket closed with unread data resets the other end
            break
    pipe.send((time.monotonic(), process_tree_rss(root)))
    pipe.close()


# --------------------------------------------------------------------------- one cell


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def rejection_deadline_ms(message: str) -> float | None:
    """How long after its write a 503 may come: its queue wait, or at once when the queue was full."""
    waited = WAITED.search(message)
    if waited:
        return float(waited.group(1))
    if message.startswith("Queue full"):
        return 0.0
    return None


@dataclass
class Cell:
    """One open-loop run against one server."""

    server: str
    kind: str
    target_rps: float
    duration_s: float
    outcomes: list[Outcome]
    rss: list[tuple[float, int]]  # (monotonic time, bytes)
    client_cpu_s: float

    @property
    def load(self) -> float:
        return self.target_rps / CAPACITY_RPS

    @property
    def achieved_rps(self) -> float:
        span = self.outcomes[-1].started - self.outcomes[0].started
        return (len(self.outcomes) - 1) / span if span > 0 else math.nan

    @property
    def send_lateness_ms(self) -> list[float]:
        return [(o.started - o.scheduled) * 1000.0 for o in self.outcomes]

    @property
    def client_cpu_share(self) -> float:
        span = max(o.done for o in self.outcomes) - self.outcomes[0].scheduled
        return self.client_cpu_s / span if span > 0 else math.nan

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 503]

    @property
    def errors(self) -> Counter[str]:
        """Everything that is neither a 200 nor a 503: other statuses and socket errors/timeouts."""
        return Counter(o.error or f"status {o.status}" for o in self.outcomes if o.status not in (200, 503))

    def accepted_ms(self, q: float) -> float:
        return percentile([o.latency_ms for o in self.accepted], q)

    def share(self, outcomes: list[Outcome]) -> float:
        return len(outcomes) / len(self.outcomes)

    @property
    def rejection_lateness_ms(self) -> list[float]:
        """Per 503: its latency past its deadline; infinite for a 503 that names no deadline."""
        late = []
        for outcome in self.rejected:
            deadline = rejection_deadline_ms(outcome.message)
            late.append(math.inf if deadline is None else outcome.latency_ms - deadline)
        return late

    def rejection_kinds(self) -> Counter[str]:
        def kind(message: str) -> str:
            if WAITED.search(message):
                return "timeout"
            return "full" if message.startswith("Queue full") else "other"
        return Counter(kind(o.message) for o in self.rejected)

    @property
    def rss_mib(self) -> tuple[float, float, float]:
        """Start, max and end RSS of the server's processes over the cell."""
        values = [rss / 2**20 for _, rss in self.rss]
        return (values[0], max(values), values[-1]) if values else (math.nan,) * 3


def run_cell(server: Server, rps: float, duration_s: float, timeout_s: float) -> Cell:
    """Offer ``rps`` for ``duration_s`` while a separate process samples the server's RSS."""
    context = multiprocessing.get_context("fork")  # at once; spawn would import the harness again
    ours, theirs = context.Pipe()
    sampler = context.Process(target=sample_rss, args=(server.proc.pid, theirs), daemon=True)
    sampler.start()
    theirs.close()
    client = OpenLoopClient(server.spec.port, timeout_s)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    gc.disable()  # a full collection over thousands of outcomes and tasks would stall the sends
    try:
        outcomes = asyncio.run(client.run(rps, duration_s))
    finally:
        gc.enable()
        ours.send("stop")
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    rss: list[tuple[float, int]] = []
    with ours:
        while True:
            try:
                rss.append(ours.recv())
            except EOFError:
                break
    sampler.join()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return Cell(server.spec.name, server.spec.kind, rps, duration_s, outcomes, rss, cpu)


def cell_line(cell: Cell) -> str:
    kinds = cell.rejection_kinds()
    errors = ", ".join(f"{name} {count}" for name, count in cell.errors.most_common()) or "none"
    return (f"{cell.server:<17} {cell.target_rps:5.0f} req/s ({cell.achieved_rps:5.0f} sent, lateness p99 "
            f"{percentile(cell.send_lateness_ms, 99):.2f} ms)  200: {len(cell.accepted):5d} "
            f"p50 {cell.accepted_ms(50):7.1f} p99 {cell.accepted_ms(99):7.1f} ms  503: {len(cell.rejected):5d} "
            f"(timeout {kinds['timeout']}, full {kinds['full']}) late p99 "
            f"{percentile(cell.rejection_lateness_ms, 99):.2f} ms  errors: {errors}")


# --------------------------------------------------------------------------- targets


@dataclass
class Verdict:
    target: str
    passed: bool
    detail: str


def verdicts(cell: Cell) -> list[Verdict]:
    """The main cell against the targets of issue 3, item 8."""
    limit = MAX_QUEUE_WAIT_MS + ACCEPTED_P99_SLACK_MS
    p99 = cell.accepted_ms(99)
    no_retry_after = sum(1 for o in cell.rejected if o.retry_after is None)
    lateness = cell.rejection_lateness_ms
    late_p99 = percentile(lateness, 99)
    on_time = sum(1 for late in lateness if late <= REJECTION_LATENESS_P99_MS)
    errors = cell.errors
    start, peak, end = cell.rss_mib
    return [
        Verdict(f"accepted p99 <= {limit:.0f} ms", p99 <= limit,
                f"{p99:.1f} ms over {len(cell.accepted)} accepted" if cell.accepted else "nothing accepted"),
        Verdict("every 503 carries Retry-After", no_retry_after == 0,
                f"{len(cell.rejected) - no_retry_after} of {len(cell.rejected)}"),
        Verdict(f"rejections within {REJECTION_LATENESS_P99_MS:g} ms of their deadline (p99)",
                not lateness or late_p99 <= REJECTION_LATENESS_P99_MS,
                f"p99 {late_p99:+.2f} ms, min {min(lateness):+.2f}, max {max(lateness):+.2f} ms, "
                f"{on_time} of {len(lateness)} on time"
                if lateness else "no rejections"),
        Verdict("no other status, socket error or timeout", not errors,
                ", ".join(f"{name}: {count}" for name, count in errors.most_common()) or "none"),
        Verdict(f"RSS flat (growth <= {RSS_GROWTH_LIMIT_MIB:g} MiB)", end - start <= RSS_GROWTH_LIMIT_MIB,
                f"start {start:.1f}, max {peak:.1f}, end {end:.1f} MiB: {end - start:+.1f} MiB"),
    ]


def generator_verdict(cells: list[Cell]) -> Verdict:
    """Whether the client sent on schedule in every cell (else it, not the server, set the pace)."""
    worst_rate = min(cells, key=lambda c: c.achieved_rps / c.target_rps)
    worst_late = max(cells, key=lambda c: percentile(c.send_lateness_ms, 99))
    late_p99 = percentile(worst_late.send_lateness_ms, 99)
    share = worst_rate.achieved_rps / worst_rate.target_rps
    passed = share >= ACHIEVED_RATE_SHARE and late_p99 <= SEND_LATENESS_P99_LIMIT_MS
    busiest = max(cells, key=lambda c: c.client_cpu_share)
    return Verdict(
        f"the client kept its schedule (sent >= {ACHIEVED_RATE_SHARE:.0%} of the rate, "
        f"send lateness p99 <= {SEND_LATENESS_P99_LIMIT_MS:g} ms)", passed,
        f"lowest achieved/target {share:.3f} ({worst_rate.server} at {worst_rate.target_rps:.0f} req/s), "
        f"worst lateness p99 {late_p99:.2f} ms ({worst_late.server} at {worst_late.target_rps:.0f} req/s), "
        f"client CPU at most {busiest.client_cpu_share:.0%} of a core")


def verdict_lines(cell: Cell) -> list[str]:
    note = " (reference: no admission control)" if cell.kind == "peer" else ""
    lines = [f"{cell.server}{note}:"]
    for verdict in verdicts(cell):
        lines.append(f"  - {'PASS' if verdict.passed else 'FAIL'} {verdict.target}: {verdict.detail}")
    return lines


# --------------------------------------------------------------------------- tables


def fmt(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def main_table(cells: list[Cell]) -> str:
    lines = [["server", "offered req/s (sent)", "requests", "200", "503 timeout/full", "errors",
              "200 p50 ms", "200 p99 ms", "503 late p99 ms", "RSS MiB start/max/end", "RSS growth MiB"],
             ["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]]
    for cell in cells:
        kinds = cell.rejection_kinds()
        rejected = f"{kinds['timeout']}/{kinds['full']}" + (f" + {kinds['other']} other" if kinds["other"] else "")
        start, peak, end = cell.rss_mib
        lines.append([
            cell.server, f"{cell.target_rps:.0f} ({cell.achieved_rps:.1f})", str(len(cell.outcomes)),
            str(len(cell.accepted)), rejected, str(sum(cell.errors.values())), fmt(cell.accepted_ms(50)), fmt(cell.accepted_ms(99)),
            fmt(percentile(cell.rejection_lateness_ms, 99), 2), f"{start:.0f}/{peak:.0f}/{end:.0f}",
            f"{end - start:+.1f}",
        ])
    return markdown_table(lines)


def window_table(cells: list[Cell]) -> str:
    """The main cell in WINDOW_S slices of send time: how latency and failures move over the cell."""
    lines = [["server", "seconds", "sent", "200", "503", "errors", "200 p50 ms", "200 p99 ms", "RSS MiB at end"],
             ["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]]
    for cell in cells:
        first = cell.outcomes[0].scheduled
        windows = math.ceil(cell.duration_s / WINDOW_S)
        for index in range(windows):
            part = [o for o in cell.outcomes if index <= (o.scheduled - first) / WINDOW_S < index + 1]
            accepted = [o.latency_ms for o in part if o.status == 200]
            end = first + (index + 1) * WINDOW_S
            rss = [value for at, value in cell.rss if at <= end]
            lines.append([
                cell.server, f"{index * WINDOW_S:g}–{min(cell.duration_s, (index + 1) * WINDOW_S):g}",
                str(len(part)), str(len(accepted)), str(sum(1 for o in part if o.status == 503)),
                str(sum(1 for o in part if o.status not in (200, 503))),
                fmt(percentile(accepted, 50)), fmt(percentile(accepted, 99)),
                fmt(rss[-1] / 2**20) if rss else "–",
            ])
    return markdown_table(lines)


def lateness_histogram(cells: list[Cell]) -> str:
    """How far past its deadline each 503 came, in buckets of milliseconds."""
    edges = LATENESS_BUCKETS_MS
    labels = ["< 0"] + [f"{lo:g}–{hi:g}" for lo, hi in zip(edges, edges[1:])] + [f">= {edges[-1]:g}"]
    lines = [["server", *labels], ["---", *["--:"] * len(labels)]]
    for cell in cells:
        if not cell.rejected:
            continue
        counts = [0] * len(labels)
        for late in cell.rejection_lateness_ms:
            counts[sum(1 for edge in edges if late >= edge)] += 1
        lines.append([cell.server, *map(str, counts)])
    return markdown_table(lines) if len(lines) > 2 else "(no 503s)"


def sweep_table(cells: list[Cell]) -> str:
    lines = [["server", "load", "offered req/s (sent)", "200 %", "503 %", "errors %", "200 p50 ms",
              "200 p99 ms", "503 late p99 ms", "send lateness p99 ms"],
             ["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]]
    for cell in sorted(cells, key=lambda c: (c.server, c.target_rps)):
        errors = sum(cell.errors.values()) / len(cell.outcomes)
        lines.append([
            cell.server, f"{cell.load:g}x", f"{cell.target_rps:.0f} ({cell.achieved_rps:.1f})",
            f"{cell.share(cell.accepted):.1%}", f"{cell.share(cell.rejected):.1%}", f"{errors:.1%}",
            fmt(cell.accepted_ms(50)), fmt(cell.accepted_ms(99)), fmt(percentile(cell.rejection_lateness_ms, 99), 2),
            fmt(percentile(cell.send_lateness_ms, 99), 2),
        ])
    return markdown_table(lines)


# --------------------------------------------------------------------------- the plot


def plot_sweep(cells: list[Cell], path: Path) -> None:
    """Accepted p50/p99 latency and the share rejected against offered load, one line style per server."""
    # Imported here: only the plot needs matplotlib, and Agg must be chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"mlscore threads": ("tab:blue", "o"), "mlscore processes": ("tab:green", "s")}
    figure, (latency, rejected) = plt.subplots(1, 2, figsize=(12, 4.8))
    for server in dict.fromkeys(c.server for c in cells):
        points = sorted((c for c in cells if c.server == server), key=lambda c: c.target_rps)
        color, marker = styles.get(server, ("tab:red", "^"))
        offered = [c.target_rps for c in points]
        latency.plot(offered, [c.accepted_ms(99) for c in points], color=color, marker=marker, label=f"{server} p99")
        latency.plot(offered, [c.accepted_ms(50) for c in points], color=color, marker=marker, linestyle="--",
                     markerfacecolor="none", label=f"{server} p50")
        rejected.plot(offered, [100 * c.share(c.rejected) for c in points], color=color, marker=marker,
                      label=f"{server}: 503")
        failed = [100 * sum(c.errors.values()) / len(c.outcomes) for c in points]
        if any(failed):
            rejected.plot(offered, failed, color=color, marker=marker, linestyle=":", markerfacecolor="none",
                          label=f"{server}: errors/timeouts")
    for axes in (latency, rejected):
        axes.axvline(CAPACITY_RPS, color="grey", linewidth=0.8, linestyle="-.")
        axes.set_xlabel(f"offered load, req/s (dash-dot: capacity ≈ {CAPACITY_RPS:.0f})")
        axes.grid(True, which="both", alpha=0.3)
    latency.axhline(MAX_QUEUE_WAIT_MS, color="grey", linewidth=0.8, linestyle=":")
    latency.set_yscale("log")
    latency.set_ylabel("accepted (200) latency, ms")
    latency.set_title(f"run() {RUN_MS:g} ms, {CONCURRENCY} slots, maxQueueWaitMs {MAX_QUEUE_WAIT_MS} (dotted)")
    latency.legend(fontsize=7)
    rejected.set_ylabel("% of requests")
    rejected.set_title("rejected (503) and failed, of requests sent")
    rejected.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------- arguments and servers


def float_list(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma list of positive numbers, got {text!r}")
    return values


server_list = name_list(SERVER_CHOICES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Open-loop overload benchmark of mlscore and the peer.")
    parser.add_argument("--duration", type=float, default=20.0,
                        help=f"seconds of the main cell at {MAIN_LOAD:g}x capacity (default 20)")
    parser.add_argument("--sweep-duration", type=float, default=5.0,
                        help="seconds per sweep cell; 0 skips the sweep and the plot (default 5)")
    parser.add_argument("--sweep-loads", type=float_list, default=[0.5, 1.0, 1.5, 2.0, 3.0],
                        help="comma list of offered loads, times capacity (default 0.5,1,1.5,2,3)")
    parser.add_argument("--servers", type=server_list, default=list(SERVER_CHOICES),
                        help="comma list among threads,processes,peer (default all)")
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, s (default 10)")
    parser.add_argument("--write-results", action="store_true", help=f"append a dated section to {RESULTS_MD.name}")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.sweep_duration < 0 or args.timeout <= 0:
        parser.error("--duration and --timeout must be > 0, --sweep-duration >= 0")
    return args


def build_specs(servers: list[str]) -> list[ServerSpec]:
    admission = ["--max-concurrent-requests", str(CONCURRENCY), "--max-queue-wait-ms", str(MAX_QUEUE_WAIT_MS)]
    executors = {"threads": ["--executor", "threads"],
                 "processes": ["--executor", "processes", "--workers", str(CONCURRENCY)]}
    specs = []
    for name in servers:
        port = free_port()
        if name == "peer":
            # cwd and AML_APP_ROOT as in http_bench.build_specs; one gunicorn sync worker per slot.
            specs.append(ServerSpec(f"peer w={CONCURRENCY}", "peer", peer_command(port, ENTRY_SCRIPT, MODEL_DIR), port,
                                    env={"WORKER_COUNT": str(CONCURRENCY), "AML_APP_ROOT": str(REPO)},
                                    cwd=MODEL_DIR, log_dir=LOG_DIR))
            continue
        argv = mlscore_command(port, ENTRY_SCRIPT, MODEL_DIR, [*admission, *executors[name]])
        specs.append(ServerSpec(f"mlscore {name}", "mlscore", argv, port, log_dir=LOG_DIR))
    return specs


def settle(server: Server) -> None:
    """Let the server drain what an earlier cell left (the peer keeps scoring abandoned requests)."""
    wait_idle(server, deadline_s=60.0)


# --------------------------------------------------------------------------- the run


def measure(servers: list[Server], args: argparse.Namespace) -> tuple[list[Cell], list[Cell]]:
    """The sweep, then the main cell; at each load, one cell per server in turn."""
    loads = args.sweep_loads if args.sweep_duration > 0 else []
    total = (len(loads) + 1) * len(servers)
    cells: list[Cell] = []

    def one_round(load: float, duration_s: float) -> list[Cell]:
        round_cells = []
        for server in servers:
            settle(server)
            cell = run_cell(server, load * CAPACITY_RPS, duration_s, args.timeout)
            cells.append(cell)
            round_cells.append(cell)
            print(f"[{len(cells)}/{total}] {load:g}x {duration_s:g} s  {cell_line(cell)}", flush=True)
        return round_cells

    sweep = [cell for load in loads for cell in one_round(load, args.sweep_duration)]
    return sweep, one_round(MAIN_LOAD, args.duration)


def report(sweep: list[Cell], main: list[Cell], plot: Path | None) -> list[str]:
    """The results as Markdown lines, for the terminal and for RESULTS.md."""
    lines = [f"Main cell: {MAIN_LOAD:g}x capacity ({MAIN_LOAD * CAPACITY_RPS:.0f} req/s), "
             f"{main[0].duration_s:g} s, open loop.", "", main_table(main), "",
             "Targets:", ""]
    for cell in main:
        lines.extend(verdict_lines(cell))
    generator = generator_verdict(sweep + main)
    lines += ["", f"Load generator: {'PASS' if generator.passed else 'FAIL'} {generator.target}: {generator.detail}",
              "", f"Main cell over time ({WINDOW_S:g} s windows of send time):", "", window_table(main), "",
              "How late each 503 came after its deadline (ms; deadline = the wait its message names, 0 for "
              "queue full), main cell:", "", lateness_histogram(main), ""]
    if sweep:
        lines += ["Sweep (offered load against capacity):", "", sweep_table(sweep), ""]
    if plot is not None:
        lines += [f"Plot: `{plot.relative_to(REPO)}`", ""]
    return lines


def write_results(args: argparse.Namespace, lines: list[str], ready_s: dict[str, float], busy_before: float) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    matplotlib = package_versions(VENV_PY, ["matplotlib"]).get("matplotlib", "not installed")
    sweep = (f"sweep {','.join(f'{load:g}' for load in args.sweep_loads)}x for {args.sweep_duration:g} s each "
             f"(plotted with matplotlib {matplotlib}), " if args.sweep_duration > 0 else "no sweep, ")
    section = [
        f"## {stamp}: overload (`benchmarks/overload_bench.py`)", "",
        *environment_lines(busy_before),
        f"- load: open-loop asyncio HTTP/1.1 client in `overload_bench.py` (keep-alive pool, fixed schedule, "
        f"client timeout {args.timeout:g} s), POST /score `{BODY.decode()}`, loopback 127.0.0.1",
        f"- scenario: `benchmarks/overload_score.py` (run() sleeps {RUN_MS:g} ms), {CONCURRENCY} slots per server "
        f"(capacity ≈ {CAPACITY_RPS:.0f} req/s), maxQueueWaitMs {MAX_QUEUE_WAIT_MS}",
        f"- mlscore revision: {git_revision()}",
        f"- cells: {sweep}then {MAIN_LOAD:g}x for {args.duration:g} s; servers alternated cell by cell",
        "- start-up to ready: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in ready_s.items()),
        "", "```", command, "```", "",
        *lines, "",
    ]
    append_results(section)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    if "peer" in args.servers:
        ensure_peer_venv()
    busy_before = cpu_busy_share()
    if busy_before > BUSY_SHARE:
        print(f"warning: the CPUs are {busy_before:.0%} busy before the run: figures will be noisy", flush=True)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    servers: list[Server] = []
    try:
        ready_s = start_all(build_specs(args.servers), servers)
        sweep, main_cells = measure(servers, args)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        raise
    finally:
        stop_servers(servers)
    plot = PLOT_PNG if sweep else None
    if plot is not None:
        plot_sweep(sweep, plot)
    lines = report(sweep, main_cells, plot)
    print()
    print("\n".join(lines))
    if args.write_results:
        write_results(args, lines, ready_s, busy_before)
    return 0


if __name__ == "__main__":
    run_script(main)
