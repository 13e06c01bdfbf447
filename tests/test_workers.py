"""The processes executor: workers that time out or die are replaced, and cost only their request."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from typing import Callable

import httpx

from conftest import SCRIPTS, start_server
from mlscore.scoring.messages import RawRequest
from mlscore.server.worker import RequestReader, cancel_frame, request_frame


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def wait_ready(url: str) -> None:
    wait_until(lambda: httpx.get(url + "/health/ready").status_code == 200)


def metrics_show(url: str, line: str) -> bool:
    return line in httpx.get(url + "/metrics").text


def test_worker_that_dies_costs_only_its_request_and_is_replaced(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "crashy.py"), "--executor", "processes")
    try:
        first_pid = httpx.post(server.url + "/score", content=b"hello").json()["pid"]
        died = httpx.post(server.url + "/score", content=b"die", timeout=30)
        assert died.status_code == 500
        assert "died" in died.json()["message"] and died.headers["x-ms-run-function-failed"] == "True"
        wait_ready(server.url)
        after = httpx.post(server.url + "/score", content=b"hello", timeout=30)
        assert after.status_code == 200 and after.json()["pid"] != first_pid
        assert server.wait_log("replacement worker")
    finally:
        assert server.stop() == 0


def test_worker_past_the_scoring_timeout_is_killed_and_replaced(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "processes",
                          "--scoring-timeout-ms", "500")
    try:
        first_pid = httpx.post(server.url + "/score", json={"ms": 0}).json()["pid"]
        started = time.monotonic()
        slow = httpx.post(server.url + "/score", json={"ms": 5000}, timeout=30)
        assert slow.status_code == 504 and "scoring timeout of 500 ms" in slow.json()["message"]
        assert time.monotonic() - started < 2.5  # at the timeout, not when run() would have returned
        wait_ready(server.url)
        after = httpx.post(server.url + "/score", json={"ms": 0}, timeout=30)
        assert after.status_code == 200 and after.json()["pid"] != first_pid
    finally:
        server.stop()


def test_processes_executor_runs_init_in_each_worker_not_in_the_front(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "crashy.py"), "--executor", "processes",
                          "--workers", "2", "--max-concurrent-requests", "2")
    try:
        pids = {httpx.post(server.url + "/score", content=b"x").json()["pid"] for _ in range(10)}
        assert server.process.pid not in pids
        assert 1 <= len(pids) <= 2
        assert server.wait_log("2 scoring worker(s) ready")
    finally:
        server.stop()


def test_streamed_body_crosses_from_the_worker_chunk_by_chunk(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "raw_echo.py"), "--executor", "processes")
    try:
        for _ in range(2):  # the worker is free again once the stream ended
            with httpx.stream("POST", server.url + "/score?mode=stream", content=b"", timeout=30) as response:
                assert response.status_code == 200
                assert "content-length" not in response.headers
                assert b"".join(response.iter_bytes()) == b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;"
        binary = bytes(range(256)) * 100
        echoed = httpx.post(server.url + "/score", content=binary, headers={"content-type": "application/octet-stream"})
        assert echoed.content == binary
    finally:
        server.stop()


def _warm(url: str, count: int = 60) -> None:
    """Quick requests, so that the front measures run() as fast and holds queued requests ready
    in the worker's socket (see supervisor.py)."""
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            assert client.post(url + "/score", json={"ms": 0, "tag": "warm"}).status_code == 200


def test_requests_held_ready_in_a_busy_worker_keep_the_queue_rules(tmp_path):
    calls, release = tmp_path / "calls.txt", tmp_path / "release"
    calls.touch()
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "processes",
                          "--max-concurrent-requests", "1", "--max-queue-wait-ms", "20000",
                          env={"SLEEPY_CALLS_FILE": str(calls)})
    try:
        _warm(server.url)
        host, port = server.url.removeprefix("http://").split(":")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            holder = pool.submit(httpx.post, server.url + "/score",
                                 json={"ms": 20000, "tag": "holder", "until": str(release)}, timeout=30)
            wait_until(lambda: "holder" in calls.read_text())
            body = b'{"ms": 0, "tag": "gone"}'
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                wait_until(lambda: metrics_show(server.url, "mlscore_queue_depth 1.0"))
            wait_until(lambda: metrics_show(server.url, 'mlscore_rejections_total{reason="client_disconnect"} 1.0'))
            started = time.monotonic()
            expired = httpx.post(server.url + "/score", json={"ms": 0, "tag": "expired"}, timeout=30,
                                 headers={"x-ms-request-timeout-ms": "400"})
            waited = time.monotonic() - started
            assert not holder.done()  # at its own deadline, while the worker was still busy
            release.touch()
            assert holder.result().status_code == 200
        assert expired.status_code == 503 and "Waited 400 ms" in expired.json()["message"]
        assert waited >= 0.35
        assert httpx.post(server.url + "/score", json={"ms": 0, "tag": "after"}).status_code == 200
        assert [tag for tag in calls.read_text().split() if tag != "warm"] == ["holder", "after"]
        metrics = httpx.get(server.url + "/metrics").text
        assert "mlscore_queue_depth 0.0" in metrics and "mlscore_in_flight 0.0" in metrics
        assert 'mlscore_rejections_total{reason="client_disconnect"} 1.0' in metrics
        assert 'mlscore_rejections_total{reason="queue_timeout"} 1.0' in metrics
    finally:
        release.touch()
        assert server.stop() == 0


def test_requests_held_ready_by_a_killed_worker_go_to_its_replacement(tmp_path):
    calls = tmp_path / "calls.txt"
    calls.touch()
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "processes",
                          "--max-concurrent-requests", "1", "--max-queue-wait-ms", "20000",
                          "--scoring-timeout-ms", "1500", env={"SLEEPY_CALLS_FILE": str(calls)})
    try:
        _warm(server.url)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            slow = pool.submit(httpx.post, server.url + "/score", json={"ms": 20000, "tag": "slow"}, timeout=30)
            wait_until(lambda: "slow" in calls.read_text())
            queued = [pool.submit(httpx.post, server.url + "/score", json={"ms": 0, "tag": f"q{i}"}, timeout=30)
                      for i in range(2)]
            wait_until(lambda: metrics_show(server.url, "mlscore_queue_depth 2.0"))
            assert not slow.done()  # both were queued (and held ready) before the worker was killed
            assert slow.result().status_code == 504
            assert [response.result().status_code for response in queued] == [200, 200]
        tags = [tag for tag in calls.read_text().split() if tag != "warm"]
        assert tags[0] == "slow" and sorted(tags[1:]) == ["q0", "q1"]
    finally:
        server.stop()


def test_worker_reads_requests_and_cancels_sent_while_it_runs():
    front, back = socket.socketpair()
    with front, back:
        request = RawRequest("POST", "/score", b"a=1", [(b"content-type", b"application/json")], b'{"x": 1}')
        front.sendall(request_frame(request, 1) + request_frame(request, 2, start_by=12.5) + cancel_frame(1))
        reader = RequestReader(back)
        reader.read(block=True)
        assert [(sequence, start_by) for sequence, start_by, _ in reader.pending] == [(1, 0.0), (2, 12.5)]
        assert reader.pending[1][2] == request and reader.cancelled == {1}
        front.close()
        reader.read(block=True)
        assert reader.closed
