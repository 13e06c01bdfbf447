"""Profiling: serve registered models with an entry script here, score a sample at rising concurrency,
measure throughput, latency, CPU and memory, and recommend `containerResourceRequirements` for the
deployment config (`mlscore profile`, as Azure's `az ml model profile`).

The server runs once per profile as a child process, with as many workers and scoring slots as the
highest concurrency profiled. Each level is a closed loop: N clients on keep-alive connections, each
sending its next request when the last one is answered, so nothing queues and nothing is turned away.
CPU and memory are read from `/proc` for the server's whole process tree, so profiling runs on Linux.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import mimetypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlscore.deploy.configs import (
    SERVER_ENV,
    ConfigError,
    InferenceConfig,
    LocalConfig,
    load_inference_config,
    to_settings_env,
)
from mlscore.deploy.layout import lay_out_models
from mlscore.deploy.local_host import log_tail
from mlscore.deploy.registry import HOME_ENV, Registry, RegistryError
# the same models, --entry-script and --app-root as a deploy
from mlscore.deploy.service import DeployError, model_versions, serve_args
from mlscore.server.settings import SETTINGS

Progress = Callable[[str], None]

DEFAULT_LEVELS = (1, 2, 4, 8)
DEFAULT_DURATION_S = 5.0
DEFAULT_WARM_UP_S = 2.0
READY_TIMEOUT_S = 300.0  # init() and the warm-up may load large models, as a local deploy allows
STOP_TIMEOUT_S = 15.0
HOST = "127.0.0.1"
# A closed loop never has more requests out than slots, so no request should wait at all; the
# long limit keeps a slot freed a moment after its response from turning into a 503.
QUEUE_WAIT_MS = 600_000
MEMORY_SAMPLE_INTERVAL_S = 0.2

# The recommendation: the lowest concurrency within THROUGHPUT_SHARE of the best throughput, with headroom.
THROUGHPUT_SHARE = 0.9
CPU_HEADROOM = 1.2
MEMORY_HEADROOM = 1.5
MIN_CPU = 0.1
MIN_MEMORY_GB = 0.5  # Azure's default memoryInGB
BYTES_PER_GB = 10**9  # decimal: the larger figure, so the recommendation errs on the generous side
CLIENT_SATURATED_CORES = 0.9  # the load generator is one Python thread: near a core, it is the limit

PROFILE_JSON = "profile.json"
PROFILE_PNG = "profile.png"
SERVER_LOG = "server.log"
NO_PLOT = ("no profile.png: matplotlib is not installed here; install it (pip install matplotlib) and profile "
           "again for the plot")

_SERVING = re.compile(r"serving .* on http://([\d.]+):(\d+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_ERROR_BODY_CHARS = 500


class ProfileError(DeployError):
    """A profile that could not be made; the message says why and what to do."""


# --- what is profiled ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """The request body every profiled request sends."""

    body: bytes
    content_type: str
    source: str  # where it came from, for the report

    @classmethod
    def from_file(cls, path: Path, content_type: str | None = None) -> Sample:
        """The file's bytes; the content type given, else the one its name implies, else JSON."""
        try:
            body = path.read_bytes()
        except OSError as error:
            raise ProfileError(f"--input {path}: cannot be read: {error.strerror or error}") from None
        guessed, _ = mimetypes.guess_type(path.name)
        return cls(body, content_type or guessed or "application/json", str(path))


def swagger_example(document: dict[str, Any]) -> Any | None:
    """The example body of POST /score in a Swagger 2.0 or OpenAPI 3 document; None when it has none."""
    post = next((operations.get("post") for path, operations in document.get("paths", {}).items()
                 if path.rstrip("/").endswith("/score") and isinstance(operations, dict)), None)
    if not isinstance(post, dict):
        return None
    schemas = [parameter.get("schema") for parameter in post.get("parameters", [])
               if isinstance(parameter, dict) and parameter.get("in") == "body"]
    for media_type, content in post.get("requestBody", {}).get("content", {}).items():
        if "json" in media_type and isinstance(content, dict):
            if content.get("example") is not None:
                return content["example"]
            schemas.append(content.get("schema"))
    for schema in schemas:
        example = _resolve(document, schema).get("example")
        if example is not None:
            return example
    return None


