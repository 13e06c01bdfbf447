"""A scoring worker process, and the frames it exchanges with the front over a socket pair.

Frames are a fixed binary header, then NUL-separated text fields, then the raw body: request and
response bodies cross as they are, never pickled or re-encoded.

    request   !BIdIII  kind, sequence number, start-by time (wall clock; 0: none), line, headers and
                       body lengths | method\\0request id\\0client\\0path\\0query | headers | body
    cancel    the same header with kind CANCEL and the sequence number of a request not to run
    response  !HdBHII  status, run ms (NaN: none), flags, the requests of its model call (batching),
                       headers and body lengths | headers | body

The front may send a request while the worker is still running the one before (it holds it
ready). The worker answers every request in order: with the pipeline's response, or with a
SKIPPED frame when the request was cancelled or its start-by time passed before it could begin.
Before an answer, control frames tell the front how many more log records the worker dropped, and
once, that the worker is due for replacement (past --worker-max-requests or --worker-max-rss-mb).
A worker that batches says when a batch of several starts (BATCH_STARTED, before it runs); with no
batch delay, a batch's answers go out with the next batch's start, in one write.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import resource
import select
import signal
import socket
import struct
import time
from collections import deque
from typing import Any, NamedTuple

import orjson

from mlscore.scoring import collect
from mlscore.scoring.entry_script import EntryScriptError
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.server import logs

REQUEST = struct.Struct("!BIdIII")
RUN, CANCEL = 0, 1  # request kinds
RESPONSE = struct.Struct("!HdBHII")
READ_SIZE = 1 << 20  # the most the worker takes from its socket in one read
# A batch stops waiting for more requests this long before a member's start-by time: its start must
# reach the front before the front's timer answers that member 503 at its queue deadline, and on a
# loaded machine the worker's wake-up and the front's turn take more than start-by's own 1 ms margin.
BATCH_WAIT_MARGIN = 0.05
# Status values that are not HTTP statuses: a control message, a body chunk, its end, a request not
# run, and a batch's start (the requests field: how many; run ms: how long it waited to fill).
CONTROL, CHUNK, END, SKIPPED, BATCH_STARTED = 0, 1, 2, 3, 4
FAILED, STREAMED = 1, 2  # flag bits: run() failed; the body follows as CHUNK frames and an END frame
logger = logging.getLogger("mlscore.worker")


def pack_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"\0".join([part for pair in headers for part in pair])


def unpack_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    if not block:
        return []
    parts = block.split(b"\0")
    return list(zip(parts[0::2], parts[1::2]))


def request_frame(request: RawRequest, sequence: int, start_by: float = 0.0) -> bytes:
    """`start_by` is wall-clock (time.time()): a request the worker reaches later is skipped."""
    line = b"\0".join((request.method.encode(), request.request_id, request.client.encode(),
                        request.path.encode("utf-8", "surrogateescape"), request.query))
    headers = pack_headers(request.headers)
    return (REQUEST.pack(RUN, sequence, start_by, len(line), len(headers), len(request.body))
            + line + headers + request.body)


def cancel_frame(sequence: int) -> bytes:
    return REQUEST.pack(CANCEL, sequence, 0.0, 0, 0, 0)


SKIPPED_FRAME = RESPONSE.pack(SKIPPED, math.nan, 0, 1, 0, 0)


def response_frame(response: RawResponse, flags: int = 0) -> bytes:
    """The frame of a response whose body is bytes (a streamed one's head: see send_response)."""
    body = response.body if isinstance(response.body, bytes) else b""
    headers = pack_headers(response.headers)
    run_ms = math.nan if response.run_ms is None else response.run_ms
    flags |= FAILED if response.run_failed else 0
    return RESPONSE.pack(response.status, run_ms, flags, response.batch, len(headers), len(body)) + headers + body


def send_response(sock: socket.socket, response: RawResponse) -> None:
    """A bytes body in one frame; a streamed one as a head frame, a frame per chunk, and an end frame,
    so that chunks reach the client as run() produces them."""
    if isinstance(response.body, bytes):
        sock.sendall(response_frame(response))
        return
    sock.sendall(response_frame(response, STREAMED))
    end_flags = 0
    try:
        for chunk in response.body:
            sock.sendall(RESPONSE.pack(CHUNK, math.nan, 0, 1, 0, len(chunk)) + chunk)
    except Exception:
        logger.exception("the streamed body of run()'s response raised")
        end_flags = FAILED
    sock.sendall(RESPONSE.pack(END, math.nan, end_flags, 1, 0, 0))


def batch_started_frame(size: int, waited_ms: float) -> bytes:
    return RESPONSE.pack(BATCH_STARTED, waited_ms, 0, size, 0, 0)


def control_frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return RESPONSE.pack(CONTROL, math.nan, 0, 1, 0, len(body)) + body


class Frame(NamedTuple):
    status: int
    run_ms: float
    flags: int
    batch: int
    headers: bytes
    body: bytes

    def response(self) -> RawResponse:
        run_ms = None if math.isnan(self.run_ms) else self.run_ms
        return RawResponse(self.status, unpack_headers(self.headers), self.body, run_ms=run_ms,
                           run_failed=bool(self.flags & FAILED), batch=self.batch)


class FrameBuffer:
    """Collects bytes from the socket and yields complete response frames (the front's side)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._data += data
        frames: list[Frame] = []
        while len(self._data) >= RESPONSE.size:
            status, run_ms, flags, batch, headers_length, body_length = RESPONSE.unpack_from(self._data)
            end = RESPONSE.size + headers_length + body_length
            if len(self._data) < end:
                break
            headers = bytes(self._data[RESPONSE.size:RESPONSE.size + headers_length])
            body = bytes(self._data[RESPONSE.size + headers_length:end])
            del self._data[:end]
            frames.append(Frame(status, run_ms, flags, batch, headers, body))
        return frames


def report_log_drops(sock: socket.socket, reported: int) -> int:
    """Tell the front about log records dropped here since the last report; the count reported."""
    dropped = logs.dropped_here()
    if dropped > reported:
        sock.sendall(control_frame({"log_dropped": dropped - reported}))
    return dropped


# Past this multiple of --worker-max-rss-mb a worker due for replacement stops taking requests at once,
# rather than serving until its replacement is ready: a leak that fast would exhaust memory first.
RSS_HARD_FACTOR = 1.5


PAGE_SIZE = resource.getpagesize()
# /proc/self/statm, kept open: a read at offset 0 costs about 1.5 µs, opening it each time 10 µs, and
# with a memory bound (images set one) every request reads it. A forked child opens its own.
_statm: int | None = None


def _forget_statm() -> None:
    global _statm
    _statm = None


os.register_at_fork(after_in_child=_forget_statm)


def rss_bytes() -> int:
    """This process's resident memory now (Linux: /proc; elsewhere its peak, which a leak also raises)."""
    global _statm
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_statm, 128, 0).split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


