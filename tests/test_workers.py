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