def _resolve(document: dict[str, Any], schema: Any) -> dict[str, Any]:
    """A schema with its local `$ref` followed (`#/definitions/X`, `#/components/schemas/X`)."""
    for _ in range(8):  # a chain of references, never a cycle
        if not isinstance(schema, dict) or not str(schema.get("$ref", "")).startswith("#/"):
            break
        target: Any = document
        for part in schema["$ref"][2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        schema = target
    return schema if isinstance(schema, dict) else {}


@dataclass(frozen=True, slots=True)
class Plan:
    """How a profile loads the server: the concurrency levels, in order, each for `duration_s`,
    after `warm_up_s` at the highest."""

    levels: tuple[int, ...] = ()
    duration_s: float = DEFAULT_DURATION_S
    warm_up_s: float = DEFAULT_WARM_UP_S

    def __post_init__(self) -> None:
        levels = self.levels or default_levels()
        if any(not isinstance(level, int) or level < 1 or level > 1000 for level in levels):
            raise ProfileError(f"concurrency levels are whole numbers from 1 to 1000, got {list(levels)}")
        object.__setattr__(self, "levels", tuple(sorted(set(levels))))
        if not 0.1 <= self.duration_s <= 3600:
            raise ProfileError(f"--duration-per-level: from 0.1 to 3600 seconds, got {self.duration_s:g}")
        if not 0 <= self.warm_up_s <= 3600:
            raise ProfileError(f"--warm-up: from 0 to 3600 seconds, got {self.warm_up_s:g}")

    @property
    def highest(self) -> int:
        return self.levels[-1]


def default_levels(cpu_count: int | None = None) -> tuple[int, ...]:
    """1, 2, 4, 8 up to the cores here (at least 1 and 2): a CPU-bound run() gains nothing past
    them, and each level costs a worker process for the whole profile."""
    cores = cpu_count or os.cpu_count() or 1
    return tuple(level for level in DEFAULT_LEVELS if level <= max(2, cores))


def parse_levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ProfileError(f"--concurrency: comma-separated whole numbers such as 1,2,4, got {text!r}") from None


# --- what a profile finds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    """The figures of one concurrency level."""

    concurrency: int
    duration_s: float
    requests: int  # answered with a 2xx
    errors: int  # answered otherwise, or not at all
    error_statuses: dict[str, int]  # status (or "connection") → count
    requests_per_s: float  # 2xx responses per second
    p50_ms: float | None  # latency of the 2xx responses
    p95_ms: float | None
    p99_ms: float | None
    cpu_cores: float  # cores the server's processes used, on average
    memory_mib: float  # the server's peak memory (PSS, or RSS where PSS cannot be read)
    client_cpu_cores: float  # cores this process used to generate the load


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What one replica needs: `cpu` cores to reach `concurrency`'s throughput, `memory_in_gb` for the
    peak memory, each with headroom."""

    cpu: float
    memory_in_gb: float
    concurrency: int  # the lowest level within THROUGHPUT_SHARE of the best throughput
    requests_per_s: float  # its throughput
    peak_requests_per_s: float
    peak_memory_mib: float

    def deployment_fragment(self) -> dict[str, Any]:
        """The part of an aci or aks deployment config to paste."""
        return {"containerResourceRequirements": {"cpu": self.cpu, "memoryInGB": self.memory_in_gb}}


def recommend(levels: Sequence[Level]) -> Recommendation:
    """`cpu`: the measured cores of the lowest level within 90% of the best throughput, plus 20%, rounded up
    to 0.1 (at least 0.1). `memoryInGB`: the peak memory of any level plus 50%, rounded up to 0.1 GB
    (at least 0.5, Azure's default)."""
    answered = [level for level in levels if level.requests > 0]
    if not answered:
        raise ProfileError("no request was answered with a 2xx at any concurrency: nothing to recommend from")
    peak = max(level.requests_per_s for level in answered)
    chosen = min((level for level in answered if level.requests_per_s >= THROUGHPUT_SHARE * peak),
                 key=lambda level: level.concurrency)
    peak_memory_mib = max(level.memory_mib for level in levels)
    return Recommendation(
        cpu=max(MIN_CPU, _round_up_tenth(chosen.cpu_cores * CPU_HEADROOM)),
        memory_in_gb=max(MIN_MEMORY_GB, _round_up_tenth(peak_memory_mib * 2**20 * MEMORY_HEADROOM / BYTES_PER_GB)),
        concurrency=chosen.concurrency,
        requests_per_s=chosen.requests_per_s,
        peak_requests_per_s=peak,
        peak_memory_mib=peak_memory_mib,
    )


def _round_up_tenth(value: float) -> float:
    return math.ceil(round(value * 10, 6)) / 10  # round() first: 0.3 * 10 is 3.0000000000000004


@dataclass(frozen=True, slots=True)
class Profile:
    """A whole profile: what was served and sent, each level's figures and the recommendation."""

    name: str
    models: tuple[str, ...]
    entry_script: str
    sample: dict[str, Any]
    plan: Plan
    cpu_count: int
    memory_measure: str  # "pss" or "rss"
    started_at: str
    levels: tuple[Level, ...]
    recommendation: Recommendation
    output: Path
    files: tuple[str, ...] = ()  # written into `output`
    notes: tuple[str, ...] = ()

    @property
    def workers(self) -> int:
        """The server's workers and scoring slots: one per client at the highest level."""
        return self.plan.highest

    @property
    def errors(self) -> int:
        return sum(level.errors for level in self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "models": list(self.models),
            "entry_script": self.entry_script,
            "sample": self.sample,
            "started_at": self.started_at,
            "machine": {"cpu_count": self.cpu_count},
            "server": {"workers": self.workers, "max_concurrent_requests": self.workers},
            "duration_per_level_s": self.plan.duration_s,
            "warm_up_s": self.plan.warm_up_s,
            "memory_measure": self.memory_measure,
            "levels": [asdict(level) for level in self.levels],
            "errors": self.errors,
            "recommendation": {**self.recommendation.deployment_fragment(),
                               "basis": asdict(self.recommendation)},
            "output": str(self.output),
            "files": list(self.files),
            "notes": list(self.notes),
        }


# --- profiling -----------------------------------------------------------------------------------------


def profile(registry: Registry, models: Sequence[str], inference: InferenceConfig, sample: Sample | None = None,
            plan: Plan | None = None, output: Path | None = None, name: str | None = None,
            progress: Progress = print) -> Profile:
    """Serve `models` with `inference`, profile it and write `profile.json`,
    `profile.png` (when matplotlib is installed) and `server.log` into `output`.

    `sample` None sends the example of the server's Swagger document. The server is stopped whatever
    happens, a KeyboardInterrupt included.
    """
    _check_linux()
    plan = plan or Plan()
    versions = model_versions(registry, models)
    script_args = serve_args(inference)
    name = name or versions[0].name
    output = _output_folder(output, name)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="mlscore-profile-") as folder:
        command = _serve_command(script_args, lay_out_models(versions, Path(folder), link=True), plan.highest)
        progress(f"profile {name}: starting the server ({plan.highest} worker(s)); its log is {output / SERVER_LOG}")
        with _running_server(command, _server_env(inference, name), Path(folder), output / SERVER_LOG) as server:
            sample = sample or _sample_from_swagger(server.url)
            levels, measure = asyncio.run(_measure(server, sample, plan, progress))
    result = Profile(name, tuple(version.ref for version in versions), str(inference.entry_script_path),
                     {"source": sample.source, "content_type": sample.content_type, "bytes": len(sample.body)},
                     plan, os.cpu_count() or 1, measure, started_at, tuple(levels), recommend(levels),
                     output, notes=_notes(levels))
    if write_plot(result, output / PROFILE_PNG):
        result = replace(result, files=(PROFILE_JSON, PROFILE_PNG, SERVER_LOG))
    else:
        result = replace(result, files=(PROFILE_JSON, SERVER_LOG), notes=(*result.notes, NO_PLOT))
    write_json(result, output / PROFILE_JSON)
    return result


def _check_linux() -> None:
    if not Path("/proc/self/stat").exists():
        raise ProfileError("profiling reads the server's CPU and memory from /proc: it runs on Linux only")


def _output_folder(output: Path | None, name: str) -> Path:
    output = output or Path(f"profile-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ProfileError(f"cannot write into {output}: {error.strerror or error}") from None
    return output


def _serve_command(script_args: list[str], model_dir: Path, slots: int) -> list[str]:
    """The server on a free port, with a worker for each scoring slot and no queue wait that could end in a 503."""
    return [sys.executable, "-m", "mlscore", "serve", *script_args, "--model-dir", str(model_dir), "--host", HOST,
            "--port", "0", "--workers", str(slots), "--max-concurrent-requests", str(slots),
            "--max-queue-wait-ms", str(QUEUE_WAIT_MS), "--graceful-timeout", "5"]


def _server_env(inference: InferenceConfig, name: str) -> dict[str, str]:
    """This environment without the server's own variables (they would change what is profiled), with
    the inference config's device and the profile's name."""
    ours = {variable for setting in SETTINGS for variable in setting.env}
    env = {key: value for key, value in os.environ.items() if key not in ours}
    return {**env, **to_settings_env(LocalConfig(), inference), SERVER_ENV["service_name"]: name}


def _notes(levels: Sequence[Level]) -> tuple[str, ...]:
    notes = []
    saturated = [level.concurrency for level in levels if level.client_cpu_cores >= CLIENT_SATURATED_CORES]
    if saturated:
        notes.append(f"the load generator used a whole core at concurrency {', '.join(map(str, saturated))}: "
                     "the server may be faster than measured there")
    cores = os.cpu_count() or 1
    if levels and levels[-1].concurrency >= cores:
        notes.append(f"this machine has {cores} core(s), shared by the server and the load generator: "
                     "levels at or past that count compete for them")
    return tuple(notes)


# --- the server ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Server:
    process: subprocess.Popen
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def _running_server(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[_Server]:
    """Start the server, wait until /health/ready answers 200, and stop it on the way out (SIGTERM,
    then SIGKILL to its whole process group)."""
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=cwd, start_new_session=True)
    try:
        yield _wait_ready(process, log)
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen, log: Path) -> _Server:
    deadline = time.monotonic() + READY_TIMEOUT_S
    server: _Server | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProfileError(f"the server exited with status {process.returncode} before it was ready; "
                               f"the end of {log}:\n{log_tail(log)}")
        if server is None:
            match = _SERVING.search(log.read_text(encoding="utf-8", errors="replace"))
            server = _Server(process, match.group(1), int(match.group(2)), log) if match else None
        if server is not None and _get(f"{server.url}/health/ready")[0] == 200:
            return server
        time.sleep(0.1)
    raise ProfileError(f"the server was not ready within {READY_TIMEOUT_S:g} s; the end of {log}:\n{log_tail(log)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the server leads its own group: workers left behind go too
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _get(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def _sample_from_swagger(url: str) -> Sample:
    status, body = _get(f"{url}/swagger.json")
    example = None
    if status == 200:
        try:
            example = swagger_example(json.loads(body))
        except (ValueError, AttributeError):
            example = None
    if example is None:
        raise ProfileError("nothing to send: the entry script has no input sample (its Swagger document has no "
                           "example for POST /score); give a request body with --input FILE, or decorate run() "
                           "with @input_schema and a sample")
    return Sample(json.dumps(example).encode(), "application/json", "the Swagger document's example")


# --- load and measurement ------------------------------------------------------------------------------


async def _measure(server: _Server, sample: Sample, plan: Plan, progress: Progress) -> tuple[list[Level], str]:
    request = _request_bytes(server, sample)
    address = (server.host, server.port)
    await _check_sample(address, request, sample)
    tree = ProcessTree(server.process.pid)
    with MemorySampler(tree) as memory:
        if plan.warm_up_s > 0:
            progress(f"warming up at concurrency {plan.highest} for {plan.warm_up_s:g} s")
            await _closed_loop(address, request, plan.highest, plan.warm_up_s)
        levels = []
        for concurrency in plan.levels:
            progress(f"concurrency {concurrency} for {plan.duration_s:g} s")
            memory.take_peak()
            cpu_before, client_before, started = tree.cpu_seconds(), time.process_time(), time.perf_counter()
            outcomes = await _closed_loop(address, request, concurrency, plan.duration_s)
            elapsed = time.perf_counter() - started
            cpu_used, client_used = tree.cpu_seconds() - cpu_before, time.process_time() - client_before
            memory.sample()
            levels.append(_level(concurrency, elapsed, outcomes, cpu_used / elapsed, memory.take_peak() / 2**20,
                                 client_used / elapsed))
            if server.process.poll() is not None:
                raise ProfileError(f"the server exited with status {server.process.returncode} at concurrency "
                                   f"{concurrency}; the end of {server.log}:\n{log_tail(server.log)}")
    return levels, memory.measure


def _request_bytes(server: _Server, sample: Sample) -> bytes:
    head = (f"POST /score HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nContent-Type: {sample.content_type}\r\n"
            f"Content-Length: {len(sample.body)}\r\n\r\n")
    return head.encode("latin-1") + sample.body


async def _check_sample(address: tuple[str, int], request: bytes, sample: Sample) -> None:
    """One request first: a sample the script rejects would make every figure meaningless."""
    connection = _Connection(*address)
    try:
        status, body = await connection.exchange(request)
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        raise ProfileError(f"the server did not answer the first request: {error}") from None
    finally:
        connection.close()
    if not 200 <= status < 300:
        answer = body.decode("utf-8", errors="replace")[:_ERROR_BODY_CHARS]
        raise ProfileError(f"the service rejected the sample ({sample.source}, {sample.content_type}) with HTTP "
                           f"{status}: {answer}")


async def _closed_loop(address: tuple[str, int], request: bytes, concurrency: int,
                       duration_s: float) -> list[tuple[float, int]]:
    """`concurrency` clients, each sending its next request when the last is answered, until
    `duration_s` has passed: (latency in seconds, status; 0 for no answer) of every request."""
    deadline = time.perf_counter() + duration_s

    async def client() -> list[tuple[float, int]]:
        connection = _Connection(*address)
        outcomes = []
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status, _ = await connection.exchange(request)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status = 0
                outcomes.append((time.perf_counter() - started, status))
                if status == 0:
                    await asyncio.sleep(0.05)  # a server that went away must not turn this into a busy loop
        finally:
            connection.close()
        return outcomes

    results = await asyncio.gather(*(client() for _ in range(concurrency)))
    return [outcome for outcomes in results for outcome in outcomes]


def _level(concurrency: int, elapsed: float, outcomes: list[tuple[float, int]], cpu_cores: float,
           memory_mib: float, client_cpu_cores: float) -> Level:
    latencies = sorted(latency * 1000 for latency, status in outcomes if 200 <= status < 300)
    failed = Counter("connection" if status == 0 else str(status) for _, status in outcomes
                     if not 200 <= status < 300)
    return Level(concurrency, round(elapsed, 3), len(latencies), sum(failed.values()), dict(sorted(failed.items())),
                 round(len(latencies) / elapsed, 2), *(_percentile(latencies, share) for share in (50, 95, 99)),
                 round(cpu_cores, 3), round(memory_mib, 1), round(client_cpu_cores, 3))


def _percentile(ordered: list[float], percent: float) -> float | None:
    """Linear interpolation between the closest ranks, as numpy's default."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * percent / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 3)


class _Connection:
    """A keep-alive HTTP/1.1 connection for one request at a time, opened on first use and again after
    the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send a whole request; the response's status and body."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(*self._address)
        assert self._reader is not None
        try:
            self._writer.write(request)
            await self._writer.drain()
            status, body, keep_alive = await _read_response(self._reader)
        except BaseException:
            self.close()
            raise
        if not keep_alive:
            self.close()
        return status, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("the server closed the connection")
    version, status, *_ = status_line.split(None, 2)
    length, chunked, keep_alive = None, False, version == b"HTTP/1.1"
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            keep_alive = value != b"close" if version == b"HTTP/1.1" else value == b"keep-alive"
    if chunked:
        body = await _read_chunks(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, keep_alive = await reader.read(), False
    return int(status), body, keep_alive


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return b"".join(parts)


class ProcessTree:
    """A process and all its descendants, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat_fields(int(entry))
                if fields is not None:
                    children.setdefault(int(fields[1]), []).append(int(entry))
        found, pending = [], [self.pid]
        while pending:
            pid = pending.pop()
            found.append(pid)
            pending.extend(children.get(pid, ()))
        return found

    def cpu_seconds(self) -> float:
        """User and system time of the tree, including children it has reaped (a worker that ended)."""
        ticks = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields is not None:
                ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / _CLOCK_TICKS

    def memory_bytes(self) -> tuple[int, str]:
        """The tree's memory and how it was measured: PSS, which shares pages among the processes that
        map them (workers forked from one parent share much), else RSS, which counts shared pages in each."""
        total, measure = 0, "pss"
        for pid in self.pids():
            size = _proc_kib(pid, "smaps_rollup", b"Pss:")
            if size is None:
                size, measure = _proc_kib(pid, "status", b"VmRSS:"), "rss"
            total += size or 0
        return total, measure


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, …); None when it has ended."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _proc_kib(pid: int, file: str, key: bytes) -> int | None:
    """The `KEY: N kB` line of /proc/PID/FILE, in bytes; None when the process has ended or the line is missing."""
    try:
        with open(f"/proc/{pid}/{file}", "rb") as lines:
            for line in lines:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class MemorySampler:
    """Samples a process tree's memory in a thread (so a sample never delays a request in the event loop);
    `take_peak()` returns the highest since the last call."""

    def __init__(self, tree: ProcessTree, interval_s: float = MEMORY_SAMPLE_INTERVAL_S) -> None:
        self._tree = tree
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._peak = 0
        self.measure = "pss"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join()

    def sample(self) -> None:
        size, measure = self._tree.memory_bytes()
        with self._lock:
            self._peak = max(self._peak, size)
            if measure == "rss":
                self.measure = "rss"

    def take_peak(self) -> int:
        with self._lock:
            peak, self._peak = self._peak, 0
        return peak

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self.sample()


# --- reporting -----------------------------------------------------------------------------------------

_COLUMNS = ("concurrency", "requests/s", "p50 ms", "p95 ms", "p99 ms", "errors", "CPU cores", "memory MiB")


def format_table(levels: Sequence[Level]) -> str:
    rows = [_COLUMNS]
    for level in levels:
        rows.append((str(level.concurrency), f"{level.requests_per_s:.1f}", _ms(level.p50_ms), _ms(level.p95_ms),
                     _ms(level.p99_ms), str(level.errors), f"{level.cpu_cores:.2f}", f"{level.memory_mib:.1f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_recommendation(result: Profile) -> str:
    chosen = result.recommendation
    fragment = json.dumps(chosen.deployment_fragment(), indent=2)
    return (f"recommended for the deployment config ({chosen.requests_per_s:.1f} requests/s at concurrency "
            f"{chosen.concurrency}, {THROUGHPUT_SHARE:.0%} or more of the best, {chosen.peak_requests_per_s:.1f}; "
            f"peak memory {chosen.peak_memory_mib:.1f} MiB {result.memory_measure.upper()}):\n{fragment}\n"
            f"(an aks config may also set \"maxConcurrentRequestsPerContainer\": {chosen.concurrency})")


def write_json(result: Profile, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


def write_plot(result: Profile, path: Path) -> bool:
    """Requests/s and CPU cores (second axis) above, latency percentiles below, against concurrency.
    False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to load
    import matplotlib.pyplot as plt

    levels = result.levels
    concurrency = [level.concurrency for level in levels]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    top.plot(concurrency, [level.requests_per_s for level in levels], "o-", color="tab:blue", label="requests/s")
    top.set_ylabel("requests/s", color="tab:blue")
    top.set_ylim(bottom=0)
    cpu = top.twinx()
    cpu.plot(concurrency, [level.cpu_cores for level in levels], "s--", color="tab:red", label="CPU cores")
    cpu.set_ylabel("server CPU cores", color="tab:red")
    cpu.set_ylim(bottom=0)
    for percent, style in ((50, "o-"), (95, "^-"), (99, "s-")):
        values = [getattr(level, f"p{percent}_ms") for level in levels]
        bottom.plot(concurrency, [math.nan if value is None else value for value in values], style,
                    label=f"p{percent}")
    bottom.set_ylabel("latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left")
    bottom.set_xlabel("concurrent clients")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(concurrency, [str(value) for value in concurrency])
    for axis in (top, bottom):
        axis.axvline(result.recommendation.concurrency, color="grey", linestyle=":", linewidth=1)
        axis.grid(True, alpha=0.3)
    chosen = result.recommendation
    top.set_title(f"{result.name}: recommended cpu {chosen.cpu}, memoryInGB {chosen.memory_in_gb}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# --- the command line ----------------------------------------------------------------------------------


def add_profile_command(subparsers: argparse._SubParsersAction) -> None:
    """Add `profile` to a parser's subcommands."""
    command = subparsers.add_parser(
        "profile", help="measure a model's throughput, latency, CPU and memory; recommend cpu and memoryInGB",
        description="Serve registered models with an entry script here, score a sample at rising concurrency "
                    "and report requests/s, latency, CPU and memory per level, with the cpu and memoryInGB to "
                    "give the deployment config. Writes profile.json, profile.png and server.log. Linux only.")
    command.add_argument("--ic", "--inference-config", dest="inference_config", required=True, metavar="FILE",
                         help="the inference config JSON (entryScript, sourceDirectory, …)")
    command.add_argument("-m", "--model", dest="models", action="append", required=True, metavar="NAME:VERSION",
                         help="a registered model version (repeatable; NAME alone is its latest version)")
    command.add_argument("-n", "--name", help="the profile's name, in the output folder's name (default: the "
                         "first model's name)")
    command.add_argument("--input", type=Path, metavar="FILE", help="the request body to send (default: the "
                         "example in the entry script's Swagger document, from its input sample)")
    command.add_argument("--content-type", dest="content_type", metavar="TYPE", help="the body's content type "
                         "(default: what --input's file name implies, else application/json)")
    command.add_argument("--concurrency", metavar="N,N,…", help="the concurrency levels (default: 1,2,4,8 up "
                         "to this machine's core count, at least 1,2); the server gets as many workers as the highest")
    command.add_argument("--duration-per-level", dest="duration_per_level", type=float, default=DEFAULT_DURATION_S,
                         metavar="SECONDS", help=f"how long each level runs (default {DEFAULT_DURATION_S:g})")
    command.add_argument("--warm-up", dest="warm_up", type=float, default=DEFAULT_WARM_UP_S, metavar="SECONDS",
                         help=f"load at the highest level before measuring (default {DEFAULT_WARM_UP_S:g})")
    command.add_argument("--output", type=Path, metavar="DIR",
                         help="where to write the results (default: ./profile-NAME-YYYYmmdd-HHMMSS)")
    command.add_argument("--registry", metavar="DIR", help=f"the registry's root folder (env {HOME_ENV}; default "
                                                           "~/.mlscore)")


def run_profile_command(args: argparse.Namespace) -> int:
    """Run a parsed `profile` command: 0 when every request was answered with a 2xx, 1 (with the reason on
    stderr) otherwise; 130 when interrupted (Ctrl-C or SIGTERM), after the server has been stopped."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        registry = Registry(args.registry)
        inference = load_inference_config(args.inference_config)
        plan = Plan(parse_levels(args.concurrency) if args.concurrency else (), args.duration_per_level,
                    args.warm_up)
        sample = Sample.from_file(args.input, args.content_type) if args.input else None
        result = profile(registry, args.models, inference, sample, plan, args.output, args.name, progress=_say)
    except (DeployError, ConfigError, RegistryError) as error:
        print(f"mlscore: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlscore: profile interrupted; the server was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _report(result)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # a SIGTERM ends the profile as a Ctrl-C does: through the server's clean-up


def _report(result: Profile) -> int:
    print(format_table(result.levels))
    print(format_recommendation(result))
    for note in result.notes:
        print(f"note: {note}")
    print(f"written to {result.output}: {', '.join(result.files)}")
    if result.errors:
        statuses = Counter()
        for level in result.levels:
            statuses.update(level.error_statuses)
        shown = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
        print(f"mlscore: error: {result.errors} request(s) failed ({shown}); the figures count only the answered "
              f"ones; see {result.output / SERVER_LOG}", file=sys.stderr)
        return 1
    return 0


def _say(line: str) -> None:
    print(line, flush=True)