class Recycling:
    """When this worker is due for replacement: after `worker_max_requests` plus a random part of the
    jitter (so that workers started together are not replaced together), or past `worker_max_rss_mb`.
    `due()` is called after each request and names the reason once ("max_requests", "max_rss"), then
    "stop" once if memory passes RSS_HARD_FACTOR times the bound before the front has replaced it."""

    def __init__(self, settings: Any) -> None:
        self.requests_left = (settings.worker_max_requests + random.randint(0, settings.worker_max_requests_jitter)
                              if settings.worker_max_requests else None)
        self.max_rss = settings.worker_max_rss_mb << 20 if settings.worker_max_rss_mb else None
        self.said = ""  # the reason given, once given
        self.rss_after_init = 0
        if self.max_rss is not None:
            self.rss_after_init = rss_bytes()
            if self.rss_after_init > self.max_rss:
                self.max_rss = None  # a replacement would be as large: see the front's warning

    def due(self) -> str:
        if self.requests_left is not None:
            self.requests_left -= 1
        if self.said:
            if self.said != "stop" and self.max_rss is not None and rss_bytes() > self.max_rss * RSS_HARD_FACTOR:
                self.said = "stop"
                return "stop"
            return ""
        if self.requests_left is not None and self.requests_left <= 0:
            self.said = "max_requests"
        elif self.max_rss is not None and rss_bytes() > self.max_rss:
            self.said = "max_rss"
        return self.said


