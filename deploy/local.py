"""The `local` compute target: a service as a background process on this machine.

Each service gets a folder under the registry root, `services/<name>/`, holding the models laid out
for `AZUREML_MODEL_DIR` (links to the registry's files, one folder per generation), the server's
logs and the host process's `spec.json` and `state.json` (see `local_host`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mlscore.deploy.configs import DATA_COLLECTION_DIR
from mlscore.deploy.layout import lay_out_models
from mlscore.deploy.local_host import Spec, State, log_tail, server_log
from mlscore.deploy.registry import ModelVersion

HOST_LOG = "host.log"
HOST_PID = "host.pid"
READY_TIMEOUT = 300.0  # seconds a new server may take to load and warm up, as Azure's local deploys allow
STOP_TIMEOUT = 45.0  # the server's grace period (30 s) and its drain, with room to spare
LISTEN_HOST = "127.0.0.1"  # a local service is for this machine; containers and clusters publish wider


class LocalServiceError(Exception):
    """A local service could not be started, updated or stopped; the message says why."""


class LocalService:
    """One local service's folder and its host process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    # starting and replacing

    def start(self, generation: int, models: Sequence[ModelVersion], serve_args: Sequence[str],
              env: Mapping[str, str], port: int | None) -> None:
        """Lay out the models and start the host with the first generation (returns at once)."""
        if self.host_running():
            raise LocalServiceError(f"a server for {self.folder.name} is already running (pid {self.host_pid()})")
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in ("state.json", HOST_PID):
            (self.folder / stale).unlink(missing_ok=True)
        self._spec(generation, models, serve_args, env, port or 0).write(self.folder)
        with open(self.folder / HOST_LOG, "ab") as log:
            host = subprocess.Popen([sys.executable, "-m", "mlscore.deploy.local_host", str(self.folder)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.folder)
        (self.folder / HOST_PID).write_text(str(host.pid), encoding="ascii")

    def next_generation(self, recorded: int) -> int:
        """The number of the next generation: past the one recorded serving, and past any the host
        tried since (a failed update's number is not used again: its outcome stays in state.json)."""
        state = self.state()
        tried = [recorded] + ([state.generation, int((state.update or {}).get("generation", 0))] if state else [])
        return max(tried) + 1

    def replace(self, generation: int, models: Sequence[ModelVersion], serve_args: Sequence[str],
                env: Mapping[str, str]) -> None:
        """Ask the running host to start `generation` beside the serving one and switch to it."""
        state, pid = self.state(), self.host_pid()
        if state is None or state.port is None or pid is None or not _alive(pid):
            raise LocalServiceError(f"service {self.folder.name} is not running; deploy it again")
        self._spec(generation, models, serve_args, env, state.port).write(self.folder)
        os.kill(pid, signal.SIGHUP)

    def _spec(self, generation: int, models: Sequence[ModelVersion], serve_args: Sequence[str],
              env: Mapping[str, str], port: int) -> Spec:
        models_folder = self.folder / f"generation-{generation}"
        shutil.rmtree(models_folder, ignore_errors=True)
        model_dir = lay_out_models(models, models_folder, link=True)
        return Spec(generation, [*serve_args, "--model-dir", str(model_dir)], dict(env), LISTEN_HOST, port,
                    READY_TIMEOUT, STOP_TIMEOUT)

    # waiting

    def wait(self, generation: int, progress: Callable[[str], None],
             timeout: float = READY_TIMEOUT + 30) -> tuple[str, State]:
        """Wait until `generation` serves or fails (the first start, or an update): "Healthy" or
        "Failed", and the host's state (after a failed update, the old generation still serves)."""
        deadline = time.monotonic() + timeout
        shown = ""
        while True:
            state = self.state()
            outcome = _outcome(state, generation)
            if state is not None and outcome != shown:
                progress(outcome)
                shown = outcome
            if outcome in ("Healthy", "Failed") and state is not None:
                return outcome, state
            if not self.host_running() and (state is None or state.state != "Failed"):
                tail = log_tail(self.folder / HOST_LOG)
                raise LocalServiceError(f"the service's host process ended unexpectedly:\n{tail}")
            if time.monotonic() > deadline:
                raise LocalServiceError(f"generation {generation} neither served nor failed within {timeout:g} s")
            time.sleep(0.1)

    # reading

    def state(self) -> State | None:
        return State.read(self.folder)

    def host_pid(self) -> int | None:
        try:
            return int((self.folder / HOST_PID).read_text(encoding="ascii"))
        except (FileNotFoundError, ValueError):
            return None

    def host_running(self) -> bool:
        pid = self.host_pid()
        return pid is not None and _alive(pid)

    def logs(self, lines: int | None = None) -> str:
        state = self.state()
        if state is None:
            return ""
        path = Path(state.log) if state.log else server_log(self.folder, state.generation)
        if lines is None:
            return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return log_tail(path, lines)

    # stopping

    def stop(self, timeout: float = STOP_TIMEOUT + 15) -> None:
        """Stop the host and its server (which drains), then remove the service's folder, all but the
        model data it collected (dataCollection), which outlives the service."""
        pid = self.host_pid()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid):
                if time.monotonic() > deadline:
                    os.killpg(pid, signal.SIGKILL)  # the host leads the group its servers are in
                    break
                time.sleep(0.1)
        kept = self.folder / DATA_COLLECTION_DIR
        if not kept.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for path in self.folder.iterdir():
            if path == kept:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _outcome(state: State | None, generation: int) -> str:
    """Where `generation` stands: Transitioning, Healthy or Failed, with the message when there is one."""
    if state is None:
        return "Transitioning"
    if state.generation == generation and state.state in ("Healthy", "Failed"):
        return state.state
    if state.update and state.update.get("generation") == generation:
        return state.update["state"] if state.update["state"] != "Healthy" or state.generation == generation \
            else "Transitioning"
    return "Transitioning"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (the host is our child when the test harness started it) counts as ended
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
