"""A worker's print() in run(): cheap, never waiting for the log writer, and every line either
written to the server's log or counted in mlscore_log_records_dropped_total."""

from __future__ import annotations

import io
import logging
import os
import time

import httpx

from conftest import SCRIPTS, start_server
from mlscore.scoring.request_context import CURRENT, RequestContext
from mlscore.server import logs

LINES = 200_000  # twenty times the worker's log queue, printed faster than lines are written: some are dropped


def _dropped(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("mlscore_log_records_dropped_total "):
            return float(line.split()[1])
    raise AssertionError("no mlscore_log_records_dropped_total in /metrics")


def test_every_line_a_worker_prints_is_written_or_counted_as_dropped_and_printing_stays_cheap(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "chatty_burst.py"))
    try:
        response = httpx.post(server.url + "/score", json={"lines": LINES}, timeout=60)
        assert response.status_code == 200
        dropped = _dropped(server.url)  # the worker reports its drops before it answers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.log().count("burst line") < LINES - dropped:
            time.sleep(0.1)
    finally:
        assert server.stop() == 0
    log = server.log()
    assert log.count("burst line") + dropped == LINES
    assert dropped > 0 and f"{int(dropped)} log line(s) of scoring workers" in log
    timings = response.json()
    # The same loop into a StringIO, in the same process: a generous factor, for a busy machine.
    assert timings["print_s"] < 30 * timings["calibration_s"] + 0.2, timings


def test_script_output_with_a_queue_puts_tagged_lines_and_counts_what_does_not_fit(caplog):
    caplog.set_level(logging.INFO, logger="stdout")
    records = logs.LogQueue(limit=2)
    output = logs.ScriptOutput("stdout", logging.INFO, io.StringIO(), records)
    token = CURRENT.set(RequestContext(b"req-3"))
    try:
        print("one", file=output)
        output.write("two\n\nthree\n")
    finally:
        CURRENT.reset(token)
    lines = records.take()
    assert [(name, level, request_id, text) for _, name, level, request_id, text in lines] == [
        ("stdout", logging.INFO, "req-3", "one"), ("stdout", logging.INFO, "req-3", "two")]
    assert records.dropped == 1
    text = logs.render_text(logs.TextFormatter())(lines[0]).decode()
    assert text.endswith(" INFO [%d] stdout: [req-3] one\n" % os.getpid())


def test_worker_drops_are_counted_each_time_and_warned_about_at_most_every_interval(caplog):
    drops = logs.WorkerDrops()
    with caplog.at_level(logging.WARNING, logger="mlscore.server"):
        drops.add(11, 5)
        drops.add(11, 7)
        drops.add(12, 1)
    assert drops.total == 13
    warnings = [record.getMessage() for record in caplog.records if record.name == "mlscore.server"]
    assert len(warnings) == 1 and warnings[0].startswith("5 log line(s)")
