"""Log lines: text for people (to stderr) or one JSON object per line for collectors (to stdout).

Every record goes through a bounded queue to a writer thread, so a slow or stalled stream never
holds up the event loop, nor run(): when the queue is full a record is dropped and counted
(`mlscore_log_records_dropped_total`). What entry scripts print or log becomes log lines tagged
with the id of the request being scored. The access log (a line per request) and what scripts print
take a shorter way into the same queue: a tuple, no LogRecord, nothing formatted where it is written.
A worker process writes its own lines and tells the front how many it dropped (`worker_dropped`).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import queue
import select
import sys
import threading
import time
from typing import Any, Callable, TextIO

import orjson

from mlscore.scoring.request_context import current_request_id

QUEUE_LIMIT = 10_000  # records waiting for the writer; more are dropped
BATCH = 1_000  # records the writer takes at once
# After a batch smaller than BATCH the writer rests this long, so that under load it wakes up (and takes
# the GIL from the event loop) once per many lines rather than once per line; a line waits at most this
# long. After a full batch it goes on at once: a burst (a run() printing in a loop) is written, not dropped.
PAUSE_S = 0.01
# One write() of at most PIPE_BUF bytes to a pipe is never interleaved with another process's
# writes (the front and its workers share the stream), so lines are written in chunks that size.
CHUNK = getattr(select, "PIPE_BUF", 4096)
LINE_LIMIT = 16_384  # characters of a script's output without a newline that make a line anyway
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(tag)s%(message)s"
# A worker's drops are always counted; the front warns about them at most this often.
DROP_WARNING_INTERVAL_S = 10.0
_JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_STOP = object()
# Attributes every LogRecord has; any other is an `extra=` field, which JSON lines carry.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "tag", "request_id", "color_message"}  # color_message: uvicorn's, for terminals
_SERVER_TIMING = b"server-timing"
_RUN_MS = b"x-ms-run-fn-exec-ms"
_REQUEST_ID = b"x-ms-request-id"


class LogQueue:
    """A bounded queue of records and access entries: put() never blocks; past the limit it drops
    and counts."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._limit = limit
        self.dropped = 0

    def put(self, item: Any) -> None:
        if self._queue.qsize() >= self._limit:
            self.dropped += 1
            return
        self._queue.put(item)

    def stop(self) -> None:
        self._queue.put(_STOP)  # past the limit too: the writer must see it

    def take(self) -> list[Any]:
        """What is waiting (at least one item; blocks until there is one), up to BATCH."""
        items = [self._queue.get()]
        get = self._queue.get_nowait
        try:
            while len(items) < BATCH:
                items.append(get())
        except queue.Empty:
            pass
        return items


