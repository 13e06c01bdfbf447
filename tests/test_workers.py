"""The processes executor: workers that time out or die are replaced, and cost only their request."""

from __future__ import annotations

import time

import httpx

from conftest import SCRIPTS, start_server


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.05)


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
        assert "replacement worker" in server.log()
    finally:
        assert server.stop() == 0


def test_worker_past_the_scoring_timeout_is_killed_and_replaced(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "processes",
                          "--scoring-timeout-ms", "500")
    try:
        first_pid = httpx.post(server.url + "/score", json={"ms": 0}).json()["pid"]
        started = time.monotonic()
        slow = httpx.post(server.url + "/score", json={"ms": 5000}, timeout=30)
        assert slow.status_code == 504 and time.monotonic() - started < 2.0
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
        assert "2 scoring worker(s) ready" in server.log()
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
