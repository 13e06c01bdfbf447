"""Readiness transitions, black-box against a real server: 503 with the reason while init() or the
warm-up runs (and a stop then does not wait for them), when the warm-up failed, and while every
worker's replacement fails its init(); and health answered at once while every scoring slot is busy."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from conftest import SCRIPTS, Server, dies_with_tests, serve_command, start_server

EXECUTORS = ["threads", "processes"]
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def start_listening(tmp_path: Path, *args: str, env: dict[str, str], timeout: float = 60) -> Server:
    """Start `mlscore serve` and return as soon as it listens, before init() has finished."""
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(serve_command(*args), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env={**os.environ, **env}, start_new_session=True, preexec_fn=dies_with_tests())
    server = Server(process, "", log_path)
    try:
        wait_until(lambda: LISTENING.search(server.log()) is not None or process.poll() is not None, timeout)
        match = LISTENING.search(server.log())
        assert match, f"server exited with {process.returncode}:\n{server.log()}"
    except BaseException:
        process.kill()
        raise
    server.url = f"http://{match.group(1)}:{match.group(2)}"
    return server


def assert_starting(url: str) -> None:
    """Alive, not ready (503, Retry-After, why), and /score turned away the same way."""
    assert httpx.get(url + "/health/live").status_code == 200
    healthy = httpx.get(url + "/")  # Azure's probe means ready
    assert healthy.status_code == 503 and healthy.headers["retry-after"] == "1"
    assert healthy.json() == {"message": "Not ready: init() and the warm-up run() have not finished yet."}
    for path in ("/health/ready", "/v2/health/ready"):
        ready = httpx.get(url + path)
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert ready.json() == {"ready": False, "message": "init() and the warm-up run() have not finished yet"}
    score = httpx.post(url + "/score", json={"data": [[1.0, 2.0]]})
    assert score.status_code == 503 and score.headers["retry-after"] == "1"
    assert score.json()["message"] == "Not ready: init() and the warm-up run() have not finished yet."


@pytest.mark.parametrize("executor", EXECUTORS)
def test_ready_is_503_while_init_and_the_warm_up_run_then_200(tmp_path, executor):
    gates = tmp_path / "gates"
    gates.mkdir()
    server = start_listening(tmp_path, "--entry-script", str(SCRIPTS / "slow_init.py"), "--executor", executor,
                             env={"SLOW_INIT_GATES": str(gates)})
    try:
        wait_until(lambda: (gates / "init-started").exists())
        assert_starting(server.url)
        (gates / "init-may-finish").touch()
        wait_until(lambda: (gates / "run-started").exists())  # the warm-up run() with the input sample
        assert_starting(server.url)
        (gates / "run-may-finish").touch()
        wait_until(lambda: httpx.get(server.url + "/health/ready").status_code == 200)
        assert httpx.get(server.url + "/health/ready").json() == {"ready": True}
        assert httpx.post(server.url + "/score", json={"data": [[1.0, 2.0]]}, timeout=30).json() == 3.0
        assert f"executor {executor}" in server.log().split("serving ")[1]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("executor", EXECUTORS)
def test_sigterm_while_init_runs_exits_0_without_waiting_for_it(tmp_path, executor):
    gates = tmp_path / "gates"
    gates.mkdir()  # init() waits for a gate that never opens
    server = start_listening(tmp_path, "--entry-script", str(SCRIPTS / "slow_init.py"), "--executor", executor,
                             env={"SLOW_INIT_GATES": str(gates)})
    try:
        wait_until(lambda: (gates / "init-started").exists())
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - stopped_at < 5.0
    finally:
        server.stop()


def test_failed_warm_up_in_the_worker_processes_keeps_the_replica_unready_with_the_reason(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "warmup_fails.py"), "--executor", "processes")
    try:
        ready = httpx.get(server.url + "/health/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert ready.json()["message"] == ("warm-up run() with the input sample failed: ValueError: all-zero input")
        assert httpx.get(server.url + "/health/live").status_code == 200
        assert server.wait_log("not ready: warm-up run() with the input sample failed")
    finally:
        assert server.stop() == 0


def test_replacement_worker_whose_init_fails_keeps_the_replica_unready_with_the_reason(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "flaky_init.py"), "--executor", "processes",
                          env={"FLAKY_INIT_STATE": str(state)})
    try:
        assert httpx.post(server.url + "/score", content=b"die", timeout=30).status_code == 500

        def says_why() -> bool:
            ready = httpx.get(server.url + "/health/ready")
            return ready.status_code == 503 and "init() failed" in ready.json()["message"]

        wait_until(says_why)
        ready = httpx.get(server.url + "/health/ready")
        assert ready.headers["retry-after"] == "1"
        assert "a replacement worker's init() failed" in ready.json()["message"]
        assert "RuntimeError: model store unreachable" in ready.json()["message"]
        score = httpx.post(server.url + "/score", content=b"hello")
        assert score.status_code == 503 and score.headers["retry-after"] == "1"
        assert "model store unreachable" in score.json()["message"]
        (state / "init-may-succeed").touch()
        wait_until(lambda: httpx.get(server.url + "/health/ready").status_code == 200)
        assert httpx.post(server.url + "/score", content=b"hello", timeout=30).status_code == 200
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("executor", EXECUTORS)
def test_health_and_readiness_answer_at_once_while_every_slot_is_busy(tmp_path, executor):
    calls = tmp_path / "calls.txt"
    calls.touch()
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", executor,
                          "--max-concurrent-requests", "1", "--max-queue-wait-ms", "5000",
                          env={"SLEEPY_CALLS_FILE": str(calls)})
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            holder = pool.submit(httpx.post, server.url + "/score", timeout=30,
                                 json={"ms": 20000, "tag": "holder", "until": str(tmp_path / "release")})
            wait_until(lambda: "holder" in calls.read_text())
            queued = pool.submit(httpx.post, server.url + "/score", json={"ms": 0, "tag": "queued"}, timeout=30)
            wait_until(lambda: "mlscore_queue_depth 1.0" in httpx.get(server.url + "/metrics").text)
            for path in ("/", "/health/live", "/health/ready", "/v2/health/ready"):
                started = time.monotonic()
                response = httpx.get(server.url + path, timeout=5)
                assert response.status_code == 200, path  # busy is not unready
                assert time.monotonic() - started < 2.0, path
            assert calls.read_text().split() == ["holder"]  # still busy when health was answered
            (tmp_path / "release").touch()
            assert holder.result().status_code == 200 and queued.result().status_code == 200
    finally:
        (tmp_path / "release").touch()
        assert server.stop() == 0