class LogWriter:
    """The thread that renders queued records and writes them to the stream."""

    def __init__(self, records: LogQueue, stream: TextIO, render: Callable[[Any], bytes]) -> None:
        self._records = records
        self._stream = stream
        self._render = render
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a stream with no file behind it (tests capture)
            self._fd = None
        self._thread = threading.Thread(target=self._run, name="mlscore-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end."""
        if self._thread.is_alive():
            self._records.stop()
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            items = self._records.take()
            lines: list[bytes] = []
            stop = False
            for item in items:
                if item is _STOP:
                    stop = True
                    continue
                try:
                    lines.append(self._render(item))
                except Exception as error:  # a record that cannot be rendered must not end logging
                    lines.append(f"(a log record could not be rendered: {error!r})\n".encode())
            self._write(lines)
            if stop:
                return
            if len(items) < BATCH:  # with a backlog, on at once: a burst is written rather than dropped
                time.sleep(PAUSE_S)

    def _write(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if size and size + len(line) > CHUNK:
                self._write_chunk(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write_chunk(b"".join(chunk))

    def _write_chunk(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self._stream.write(data.decode("utf-8", "replace"))
                self._stream.flush()
                return
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:  # a non-blocking stream that is full: wait for it here, off the loop
                    time.sleep(0.005)
                    continue
                view = view[written:]
        except (OSError, ValueError):  # the stream is gone (a closed pipe): nothing else to tell it to
            pass


class QueueHandler(logging.Handler):
    """The root logger's one handler: tags a record with the request being scored (in the thread
    that logs it) and queues it for the writer."""

    def __init__(self, records: LogQueue, writer: LogWriter) -> None:
        super().__init__()
        self._records = records
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()  # now: the arguments may change before the writer runs
            record.args = None
            if getattr(record, "request_id", None) is None:
                record.request_id = current_request_id()
        except Exception:
            self.handleError(record)
            return
        self._records.put(record)

    def close(self) -> None:
        """Called by logging.shutdown() at exit too: what is queued gets written first."""
        self._writer.stop()
        super().close()


# --- rendering -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_utc(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2024-05-01T12:00:00.123Z."""
    second = int(timestamp)
    return f"{_utc_second(second)}.{int((timestamp - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.tag = f"[{request_id}] " if request_id else ""
        return super().format(record)


def render_text(formatter: TextFormatter) -> Callable[[Any], bytes]:
    pid = os.getpid()

    def render(item: Any) -> bytes:
        if type(item) is tuple:
            text = _script_text(item, pid) if len(item) == SCRIPT_LINE_FIELDS else _access_text(item)
            return (text + "\n").encode("utf-8", "backslashreplace")
        return (formatter.format(item) + "\n").encode("utf-8", "backslashreplace")

    return render


@functools.lru_cache(maxsize=4)
def _local_second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def render_json(formatter: logging.Formatter) -> Callable[[Any], bytes]:
    pid = os.getpid()

    def render(item: Any) -> bytes:
        if type(item) is tuple:
            if len(item) == SCRIPT_LINE_FIELDS:
                return orjson.dumps(_script_fields(item, pid), option=_JSON_OPTIONS)
            return orjson.dumps(_access_fields(item), option=_JSON_OPTIONS)
        line: dict[str, Any] = {"ts": iso_utc(item.created), "level": item.levelname, "logger": item.name,
                                "message": item.getMessage(), "pid": item.process}
        request_id = getattr(item, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if item.exc_info:
            line["exception"] = formatter.formatException(item.exc_info)
        elif item.exc_text:
            line["exception"] = item.exc_text
        if item.stack_info:
            line["stack"] = item.stack_info
        for key in item.__dict__.keys() - _STANDARD:
            line[key] = item.__dict__[key]
            if line["message"].startswith(f"{key}: "):  # "settings: {...}" with the field settings: say it once
                line["message"] = key
        return orjson.dumps(line, default=str, option=_JSON_OPTIONS)

    return render


# --- the access log --------------------------------------------------------------------------------------


class AccessLog:
    """A line per request: its id, method, route, status, latency and, for scored requests, the time it
    waited for a slot and the time in run(). Nothing is formatted on the event loop: an entry is a tuple
    of what is at hand (the response's headers, read by the writer), put on the log queue."""

    def __init__(self) -> None:
        self._records = _records if _records is not None else _Fallback()
        self._pid = os.getpid()

    def request(self, scope: dict[str, Any], route: str, status: int, headers: list[tuple[bytes, bytes]],
                started: float) -> None:
        """`started` is time.perf_counter() when the request arrived; `headers` the response's."""
        self._records.put((time.time(), time.perf_counter() - started, self._pid, scope["method"], route, status,
                           headers, scope.get("client")))


def _access_fields(entry: tuple[Any, ...]) -> dict[str, Any]:
    created, latency, pid, method, route, status, headers, client = entry
    request_id = queue_ms = run_ms = None
    for name, value in headers:
        if name == _REQUEST_ID:
            request_id = value.decode("latin-1")
        elif name == _SERVER_TIMING:
            queue_ms = _queue_ms(value)
        elif name == _RUN_MS:
            run_ms = float(value)
    return {"ts": iso_utc(created), "level": "INFO", "logger": "mlscore.access",
            "message": f"{method} {route} {status}", "pid": pid, "request_id": request_id, "method": method,
            "route": route, "status": status, "latency_ms": round(latency * 1000.0, 3), "queue_ms": queue_ms,
            "run_ms": run_ms, "client": client[0] if client else None}


def _queue_ms(server_timing: bytes) -> float | None:
    # b"queue;dur=0.012, run;dur=0.480", as routes.py writes it
    head = server_timing.split(b",", 1)[0]
    if not head.startswith(b"queue;dur="):
        return None
    return float(head[10:])


def _access_message(fields: dict[str, Any]) -> str:
    route = fields["route"].replace("\n", "\\n").replace("\r", "\\r")  # a path is percent-decoded: no forged lines
    timings = f"{fields['latency_ms']:.2f} ms"
    if fields["queue_ms"] is not None:
        timings += f" (queue {fields['queue_ms']:.2f} ms, run " + (
            f"{fields['run_ms']:.2f} ms)" if fields["run_ms"] is not None else "-)")
    tag = f"[{fields['request_id']}] " if fields["request_id"] else ""
    return f"{tag}{fields['method']} {route} {fields['status']} {timings}" + (
        f" {fields['client']}" if fields["client"] else "")


def _access_text(entry: tuple[Any, ...]) -> str:
    """The line TEXT_FORMAT would make, without a LogRecord (this is once per request)."""
    created = entry[0]
    second = int(created)
    return (f"{_local_second(second)},{int((created - second) * 1000):03d} INFO [{entry[2]}] mlscore.access: "
            f"{_access_message(_access_fields(entry))}")


class _Fallback:
    """Where access entries go when logging was not configured here (an app built in-process)."""

    def put(self, entry: tuple[Any, ...]) -> None:
        logging.getLogger("mlscore.access").info("%s", _access_message(_access_fields(entry)))


# --- entry scripts' output -------------------------------------------------------------------------------

# A line a script printed, as queued: (time.time(), logger name, level, request id or None, text).
SCRIPT_LINE_FIELDS = 5


def _script_fields(line: tuple[float, str, int, str | None, str], pid: int) -> dict[str, Any]:
    created, name, level, request_id, text = line
    fields: dict[str, Any] = {"ts": iso_utc(created), "level": logging.getLevelName(level), "logger": name,
                              "message": text, "pid": pid}
    if request_id:
        fields["request_id"] = request_id
    return fields


def _script_text(line: tuple[float, str, int, str | None, str], pid: int) -> str:
    """The line TEXT_FORMAT would make of the record logging would have made."""
    created, name, level, request_id, text = line
    second = int(created)
    tag = f"[{request_id}] " if request_id else ""
    return (f"{_local_second(second)},{int((created - second) * 1000):03d} {logging.getLevelName(level)} "
            f"[{pid}] {name}: {tag}{text}")


class _ThreadOutput(threading.local):
    """A thread's unfinished line, and whether it is inside logging (class defaults: no per-write
    lookup that fails)."""

    pending = ""
    busy = False


class ScriptOutput(io.TextIOBase):
    """sys.stdout or sys.stderr in a process that runs entry scripts: each line written becomes a log
    record (logger `stdout` at INFO, `stderr` at WARNING), tagged with the request being scored.
    Given the process's log queue, a line goes straight onto it as a tuple: a print() in run() then
    costs a few microseconds, never waits for the writer, and is dropped and counted when the queue
    is full."""

    def __init__(self, name: str, level: int, original: TextIO, records: LogQueue | None = None) -> None:
        super().__init__()
        self._name = name
        self._logger = logging.getLogger(name)
        self._level = level
        self._records = records
        self.original = original
        self._local = _ThreadOutput()

    def write(self, text: str) -> int:
        local = self._local
        if local.busy:  # logging itself wrote here (an error report): no loop
            return self.original.write(text)
        pending = local.pending + text
        if "\n" not in text and len(pending) < LINE_LIMIT:
            local.pending = pending
            return len(text)
        lines = pending.split("\n")
        local.pending = lines.pop()
        if len(local.pending) >= LINE_LIMIT:
            lines.append(local.pending)
            local.pending = ""
        self._emit(lines)
        return len(text)

    def flush(self) -> None:
        pending = self._local.pending
        if pending and not self._local.busy:
            self._local.pending = ""
            self._emit([pending])

    def _emit(self, lines: list[str]) -> None:
        if self._records is None:
            self._log(lines)
            return
        if not self._logger.isEnabledFor(self._level):
            return
        created = time.time()
        request_id = current_request_id()
        put = self._records.put
        for line in lines:
            line = line.rstrip("\r")
            if line.strip():
                put((created, self._name, self._level, request_id, line))

    def _log(self, lines: list[str]) -> None:
        self._local.busy = True
        try:
            for line in lines:
                line = line.rstrip("\r")
                if line.strip():
                    self._logger.log(self._level, line)
        finally:
            self._local.busy = False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.original, "errors", None)

    def __getattr__(self, name: str) -> Any:  # buffer, reconfigure, ...: the real stream's
        return getattr(self.original, name)


# --- set-up ----------------------------------------------------------------------------------------------

_records: LogQueue | None = None  # this process's log queue, once configured


def configure(level: int, log_format: str = "text") -> None:
    """Logging for a server or worker process: the root logger's queue-backed handler at `level`,
    warnings and the entry script's stdout and stderr as log records. JSON lines go to stdout, text
    to stderr. Calling it again replaces the earlier set-up."""
    global _records
    stdout, stderr = _unwrapped(sys.stdout), _unwrapped(sys.stderr)
    stream = stdout if log_format == "json" else stderr
    records = LogQueue()
    render = render_json(logging.Formatter()) if log_format == "json" else render_text(TextFormatter())
    writer = LogWriter(records, stream, render)
    handler = QueueHandler(records, writer)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    writer.start()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.stdout = ScriptOutput("stdout", logging.INFO, stdout, records)
    sys.stderr = ScriptOutput("stderr", logging.WARNING, stderr, records)
    _records = records


def error_with_traceback(logger: logging.Logger, message: str, traceback_text: str) -> None:
    """An error line followed by a traceback given as text (from a worker, or trimmed to the user's
    frames), where a log shows an exception's: below the line, or in the JSON line's `exception`."""
    if not logger.isEnabledFor(logging.ERROR):
        return
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    record.exc_text = traceback_text or None
    logger.handle(record)


def dropped_here() -> int:
    """Log records dropped in this process because its writer fell behind."""
    return _records.dropped if _records is not None else 0


def dropped() -> int:
    """Log records dropped by this process and by the workers that reported to it."""
    return dropped_here() + _worker_drops.total


class WorkerDrops:
    """The front's count of log records its workers dropped, and its warning about them: at most one
    per DROP_WARNING_INTERVAL_S, saying how many were dropped since the one before."""

    def __init__(self) -> None:
        self.total = 0
        self._unreported = 0
        self._warned_at = -DROP_WARNING_INTERVAL_S

    def add(self, pid: int, count: int) -> None:
        self.total += count
        self._unreported += count
        now = time.monotonic()
        if now - self._warned_at < DROP_WARNING_INTERVAL_S:
            return
        self._warned_at = now
        logging.getLogger("mlscore.server").warning(
            "%d log line(s) of scoring workers (the last from worker %d) were dropped because a worker's log "
            "writer fell behind (more than %d lines waiting); counted in mlscore_log_records_dropped_total",
            self._unreported, pid, QUEUE_LIMIT)
        self._unreported = 0


_worker_drops = WorkerDrops()


def worker_dropped(pid: int, count: int) -> None:
    """A worker reported `count` more log records dropped (the front's side)."""
    _worker_drops.add(pid, count)


def _unwrapped(stream: TextIO) -> TextIO:
    return stream.original if isinstance(stream, ScriptOutput) else stream
