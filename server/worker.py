"""A scoring worker process, and the frames it exchanges with the front over a socket pair.

Frames are a fixed binary header, then NUL-separated text fields, then the raw body: request and
response bodies cross as they are, never pickled or re-encoded.

    request   !dIII  deadline (wall clock), line, headers and body lengths | method\\0path\\0query | headers | body
    response  !HdBII status, run ms (NaN: none), flags, headers and body lengths | headers | body
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import time
from typing import Any, BinaryIO, NamedTuple

import orjson

from mlscore.scoring.entry_script import EntryScriptError
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.pipeline import error_response

REQUEST = struct.Struct("!dIII")
RESPONSE = struct.Struct("!HdBII")
CONTROL, CHUNK, END = 0, 1, 2  # status values that are not HTTP statuses: a control message, a body chunk, its end
FAILED, STREAMED = 1, 2  # flag bits: run() failed; the body follows as CHUNK frames and an END frame
logger = logging.getLogger("mlscore.worker")


def pack_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"\0".join([part for pair in headers for part in pair])


def unpack_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    if not block:
        return []
    parts = block.split(b"\0")
    return list(zip(parts[0::2], parts[1::2]))


def request_frame(request: RawRequest, deadline: float) -> bytes:
    """`deadline` is wall-clock (time.time()), so that the worker can tell a request that expired
    while it was waiting in the pipe."""
    line = b"\0".join((request.method.encode(), request.path.encode("utf-8", "surrogateescape"), request.query))
    headers = pack_headers(request.headers)
    return REQUEST.pack(deadline, len(line), len(headers), len(request.body)) + line + headers + request.body


def response_frame(response: RawResponse, flags: int = 0) -> bytes:
    """The frame of a response whose body is bytes (a streamed one's head: see send_response)."""
    body = response.body if isinstance(response.body, bytes) else b""
    headers = pack_headers(response.headers)
    run_ms = math.nan if response.run_ms is None else response.run_ms
    flags |= FAILED if response.run_failed else 0
    return RESPONSE.pack(response.status, run_ms, flags, len(headers), len(body)) + headers + body


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
            sock.sendall(RESPONSE.pack(CHUNK, math.nan, 0, 0, len(chunk)) + chunk)
    except Exception:
        logger.exception("the streamed body of run()'s response raised")
        end_flags = FAILED
    sock.sendall(RESPONSE.pack(END, math.nan, end_flags, 0, 0))


def control_frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return RESPONSE.pack(CONTROL, math.nan, 0, 0, len(body)) + body


class Frame(NamedTuple):
    status: int
    run_ms: float
    flags: int
    headers: bytes
    body: bytes

    def response(self) -> RawResponse:
        run_ms = None if math.isnan(self.run_ms) else self.run_ms
        return RawResponse(self.status, unpack_headers(self.headers), self.body, run_ms=run_ms,
                           run_failed=bool(self.flags & FAILED))


class FrameBuffer:
    """Collects bytes from the socket and yields complete response frames (the front's side)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._data += data
        frames: list[Frame] = []
        while len(self._data) >= RESPONSE.size:
            status, run_ms, flags, headers_length, body_length = RESPONSE.unpack_from(self._data)
            end = RESPONSE.size + headers_length + body_length
            if len(self._data) < end:
                break
            headers = bytes(self._data[RESPONSE.size:RESPONSE.size + headers_length])
            body = bytes(self._data[RESPONSE.size + headers_length:end])
            del self._data[:end]
            frames.append(Frame(status, run_ms, flags, headers, body))
        return frames


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


def _read_request(stream: BinaryIO) -> tuple[float, RawRequest] | None:
    header = stream.read(REQUEST.size)
    if len(header) < REQUEST.size:
        return None
    deadline, line_length, headers_length, body_length = REQUEST.unpack(header)
    payload = stream.read(line_length + headers_length + body_length)
    if len(payload) < line_length + headers_length + body_length:
        return None
    method, path, query = payload[:line_length].split(b"\0", 2)
    headers = unpack_headers(payload[line_length:line_length + headers_length])
    body = payload[line_length + headers_length:]
    return deadline, RawRequest(method.decode(), path.decode("utf-8", "surrogateescape"), query, headers, body)


def worker_main(settings: Any, sock: socket.socket) -> None:
    """The worker's life: load the script, init(), warm up, say ready, then score until the front
    closes the socket. Runs in a spawned process."""
    from mlscore.server.runner import configure_logging, load_pipeline, warm_up

    configure_logging(settings.log_level)
    try:
        pipeline = load_pipeline(settings)
    except EntryScriptError as error:
        logger.error("worker %d: %s", os.getpid(), error, exc_info=error.__cause__ or error)
        sock.sendall(control_frame({"init_error": error.cause}))
        raise SystemExit(3)
    sock.sendall(control_frame({"ready": True, "pid": os.getpid(), "warm_up_error": warm_up(pipeline)}))
    stream = sock.makefile("rb")
    while True:
        frame = _read_request(stream)
        if frame is None:
            return
        deadline, request = frame
        if deadline < time.time():
            response = error_response(504, "The request's deadline passed before a worker could run it.")
        else:
            response = pipeline.handle(request)
        send_response(sock, response)
