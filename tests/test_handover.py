"""Two servers sharing one inherited listening socket (`--fd`), and the drain on a stop: what lets a
local service be replaced under traffic with no failed request."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import httpx

from conftest import SCRIPTS, dies_with_tests, run_server_to_exit, start_server


def listening_socket() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def serve_on_fd(tmp_path: Path, sock: socket.socket, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "wb")
    command = [sys.executable, "-m", "mlscore", "serve", "--fd", str(sock.fileno()), "--entry-script",
               str(SCRIPTS / "whoami.py"), "--executor", "threads", "--max-concurrent-requests", "4"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()],
                            start_new_session=True, preexec_fn=dies_with_tests())


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def wait_for_log(tmp_path: Path, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in (tmp_path / f"{name}.log").read_text(errors="replace"):
        assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text(errors="replace")
        time.sleep(0.05)


class Traffic:
    """Clients posting in a loop on kept-alive connections until stopped; every outcome recorded,
    and each client's latest answer."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.answers: list[httpx.Response] = []
        self.errors: list[BaseException] = []
        self.latest: list[httpx.Response | None] = [None] * clients
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(index,), daemon=True) for index in range(clients)]
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(self.url + "/score", content=b"x")
                except httpx.HTTPError as error:
                    self.errors.append(error)
                    continue
                self.answers.append(answer)
                self.latest[index] = answer

    def every_client_answered_by(self, pid: int) -> bool:
        return all(answer is not None and answer.json()["pid"] == pid for answer in self.latest)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def test_a_second_server_on_the_same_socket_takes_over_under_traffic_without_a_failed_request(tmp_path):
    sock = listening_socket()
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    old = serve_on_fd(tmp_path, sock, "old")
    new = None
    try:
        wait_for_log(tmp_path, "old", "serving ")
        traffic = Traffic(url)
        wait_until(lambda: traffic.every_client_answered_by(old.pid))
        new = serve_on_fd(tmp_path, sock, "new")
        wait_for_log(tmp_path, "new", "serving ")
        old.send_signal(signal.SIGTERM)
        assert old.wait(timeout=20) == 0
        wait_until(lambda: traffic.every_client_answered_by(new.pid))
        traffic.stop()
    finally:
        for process in (old, new):
            if process is not None and process.poll() is None:
                process.kill()
        sock.close()
    assert traffic.errors == []
    assert all(answer.status_code == 200 for answer in traffic.answers)
    pids = [answer.json()["pid"] for answer in traffic.answers]
    assert pids[0] == old.pid and pids[-1] == new.pid
    assert any(answer.headers.get("connection") == "close" for answer in traffic.answers)


def test_a_stopping_server_answers_kept_alive_clients_closing_each_connection(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "whoami.py"), "--executor", "threads")
    traffic = Traffic(server.url, clients=2)
    try:
        wait_until(lambda: traffic.every_client_answered_by(server.process.pid))  # each on an open connection
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
    finally:
        traffic.stop()
        server.stop()
    # Requests sent on open connections were answered, the last ones with "Connection: close";
    # only new connections, once nothing listened, were refused.
    assert all(answer.status_code == 200 for answer in traffic.answers)
    assert any(answer.headers.get("connection") == "close" for answer in traffic.answers)
    assert all(isinstance(error, httpx.ConnectError) for error in traffic.errors), traffic.errors


def test_ready_turns_503_while_draining(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "whoami.py"), "--executor", "threads")
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert client.get("/health/ready").status_code == 200
            server.process.send_signal(signal.SIGTERM)
            # Inside the drain (the second after "stopping:"): the connection stays open, answered and then closed.
            server.wait_log("stopping:")
            answer = client.get("/health/ready")
            assert answer.status_code == 503 and answer.json()["message"] == "stopping"
            assert answer.headers["connection"] == "close"
    finally:
        server.stop()


def test_fd_that_is_not_a_listening_socket_stops_the_start(tmp_path):
    done = run_server_to_exit(tmp_path, "--fd", "0", "--entry-script", str(SCRIPTS / "whoami.py"))
    assert done.returncode == 2
    assert "--fd 0: not" in done.stderr
    done = run_server_to_exit(tmp_path, "--fd", "seven", "--entry-script", str(SCRIPTS / "whoami.py"))
    assert done.returncode == 2 and "file descriptor number" in done.stderr
