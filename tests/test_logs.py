"""Logs: JSON lines for collectors (a line per request with its id, status and timings; the start-up
summary of the settings; the entry script's prints and log calls tagged with the request id), text
for people, and never a key; a writer that falls behind drops and counts instead of blocking."""

from __future__ import annotations

import io
import json
import logging
import os
import threading

import httpx
import pytest

from conftest import SCRIPTS, run_server_to_exit, start_server
from mlscore.scoring.request_context import CURRENT, RequestContext
from mlscore.server import logs
from mlscore.server.settings import Settings

KEY = "secret-key-123"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_carry_request_ids_statuses_timings_and_script_output_and_never_a_key(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "chatty.py"), "--log-format", "json",
                          "--auth-key", KEY)
    try:
        authorized = {"Authorization": f"Bearer {KEY}"}
        given = httpx.post(server.url + "/score", content=b"first", headers={**authorized, "x-request-id": "abc-1"})
        made = httpx.post(server.url + "/score", content=b"second", headers=authorized)
        refused = httpx.post(server.url + "/score", content=b"third", headers={"Authorization": "Bearer wrong-key-456"})
        assert (given.status_code, made.status_code, refused.status_code) == (200, 200, 401)
        assert "x-mlscore-collected" not in given.headers
    finally:
        assert server.stop() == 0
    log = server.log()
    assert KEY not in log and "wrong-key-456" not in log
    lines = json_lines(log)  # every line is one JSON object
    assert all({"ts", "level", "logger", "message", "pid"} <= line.keys() for line in lines)
    assert all(line["ts"].endswith("Z") and line["ts"][10] == "T" for line in lines)

    summary = next(line for line in lines if line["message"] == "settings")
    assert summary["settings"]["auth_keys"] == "1 key(s)" and summary["settings"]["log_format"] == "json"

    access = {line["request_id"]: line for line in lines if line["logger"] == "mlscore.access"}
    for response in (given, made, refused):
        line = access[response.headers["x-ms-request-id"]]
        assert (line["method"], line["route"], line["status"]) == ("POST", "/score", response.status_code)
        assert line["latency_ms"] > 0 and line["client"] == "127.0.0.1"
    assert access["abc-1"]["run_ms"] == float(given.headers["x-ms-run-fn-exec-ms"])
    assert access["abc-1"]["queue_ms"] >= 0
    assert access[refused.headers["x-ms-request-id"]]["run_ms"] is None

    worker = {(line["logger"], line["request_id"]): line for line in lines
              if line.get("request_id") and line["logger"] != "mlscore.access"}
    made_id = made.headers["x-ms-request-id"]
    assert worker[("stdout", "abc-1")]["message"] == "run() got first"
    assert worker[("stdout", made_id)]["message"] == "run() got second"
    assert worker[("stderr", made_id)]["level"] == "WARNING"
    assert worker[("chatty", made_id)]["message"] == "logged from run()"
    assert worker[("stdout", made_id)]["pid"] != access[made_id]["pid"]  # run() ran in a worker process
    hello = next(line for line in lines if line["message"] == "init() says hello")
    assert "request_id" not in hello


def test_text_logs_tag_prints_from_run_with_the_request_id_and_have_no_access_lines_by_default(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "chatty.py"), "--executor", "threads")
    try:
        response = httpx.post(server.url + "/score", content=b"hi", headers={"x-ms-client-request-id": "client-7"})
        assert response.status_code == 200 and response.headers["x-ms-request-id"] == "client-7"
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "stdout: [client-7] run() got hi" in log
    assert "WARNING" in log.split("stderr: [client-7] a warning on stderr")[0].splitlines()[-1]
    assert "chatty: [client-7] logged from run()" in log
    assert "mlscore.access" not in log
    assert "settings: entry_script=" in log and "executor=threads" in log


def test_text_access_lines_when_turned_on(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"), "--executor", "inline",
                          "--access-log", "on")
    try:
        assert httpx.post(server.url + "/score", content=b"x", headers={"x-request-id": "r-1"}).status_code == 200
        assert httpx.get(server.url + "/health/ready").status_code == 200
    finally:
        assert server.stop() == 0
    access = [line for line in server.log().splitlines() if "mlscore.access" in line]
    assert len(access) == 1, access  # probes are left out
    assert "mlscore.access: [r-1] POST /score 200 " in access[0] and "(queue " in access[0]


def test_access_log_defaults_to_on_with_json_and_off_with_text():
    assert Settings.build({}, environ={}).access_log is False
    assert Settings.build({}, environ={"MLSCORE_LOG_FORMAT": "json"}).access_log is True
    assert Settings.build({"access_log": "off"}, environ={"MLSCORE_LOG_FORMAT": "json"}).access_log is False


def test_bad_log_format_stops_the_start_with_one_line(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"), "--log-format", "xml")
    assert result.returncode == 2
    assert result.stderr.strip() == "mlscore: error: --log-format='xml': must be one of text, json"


# --- the pieces ----------------------------------------------------------------------------------------


def test_a_full_queue_drops_and_counts_instead_of_blocking():
    records = logs.LogQueue(limit=3)
    for number in range(5):
        records.put(number)
    assert records.dropped == 2
    assert records.take() == [0, 1, 2]


def test_the_writer_keeps_lines_whole_in_chunks_of_at_most_pipe_buf(monkeypatch):
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    writes: list[int] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(logs.os, "write", recording_write)
    records = logs.LogQueue()
    writer = logs.LogWriter(records, stream, lambda item: item)
    lines = [b"%04d %s\n" % (number, b"x" * 90) for number in range(200)]
    for line in lines:  # queued before the writer starts: it takes them in batches
        records.put(line)
    writer.start()
    writer.stop()
    stream.close()
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"".join(lines)
    assert max(writes) <= logs.CHUNK and len(writes) < len(lines)


def test_script_output_becomes_one_record_per_line_tagged_with_the_request():
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger("stdout").addHandler(keep)
    logging.getLogger("stdout").setLevel(logging.INFO)
    output = logs.ScriptOutput("stdout", logging.INFO, io.StringIO())
    try:
        token = CURRENT.set(RequestContext(b"req-9"))
        try:
            print("one", 2, file=output)
            output.write("partial ")
            output.write("line\n\nlast")
            output.flush()
        finally:
            CURRENT.reset(token)
        other = threading.Thread(target=print, args=("from a thread",), kwargs={"file": output})
        other.start()
        other.join()
    finally:
        logging.getLogger("stdout").removeHandler(keep)
    assert [record.getMessage() for record in seen] == ["one 2", "partial line", "last", "from a thread"]
    handler = logs.QueueHandler(logs.LogQueue(), logs.LogWriter(logs.LogQueue(), io.StringIO(), bytes))
    token = CURRENT.set(RequestContext(b"req-9"))
    try:
        record = logging.makeLogRecord({"msg": "a %s", "args": ("b",)})
        handler.emit(record)
    finally:
        CURRENT.reset(token)
    assert (record.getMessage(), record.request_id) == ("a b", "req-9")


@pytest.mark.parametrize("timestamp, text", [(0.0, "1970-01-01T00:00:00.000Z"),
                                             (1714564800.1239, "2024-05-01T12:00:00.123Z")])
def test_timestamps_are_iso_8601_utc_with_milliseconds(timestamp, text):
    assert logs.iso_utc(timestamp) == text
