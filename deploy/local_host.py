"""The process that keeps a local service's port: it owns the listening socket and runs the server
(`mlscore serve --fd …`) as its child. An update starts the next server on the same socket, waits
until it is ready, and only then stops the old one, which drains; the port never closes, so no
request in between fails.

Run as `python -m mlscore.deploy.local_host SERVICE_DIR`. It reads `spec.json` there at start and
on SIGHUP (the next generation to run), writes its state to `state.json` (replaced atomically), and
stops its server and exits on SIGTERM. Nothing here is on the request path.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPEC = "spec.json"
STATE = "state.json"
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 30


@dataclass(slots=True)
class Spec:
    """One generation of the service: the server's arguments and environment, and how long to wait."""

    generation: int
    args: list[str]
    env: dict[str, str]
    host: str
    port: int
    ready_timeout: float
    stop_timeout: float

    @classmethod
    def read(cls, folder: Path) -> "Spec":
        return cls(**json.loads((folder / SPEC).read_text(encoding="utf-8")))

    def write(self, folder: Path) -> None:
        _write_atomically(folder / SPEC, asdict(self))


@dataclass(slots=True)
class State:
    """What the host reports: `state` is Transitioning, Healthy, Failed or Stopped (Azure's names)."""

    state: str
    generation: int  # the generation serving (or, while the first starts, starting)
    port: int | None = None
    host_pid: int = field(default_factory=os.getpid)
    server_pid: int | None = None
    message: str = ""
    log: str = ""  # the serving generation's log file
    update: dict[str, Any] | None = None  # the last update: generation, state, message

    @classmethod
    def read(cls, folder: Path) -> "State | None":
        try:
            return cls(**json.loads((folder / STATE).read_text(encoding="utf-8")))
        except (FileNotFoundError, json.JSONDecodeError):
            return None


def server_log(folder: Path, generation: int) -> Path:
    return folder / f"server-{generation}.log"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Generation:
    """One server process on the shared socket, with a private socket of its own for health checks. It
    accepts on the shared socket only once ready (--accept-after-init): until then every connection
    goes to the generation serving, never to one that could only refuse it."""

    def __init__(self, folder: Path, spec: Spec, public: socket.socket) -> None:
        self.spec = spec
        self.log = server_log(folder, spec.generation)
        private = socket.create_server(("127.0.0.1", 0))
        private.set_inheritable(True)
        self._health_port = private.getsockname()[1]
        fds = [public.fileno(), private.fileno()]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlscore", "serve", f"--fd={public.fileno()}", f"--health-fd={private.fileno()}",
                 "--accept-after-init", *spec.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=fds,
                env={**os.environ, **spec.env}, cwd=folder,
            )
        private.close()  # the child has its copy; ours would keep its port open after the child ends

    def ready(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self._health_port, timeout=2)
        try:
            connection.request("GET", "/health/ready")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.spec.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def failure(self, why: str) -> str:
        tail = log_tail(self.log)
        return f"{why}; the end of {self.log}:\n{tail}" if tail else why


class Host:
    """The host's life: bind, start the first generation, then replace it on SIGHUP until SIGTERM."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.reload = False  # SIGHUP: spec.json holds the next generation
        self.stopping = False  # SIGTERM
        self.current: Generation | None = None
        self.public: socket.socket | None = None
        self.port: int | None = None

    def run(self) -> int:
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal that deployed is not ours
        spec = Spec.read(self.folder)
        try:
            public = bind(spec.host, spec.port)
        except OSError as error:
            self.report(State("Failed", spec.generation, spec.port, message=f"cannot listen on "
                                                                              f"{spec.host}:{spec.port}: {error.strerror}"))
            return 1
        self.port = public.getsockname()[1]
        self.public = public
        self.report(State("Transitioning", spec.generation, self.port, message="starting the server"))
        first = self.start(spec)
        if first is None:
            return 1
        self.current = first
        self.report(self.healthy())
        while not self.stopping:
            time.sleep(POLL_SECONDS)
            if self.reload:
                self.reload = False
                self.replace(Spec.read(self.folder))
            elif self.current.exited() is not None:
                code = self.current.exited()
                self.report(State("Failed", self.current.spec.generation, self.port, server_pid=None,
                                  message=self.current.failure(f"the server exited with status {code}"),
                                  log=str(self.current.log)))
                return 1
        code = self.current.stop()
        self.report(State("Stopped", self.current.spec.generation, self.port, message=f"stopped (server exit "
                                                                                        f"status {code})",
                          log=str(self.current.log)))
        return 0

    def start(self, spec: Spec) -> Generation | None:
        """Start a generation and wait until it is ready; None (reported) when it fails."""
        assert self.public is not None
        generation = Generation(self.folder, spec, self.public)
        deadline = time.monotonic() + spec.ready_timeout
        while not generation.ready():
            code = generation.exited()
            if code is not None:
                self.failed(spec, generation.failure(f"the server exited with status {code} before it was ready"))
                return None
            if time.monotonic() > deadline or self.stopping:
                generation.stop()
                why = "stopped" if self.stopping else f"not ready after {spec.ready_timeout:g} s"
                self.failed(spec, generation.failure(why))
                return None
            time.sleep(POLL_SECONDS)
        return generation

    def replace(self, spec: Spec) -> None:
        assert self.current is not None
        serving = self.healthy()
        serving.update = {"generation": spec.generation, "state": "Transitioning", "message": "starting"}
        self.report(serving)
        new = self.start(spec)
        if new is None:
            return
        old, self.current = self.current, new
        old.stop()
        state = self.healthy()
        state.update = {"generation": spec.generation, "state": "Healthy",
                        "message": f"generation {spec.generation} serving, generation {old.spec.generation} stopped"}
        self.report(state)

    def failed(self, spec: Spec, message: str) -> None:
        if self.current is None:  # the first generation: the host ends, which frees the port
            self.report(State("Failed", spec.generation, self.port, message=message,
                              log=str(server_log(self.folder, spec.generation))))
            return
        state = self.healthy()
        state.update = {"generation": spec.generation, "state": "Failed", "message": message}
        self.report(state)

    def healthy(self) -> State:
        assert self.current is not None
        return State("Healthy", self.current.spec.generation, self.port, server_pid=self.current.process.pid,
                     log=str(self.current.log))

    def report(self, state: State) -> None:
        _write_atomically(self.folder / STATE, asdict(state))


def bind(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), reuse_port=False)
    sock.set_inheritable(True)
    return sock


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlscore.deploy.local_host SERVICE_DIR", file=sys.stderr)
        return 2
    return Host(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
