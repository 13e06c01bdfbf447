"""A scoring worker process, and the frames it exchanges with the front over a socket pair.

A frame is `meta length, body length` (two big-endian u32), the metadata as JSON, then the raw
body bytes: request and response bodies cross as they are, never pickled or re-encoded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from typing import Any

import orjson

from mlscore.scoring.entry_script import EntryScriptError
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.pipeline import error_response

HEADER = struct.Struct("!II")
logger = logging.getLogger("mlscore.worker")


def encode_frame(meta: dict[str, Any], body: bytes = b"") -> bytes:
    encoded = orjson.dumps(meta)
    return HEADER.pack(len(encoded), len(body)) + encoded + body


def request_frame(request: RawRequest, deadline: float) -> bytes:
    """`deadline` is wall-clock (time.time()), so that the worker can tell a request that expired
    while it was waiting in the pipe."""
    meta = {
        "m": request.method, "p": request.path, "q": request.query.decode("latin-1"), "dl": deadline,
        "h": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.headers],
    }
    return encode_frame(meta, request.body)


def response_from_frame(meta: dict[str, Any], body: bytes) -> RawResponse:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in meta["h"]]
    return RawResponse(meta["s"], headers, body, run_ms=meta["ms"], run_failed=meta["f"])


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    meta_length, body_length = HEADER.unpack(await reader.readexactly(HEADER.size))
    meta = orjson.loads(await reader.readexactly(meta_length))
    return meta, await reader.readexactly(body_length)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _read_request(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    meta_length, body_length = HEADER.unpack(header)
    meta = orjson.loads(_recv_exactly(sock, meta_length) or b"{}")
    return meta, (_recv_exactly(sock, body_length) or b"") if body_length else b""


def read_frame_blocking(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """One frame from a blocking socket; None at end of stream."""
    return _read_request(sock)


def worker_main(settings: Any, sock: socket.socket) -> None:
    """The worker's life: load the script, init(), warm up, say ready, then score until the front
    closes the socket. Runs in a spawned process."""
    from mlscore.server.runner import configure_logging, load_pipeline, warm_up

    configure_logging(settings.log_level)
    try:
        pipeline = load_pipeline(settings)
    except EntryScriptError as error:
        logger.error("worker %d: %s", os.getpid(), error, exc_info=error.__cause__ or error)
        sock.sendall(encode_frame({"init_error": error.cause}))
        raise SystemExit(3)
    sock.sendall(encode_frame({"ready": True, "pid": os.getpid(), "warm_up_error": warm_up(pipeline)}))
    while True:
        frame = _read_request(sock)
        if frame is None:
            return
        meta, body = frame
        if meta["dl"] < time.time():
            response = error_response(504, "The request's deadline passed before a worker could run it.")
        else:
            headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in meta["h"]]
            request = RawRequest(meta["m"], meta["p"], meta["q"].encode("latin-1"), headers, body)
            response = pipeline.handle(request)
        sock.sendall(_response_frame(response))


def _response_frame(response: RawResponse) -> bytes:
    if isinstance(response.body, bytes):
        body = response.body
    else:  # a streamed body is gathered here: streaming across the boundary is not built yet
        try:
            body = b"".join(response.body)
        except Exception:
            logger.exception("the streamed body of run()'s response raised")
            return _response_frame(error_response(500, "run()'s streamed response failed.", run_failed=True))
    meta = {
        "s": response.status, "ms": response.run_ms, "f": response.run_failed,
        "h": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in response.headers],
    }
    return encode_frame(meta, body)
