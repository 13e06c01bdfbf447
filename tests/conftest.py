"""Shared fixtures: the example models, real servers started as subprocesses, and in-process apps."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

# Each test in a child process that may crash without taking the run with it (tests/crash_guard.py).
pytest_plugins = ("crash_guard",)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
SERVING = re.compile(r"serving .* on http://([\d.]+):(\d+)")


@pytest.fixture(scope="session", autouse=True)
def example_models() -> None:
    """The example models, built once (make test builds them first; this covers a bare pytest run)."""
    subprocess.run([sys.executable, str(EXAMPLES / "build_models.py")], check=True, capture_output=True)


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """In-process servers export Azure's variables (AML_APP_ROOT, AZUREML_ENTRY_SCRIPT, ...) to the
    process that runs the script, as a real server does; here that is pytest's own, so each test
    gets the environment back as it found it."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        """The log once it holds `text` (the server writes its log from a thread of its own, a
        moment after the event); fails after `timeout` seconds with the log."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"{text!r} not in the server's log:\n{log}"
            time.sleep(0.02)
        return log

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlscore", "serve", "--port", "0", *args]


def azmlinfsrv_command(*args: str) -> list[str]:
    """Azure's command on a free port (its default host, 0.0.0.0, is for containers: tests set MLSCORE_HOST)."""
    return [sys.executable, "-m", "mlscore.server.azmlinfsrv", "--port", "0", *args]


def dies_with_tests() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGKILL the process when the test process dies, however that
    ends (a crash, SIGKILL): servers never outlive a test run. Linux only (prctl PR_SET_PDEATHSIG);
    elsewhere None."""
    if sys.platform != "linux":
        return None
    parent, prctl = os.getpid(), ctypes.CDLL(None).prctl  # looked up before the fork, not in the child

    def set_parent_death_signal() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the test process died before the signal was armed
            os._exit(1)

    return set_parent_death_signal


def read_response(stream: BinaryIO) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response: status, headers (lower-case names), body (by Content-Length or chunks)."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[bytes, bytes] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.rstrip(b"\r\n").partition(b": ")
        assert name.lower() not in headers or name.lower() == b"set-cookie", f"repeated header {name!r}"
        headers[name.lower()] = value
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while (size := int(stream.readline().strip(), 16)) != 0:
            body += stream.read(size)
            stream.readline()
        stream.readline()
    else:
        body = stream.read(int(headers.get(b"content-length", b"0")))
    return int(status_line.split()[1]), headers, body

def process_gone(pid: int, timeout: float = 10) -> bool:
    """Whether process `pid` is gone (or a zombie: killed, not reaped) within `timeout` seconds: a
    SIGKILLed process still runs its exit for a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def start_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
                 command: list[str] | None = None) -> Server:
    """Start `mlscore serve` with `args` (or `command`) on a free port and wait until it listens (or
    fail with its log)."""
    log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command or serve_command(*args), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, **(env or {})}, start_new_session=True, preexec_fn=dies_with_tests(),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = SERVING.search(log_path.read_text(errors="replace"))
        if match:
            url = f"http://{match.group(1)}:{match.group(2)}"
            if _answers(url):
                return Server(process, url, log_path)
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"server did not start within {timeout}s:\n{log_path.read_text()}")


def run_server_to_exit(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                       timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `mlscore serve` expecting it to exit by itself (a start-up failure)."""
    return subprocess.run(
        serve_command(*args), capture_output=True, text=True, cwd=tmp_path, timeout=timeout,
        env={**os.environ, **(env or {})}, preexec_fn=dies_with_tests(),
    )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


def _example_server(session_tmp: Path, name: str) -> Iterator[Server]:
    server = start_server(
        session_tmp, "--entry-script", str(EXAMPLES / name / "score.py"), "--model-dir", str(EXAMPLES / name / "models")
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def diabetes_server(session_tmp: Path) -> Iterator[Server]:
    yield from _example_server(session_tmp, "diabetes")


@pytest.fixture(scope="session")
def digits_server(session_tmp: Path) -> Iterator[Server]:
    yield from _example_server(session_tmp, "digits")


@pytest.fixture(scope="session")
def powerbi_server(session_tmp: Path) -> Iterator[Server]:
    yield from _example_server(session_tmp, "powerbi")


@pytest.fixture(scope="session")
def contract_server(session_tmp: Path) -> Iterator[Server]:
    """A real server on tests/scripts/contract.py, for behaviour that depends on the HTTP stack."""
    server = start_server(session_tmp, "--entry-script", str(SCRIPTS / "contract.py"), "--max-body-bytes", "1000")
    yield server
    server.stop()


@pytest.fixture()
def client_for():
    """An in-process client for a script in tests/scripts: `client_for("plain_echo.py", model_dir=...)`."""
    from starlette.testclient import TestClient

    from mlscore.server.app import create_app
    from mlscore.server.runner import build_state
    from mlscore.server.settings import Settings

    clients = []

    def make(script: str, env: dict[str, str] | None = None, **cli) -> TestClient:
        settings = Settings.build({"entry_script": str(SCRIPTS / script), "executor": "threads", **cli},
                                  environ=env or {})
        client = TestClient(create_app(build_state(settings)), raise_server_exceptions=False)
        client.__enter__()  # runs the app's lifespan: the executor starts
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# --- raw sockets (tests of the HTTP layer) ---------------------------------------------------

def connect(server: Server) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def read_until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not in time)."""
    deadline = time.monotonic() + within
    received = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"the connection was still open after {within} s; received {received[:200]!r}")
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def status_and_body(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body) if body else {}
