"""Model data collection: each scored request's input and output, with its id and time, written as
JSON lines to files rotated by size and age, by a background thread of the front process.

Recording never blocks or fails a request: the event loop only queues what it already holds (the
request, the response's status, body and headers); past `buffer` waiting records (or
MAX_BUFFERED_BYTES of bodies) a record is dropped and counted. The writer parses and encodes
off the loop, and a shutdown writes what is queued before the server exits.

Files: DIR/YYYY/MM/DD/data-YYYYMMDDTHHMMSSZ-HOST-PID-N.jsonl, in the UTC day each was opened (HOST and
PID keep replicas and overlapping servers sharing a volume apart). The newest is being written.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import queue
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from mlscore.scoring.collect import COLLECTED_HEADER
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.server.logs import iso_utc

logger = logging.getLogger("mlscore.server")

MAX_BUFFERED_BYTES = 256 << 20  # request and response bodies waiting for the writer
IDLE_CHECK_S = 1.0  # an idle writer wakes this often, to close a file past its age
PAUSE_S = 0.01  # the writer's rest after each batch: under load it wakes once per many records, not per record
ERROR_REPORT_S = 60.0  # a failing disk is reported once a minute, not once a record
_STOP = object()
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class DataCollectionError(Exception):
    """The folder cannot be written to."""


class DataCollector:
    """Owned by the front process: `record` on the event loop, a thread writes."""

    def __init__(self, folder: Path, rotate_bytes: int, rotate_seconds: float, buffer: int,
                 service: str, model: str | None = None) -> None:
        self.folder = folder
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._limit = buffer
        self._service = service
        self._model = model
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Each counter has one writer (the loop or the writer thread), so no update is ever lost.
        self._queued = self._queued_bytes = 0  # loop
        self._taken = self._taken_bytes = 0  # writer
        self.dropped_full = 0  # loop: the buffer was full
        self.dropped_error = 0  # writer: the file could not be written
        self.written = 0  # writer
        self._file: BinaryIO | None = None
        self._file_size = 0
        self._file_opened = 0.0
        self._files = 0
        self._stem = f"{_UNSAFE.sub('-', socket.gethostname())[:63] or 'host'}-{os.getpid()}"
        self._last_error = -ERROR_REPORT_S
        self._thread = threading.Thread(target=self._run, name="mlscore-data-collection", daemon=True)

    @classmethod
    def open(cls, folder: Path, rotate_bytes: int, rotate_seconds: float, buffer: int, service: str,
             model: str | None = None) -> "DataCollector":
        """A collector for `folder`, made if need be; DataCollectionError when it cannot be written to."""
        folder = folder.absolute()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataCollectionError(f"{folder}: cannot be made ({error.strerror or error})") from None
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise DataCollectionError(f"{folder}: not a folder this server can write to")
        return cls(folder, rotate_bytes, rotate_seconds, buffer, service, model)

    def start(self) -> None:
        self._thread.start()

    def record(self, request: RawRequest, response: RawResponse) -> None:
        """Queue a scored request's record (on the event loop: no I/O, no encoding)."""
        body = response.body if isinstance(response.body, bytes) else None
        size = len(request.body) + (len(body) if body is not None else 0)
        if (self._queued - self._taken >= self._limit
                or (self._queued_bytes - self._taken_bytes + size > MAX_BUFFERED_BYTES and self._queued > self._taken)):
            self.dropped_full += 1
            return
        self._queued += 1
        self._queued_bytes += size
        self._queue.put((time.time(), request, response.status, body, response.headers, response.run_ms, size))

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the file and end the thread (blocking: call it off the loop)."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("data collection: %d record(s) not written within %g s of the shutdown",
                         self._queued - self._taken, timeout)

    # --- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                items = [self._queue.get(timeout=IDLE_CHECK_S)]
            except queue.Empty:
                if self._file is not None and time.monotonic() - self._file_opened >= self._rotate_seconds:
                    self._close_file()
                continue
            try:
                while len(items) < 1000:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            stop = any(item is _STOP for item in items)
            records = [item for item in items if item is not _STOP]
            lines = [self._line(record) for record in records]
            self._write_batch(lines)
            self._taken += len(records)
            self._taken_bytes += sum(record[-1] for record in records)
            if stop:
                self._close_file()
                return
            time.sleep(PAUSE_S)

    def _line(self, record: tuple[Any, ...]) -> bytes:
        at, request, status, body, headers, run_ms, _ = record
        line: dict[str, Any] = {"ts": iso_utc(at), "request_id": request.request_id.decode("latin-1"),
                                "service": self._service}
        if self._model is not None:
            line["model"] = self._model
        line |= {"method": request.method, "route": request.path, "status": status,
                 "run_ms": None if run_ms is None else round(run_ms, 3)}
        if request.query:
            line["query"] = request.query.decode("latin-1")
        _payload(line, "input", request.body)
        if body is None:
            line["output_streamed"] = True  # a streamed body is not kept
        else:
            _payload(line, "output", body)
        for name, value in headers:
            if name == COLLECTED_HEADER:
                line["fields"] = orjson.Fragment(value)  # JSON already, from collect()
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    def _write_batch(self, lines: list[bytes]) -> None:
        """Each record goes to the file whole or not at all, and is counted either way: written, or
        dropped with the rest of its batch when a write fails (a full disk)."""
        for index, line in enumerate(lines):
            try:
                self._append(line)
            except OSError as error:
                self._failed(error, len(lines) - index)
                return
            self.written += 1

    def _append(self, line: bytes) -> None:
        """One record, written unbuffered (so a record counted as written is in the file). A write cut
        short is taken back, so no half line is left for a reader to choke on; should that fail too,
        the file is closed and the next record starts a new one."""
        file = self._file_for(len(line))
        start = file.tell()
        done = 0
        try:
            while done < len(line):
                count = file.write(memoryview(line)[done:])
                if not count:
                    raise OSError(errno.EIO, "the file took none of the record")
                done += count
        except OSError:
            if done:
                try:
                    file.truncate(start)
                    file.seek(start)  # truncate leaves the position past the end, where tell() would read it
                except OSError:
                    self._close_file()
            raise
        self._file_size += len(line)

    def _file_for(self, size: int) -> BinaryIO:
        now = time.monotonic()
        if self._file is not None and (now - self._file_opened >= self._rotate_seconds
                                       or (self._file_size and self._file_size + size > self._rotate_bytes)):
            self._close_file()
        if self._file is None:
            self._files += 1
            stamp = time.gmtime()
            folder = self.folder / time.strftime("%Y/%m/%d", stamp)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"data-{time.strftime('%Y%m%dT%H%M%SZ', stamp)}-{self._stem}-{self._files}.jsonl"
            self._file = open(folder / name, "ab", buffering=0)
            self._file_size, self._file_opened = 0, now
        return self._file

    def _close_file(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()
        except OSError as error:
            self._failed(error, 0)

    def _failed(self, error: OSError, lost: int) -> None:
        """Records that could not be written are dropped and counted. The file stays open (nothing torn
        is in it): the next batch tries it again, rather than leaving an empty file per try on a full
        disk."""
        self.dropped_error += lost
        now = time.monotonic()
        if now - self._last_error >= ERROR_REPORT_S:
            self._last_error = now
            logger.error("data collection: cannot write to %s (%s); records are dropped and counted in "
                         "mlscore_data_collection_dropped_total", self.folder, error)


def _payload(line: dict[str, Any], key: str, body: bytes) -> None:
    """A body as JSON when it is JSON, else as text when it is UTF-8, else base64."""
    if not body:
        line[key] = None
        return
    try:
        line[key] = orjson.loads(body)
        return
    except orjson.JSONDecodeError:
        pass
    try:
        line[f"{key}_text"] = body.decode("utf-8")
    except UnicodeDecodeError:
        line[f"{key}_base64"] = base64.b64encode(body).decode("ascii")
