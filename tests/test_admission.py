"""Admission control and scoring timeouts, black-box against a real server. The tests wait for
events (run() was called, a request is queued, a client's departure was seen), hold slots until they
let them go, and tell which limit fired by the message that names it; what time bounds remain are
generous, for a loaded machine."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from conftest import SCRIPTS, Server, start_server

EXECUTORS = ["threads", "processes"]


def post(url: str, ms: int, tag: str = "-", headers: dict[str, str] | None = None,
         until: Path | None = None) -> httpx.Response:
    """A request whose run() sleeps `ms` (or until the file `until` exists, if sooner)."""
    body = {"ms": ms, "tag": tag, **({"until": str(until)} if until else {})}
    return httpx.post(url + "/score", json=body, headers=headers or {}, timeout=30)


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def metrics_show(server: Server, line: str) -> bool:
    return line in httpx.get(server.url + "/metrics").text


def sleepy_server(tmp_path: Path, executor: str, queue_wait_ms: int, scoring_timeout_ms: int) -> Server:
    """A server on sleepy.py with one slot and two queue places; `calls` lists the tags run() got,
    and touching `release` ends every run() given `until=release`."""
    calls = tmp_path / "calls.txt"
    calls.touch()
    server = start_server(
        tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", executor,
        "--max-concurrent-requests", "1", "--max-queue-wait-ms", str(queue_wait_ms), "--max-queue-size", "2",
        "--scoring-timeout-ms", str(scoring_timeout_ms), env={"SLEEPY_CALLS_FILE": str(calls)},
    )
    server.calls = calls
    server.release = tmp_path / "release"
    return server


@pytest.fixture(params=EXECUTORS)
def sleepy(request, tmp_path):
    """Short limits: a queued request expires after 300 ms, run() is cut after 1500 ms."""
    server = sleepy_server(tmp_path, request.param, 300, 1500)
    yield server
    server.release.touch()
    server.stop()


@pytest.fixture(params=EXECUTORS)
def patient(request, tmp_path):
    """Long limits, so that requests stay queued and slots stay held while a test looks at them."""
    server = sleepy_server(tmp_path, request.param, 5000, 20000)
    yield server
    server.release.touch()
    server.stop()


def holding(pool: concurrent.futures.Executor, server: Server, ms: int) -> concurrent.futures.Future:
    """A request holding the one slot, running by the time this returns, until `server.release`
    (or `ms`)."""
    holder = pool.submit(post, server.url, ms, "holder", until=server.release)
    wait_until(lambda: "holder" in server.calls.read_text())
    return holder


def test_queued_request_past_max_queue_wait_is_a_503_at_the_deadline(sleepy):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = holding(pool, sleepy, 1400)
        started = time.monotonic()
        rejected = post(sleepy.url, 0, "queued")
        waited = time.monotonic() - started
        assert not holder.done()  # at its own deadline, while the slot was still held
        sleepy.release.touch()
        assert holder.result().status_code == 200
    assert rejected.status_code == 503
    assert int(rejected.headers["retry-after"]) >= 1
    assert "Waited 300 ms" in rejected.json()["message"]
    assert waited >= 0.25
    assert "queued" not in sleepy.calls.read_text()


def test_request_over_the_queue_bound_is_a_503_at_once(patient):
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        holder = holding(pool, patient, 10000)
        waiting = [pool.submit(post, patient.url, 0, f"q{i}") for i in range(2)]
        wait_until(lambda: metrics_show(patient, "mlscore_queue_depth 2.0"))
        started = time.monotonic()
        full = post(patient.url, 0, "over")
        elapsed = time.monotonic() - started
        assert patient.calls.read_text().split() == ["holder"]  # answered before any slot freed
        patient.release.touch()
        assert holder.result().status_code == 200
        assert [w.result().status_code for w in waiting] == [200, 200]
    assert full.status_code == 503
    assert "Queue full" in full.json()["message"] and "retry-after" in full.headers
    assert elapsed < 2.5  # not queued: that would have been a 503 after the 5 s queue wait
    assert "over" not in patient.calls.read_text()


def test_queued_request_gets_the_slot_when_it_frees_in_time(patient):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        holder = holding(pool, patient, 10000)
        queued = pool.submit(post, patient.url, 0, "queued")
        wait_until(lambda: metrics_show(patient, "mlscore_queue_depth 1.0"))
        patient.release.touch()
        assert holder.result().status_code == 200
        assert queued.result().status_code == 200
    timing = queued.result().headers["server-timing"]
    assert timing.startswith("queue;dur=") and "run;dur=" in timing
    assert patient.calls.read_text().split() == ["holder", "queued"]


def test_run_past_the_scoring_timeout_is_a_504_on_time(sleepy):
    started = time.monotonic()
    response = post(sleepy.url, 10000, until=sleepy.release)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert "1500 ms" in response.json()["message"]
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert 1.4 <= elapsed < 4.5  # at the timeout, long before run() would have returned


def test_request_timeout_header_only_shortens_the_limits(sleepy):
    bad = post(sleepy.url, 0, headers={"x-ms-request-timeout-ms": "soon"})
    assert bad.status_code == 400 and "x-ms-request-timeout-ms" in bad.json()["message"]
    assert post(sleepy.url, 100, headers={"x-ms-request-timeout-ms": "999999"}).status_code == 200
    response = post(sleepy.url, 10000, headers={"x-ms-request-timeout-ms": "500"}, until=sleepy.release)
    assert response.status_code == 504
    assert "scoring timeout of 500 ms" in response.json()["message"]  # the header's limit, not the 1500 ms


def test_slot_held_by_a_timed_out_run_makes_the_replica_unready_until_it_returns(sleepy):
    assert post(sleepy.url, 10000, until=sleepy.release).status_code == 504
    ready = httpx.get(sleepy.url + "/health/ready")
    assert ready.status_code == 503 and "scoring timeout" in ready.json()["message"]
    busy = post(sleepy.url, 0)
    assert busy.status_code == 503 and "retry-after" in busy.headers
    sleepy.release.touch()  # run() returns (threads); a killed worker is replaced anyway (processes)
    wait_until(lambda: httpx.get(sleepy.url + "/health/ready").status_code == 200)
    assert post(sleepy.url, 0).status_code == 200


def test_health_is_answered_while_every_slot_is_busy(patient):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = holding(pool, patient, 10000)
        started = time.monotonic()
        assert httpx.get(patient.url + "/health/live", timeout=5).status_code == 200
        assert httpx.get(patient.url + "/", timeout=5).status_code == 200
        assert time.monotonic() - started < 2.0
        assert not holder.done()  # answered while the slot was held
        patient.release.touch()
        assert holder.result().status_code == 200


def test_client_that_disconnects_while_queued_never_reaches_run(patient):
    host, port = patient.url.removeprefix("http://").split(":")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = holding(pool, patient, 10000)
        body = b'{"ms": 0, "tag": "gone"}'
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_until(lambda: metrics_show(patient, "mlscore_queue_depth 1.0"))
        wait_until(lambda: metrics_show(patient, 'mlscore_rejections_total{reason="client_disconnect"} 1.0'))
        assert metrics_show(patient, "mlscore_queue_depth 0.0")
        patient.release.touch()
        assert holder.result().status_code == 200
    assert post(patient.url, 0, "after").status_code == 200
    assert patient.calls.read_text().split() == ["holder", "after"]


def test_inline_executor_scores_on_the_event_loop_and_queues_behind_it(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "inline")
    try:
        response = post(server.url, 0)
        assert response.status_code == 200 and response.json()["pid"] == server.process.pid
        assert server.wait_log("scoring timeout is not enforced")
    finally:
        server.stop()