def read_control_blocking(sock: socket.socket) -> dict[str, Any] | None:
    """The worker's first message (ready, or why init() failed); None if it died first."""
    stream = sock.makefile("rb")
    try:
        header = stream.read(RESPONSE.size)
        if len(header) < RESPONSE.size:
            return None
        *_, headers_length, body_length = RESPONSE.unpack(header)
        return orjson.loads(stream.read(headers_length + body_length)[headers_length:])
    finally:
        stream.close()


class RequestReader:
    """The worker's side of the socket: reads whatever has arrived, keeps the requests to run in
    order, and notes the cancelled ones."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._data = bytearray()
        self.pending: deque[tuple[int, float, RawRequest]] = deque()
        self.cancelled: set[int] = set()
        self.closed = False
        # Reads land in one buffer, allocated once: a fresh 1 MiB bytes object per read cost page
        # faults (about 4 µs a request on a small model). Between requests a poll looks whether
        # anything arrived: a non-blocking recv that finds nothing raises BlockingIOError, whose
        # making (the errno's text) costs more than the look.
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def wait(self, seconds: float) -> None:
        """Take in what the front sends within `seconds` (at most one read)."""
        if select.select([self._sock], [], [], seconds)[0]:
            self.read(block=True)

    def runnable(self) -> bool:
        """The first pending request may run: not cancelled, its start-by time not passed."""
        sequence, start_by, _ = self.pending[0]
        return sequence not in self.cancelled and not (start_by and start_by < time.time())

    def read(self, block: bool) -> None:
        """Take in what the front has sent; wait for something only when `block`."""
        if not block and not self._poll.poll(0):
            return
        size = self._sock.recv_into(self._buffer)
        if not size:
            self.closed = True
            return
        self._data += self._view[:size]
        self._parse()

    def _parse(self) -> None:
        data = self._data
        offset = 0
        while len(data) - offset >= REQUEST.size:
            kind, sequence, start_by, line_length, headers_length, body_length = REQUEST.unpack_from(data, offset)
            end = offset + REQUEST.size + line_length + headers_length + body_length
            if len(data) < end:
                break
            if kind == CANCEL:
                self.cancelled.add(sequence)
            else:
                at = offset + REQUEST.size
                method, request_id, client, target = bytes(data[at:at + line_length]).split(b"\0", 3)
                path, _, query = target.rpartition(b"\0")  # a decoded path may hold a NUL (%00); a query never does
                at += line_length
                headers = unpack_headers(bytes(data[at:at + headers_length]))
                body = bytes(data[at + headers_length:end])
                self.pending.append((sequence, start_by, RawRequest(
                    method.decode(), path.decode("utf-8", "surrogateescape"), query, headers, body, request_id,
                    client.decode())))
            offset = end
        del data[:offset]


def take_batch(reader: RequestReader, batch: list[RawRequest], size: int, delay: float, sequence: int,
               start_by: float, outbox: list[bytes]) -> int:
    """Add to `batch` the runnable requests that follow it, up to `size`, waiting up to `delay`
    seconds for more to arrive (never within BATCH_WAIT_MARGIN of a request's start-by time: its
    queue deadline holds until its batch starts); a request that may not run ends the batch (it is
    answered after it, in order). With more than one, or after a wait, a frame for the front joins `outbox`, which goes
    out before the batch runs: the batch started (its requests' queue deadlines no longer hold),
    and how long it waited. The sequence number of its last request."""
    started = time.monotonic()
    deadline = started + delay
    while len(batch) < size:
        if not reader.pending:
            # No longer than the delay, nor past the start-by time of a request in the batch.
            left = deadline - time.monotonic()
            if start_by:
                left = min(left, start_by - BATCH_WAIT_MARGIN - time.time())
            if left <= 0 or reader.closed:
                break
            reader.wait(left)
            continue
        if not reader.runnable():
            break
        sequence, member_start_by, request = reader.pending.popleft()
        if member_start_by:
            start_by = min(start_by, member_start_by) if start_by else member_start_by
        batch.append(request)
    waited = time.monotonic() - started if delay else 0.0
    if len(batch) > 1 or waited:
        outbox.append(batch_started_frame(len(batch), waited * 1000.0))
    return sequence


def worker_main(settings: Any, sock: socket.socket) -> None:
    """The worker's life: load the script, init(), warm up, say ready, then score until the front
    closes the socket. Runs in a spawned process."""
    from mlscore.server.runner import configure_logging, load_pipeline, warm_up

    configure_logging(settings.log_level, settings.log_format)
    if settings.collect_data is not None:
        collect.enable()
    try:
        pipeline = load_pipeline(settings)
    except EntryScriptError as error:
        # The front says why, once, with the user's traceback; the full one (our frames too) is for debugging.
        logger.debug("worker %d: %s", os.getpid(), error, exc_info=error)
        sock.sendall(control_frame({"init_error": error.cause, "traceback": error.user_traceback}))
        raise SystemExit(3)
    warm_up_error = warm_up(pipeline)
    # From here on the front decides when this worker stops: a stop signal sent to the whole process
    # group (Ctrl+C, a container runtime, systemd) must not cut short the run() it is in, while
    # the front finishes what was accepted. The front kills it (SIGKILL) once it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # What start-up made (modules, the model) lives as long as the process: frozen, it is left out of
    # every later full garbage collection, which would otherwise walk it all and pause scoring.
    gc.freeze()
    recycling = Recycling(settings)
    batch_size = settings.max_batch_size if pipeline.batches else 1
    sock.sendall(control_frame({"ready": True, "pid": os.getpid(), "warm_up_error": warm_up_error,
                                "rss_after_init_mb": recycling.rss_after_init >> 20, "batch": batch_size}))
    batch_delay = settings.max_batch_delay_ms / 1000.0
    # Frames written together at the next write: a batch's answers wait there, with no batch delay,
    # until the next batch is taken (a few µs), to go out in one write with its start.
    outbox: list[bytes] = []
    reader = RequestReader(sock)
    reported_drops = 0
    while not reader.closed:
        if not reader.pending:  # nothing to run: what waits goes out, then the worker waits
            if outbox:
                sock.sendall(b"".join(outbox))
                outbox.clear()
            reader.read(block=True)
            continue
        reader.read(block=False)  # pick up what arrived meanwhile (a cancel, above all)
        if not reader.runnable():
            sequence, _, _ = reader.pending.popleft()
            reader.cancelled.discard(sequence)
            outbox.append(SKIPPED_FRAME)
        else:
            sequence, start_by, request = reader.pending.popleft()
            batch = [request]
            if batch_size > 1:
                sequence = take_batch(reader, batch, batch_size, batch_delay, sequence, start_by, outbox)
            if outbox:
                sock.sendall(b"".join(outbox))
                outbox.clear()
            responses = [pipeline.handle(request)] if len(batch) == 1 else pipeline.handle_batch(batch)
            # Before the answers, so that the front has counted them when the clients hear back, and
            # has started a replacement before it sends this worker anything more.
            reported_drops = report_log_drops(sock, reported_drops)
            due = recycling.due()
            if due:
                sock.sendall(control_frame({"retire": due, "rss_mb": rss_bytes() >> 20}))
            whole = all(isinstance(response.body, bytes) for response in responses)  # none streamed
            if whole and batch_size > 1 and not batch_delay:
                outbox.extend(response_frame(response) for response in responses)
            elif whole and len(responses) > 1:
                sock.sendall(b"".join(response_frame(response) for response in responses))  # one write
            else:
                for response in responses:
                    send_response(sock, response)
        if reader.cancelled:  # a cancel that came too late names a request already answered
            reader.cancelled = {cancelled for cancelled in reader.cancelled if cancelled > sequence}
