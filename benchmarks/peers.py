"""The peer benchmark: mlscore beside MLServer, BentoML, LitServe and KServe, on the same ONNX models.

Every server scores the same two generated models (``--models``): a small MLP (10-64-1) and a wide
one (1024-4096-4096-1000), float32, fixed-seed weights, written with onnx to
``benchmarks/.work/peers/models/``. Servers and variants (``--servers`` picks frameworks):

- mlscore from the repository's ``.venv``: ``mlscore serve --model M.onnx`` (defaults),
  ``--max-batch-size 8`` (batches of what is queued, no wait), and ``--max-batch-size 8
  --max-batch-delay-ms 5`` (the wait MLServer's and LitServe's batching get here); a variant whose
  flags ``mlscore serve`` lacks is skipped, with the reason;
- MLServer, a custom runtime (``peers/mlserver_runtime.py``, an ``MLModel``), without and with
  adaptive batching (model-settings.json ``max_batch_size`` 8, ``max_batch_time`` 5 ms);
- BentoML, a ``@bentoml.service`` whose ``@bentoml.api`` is ``batchable=True`` (up to 8) or not;
- LitServe, a ``LitAPI`` with ``max_batch_size`` 8 and ``batch_timeout`` 5 ms, or without;
- KServe's Python model server, a ``kserve.Model`` started by ``ModelServer().start``.

Each peer runs from its own virtualenv, ``benchmarks/.work/peers/<name>/venv``, made on first use
(pinned versions, and the onnxruntime of ``.venv``; a stamp file says what is installed), with
its server code copied from ``benchmarks/peers/``: the shape each project's documentation shows,
no log line per request, one inference worker, and the same onnxruntime session options as
mlscore's (``peers/onnx_session.py``) with intra-op threads = cores ÷ inference workers.

Before it is measured, each server's answers are checked against onnxruntime run here: one row,
8 different rows in one request, and a burst of 16 concurrent single-row requests whose answers
must be their own rows' (a batcher that mixes rows up fails). A server that fails to start or the
check is reported and left out. Then, for each model and concurrency (``--concurrency``, default
1,8,64), ``--rounds`` rounds, each server once a round (the order rotated round by round): a
``--warmup`` of wrk, then ``--duration`` seconds of wrk posting one row in that server's own JSON
shape, with the server's CPU (user + system of its process tree, from /proc) over the cell. The
other servers are paused meanwhile (SIGSTOP to their process groups, SIGCONT after; ``--no-pause``
leaves them running): LitServe's batching loop alone polls at about a tenth of a core while idle,
taken from whichever server is measured.

Reported per (model, server, c): successful (2xx) req/s as the median over the rounds with
[min–max] and spread, p50/p99, server CPU ms per request, errors, and req/s over the best peer
variant's paired round by round; then the targets of issue 17 as PASS/FAIL lines.
``--write-results`` appends a dated section to ``benchmarks/RESULTS.md`` and writes the chart
``benchmarks/peers.png`` (else the chart goes to ``benchmarks/.work/peers/``); a run of part of
the matrix names its chart after the part (``peers-small-mlscore-c1.png``), leaving the whole
matrix's alone.

    .venv/bin/python benchmarks/peers.py --write-results           # the full matrix, about 21 minutes
    .venv/bin/python benchmarks/peers.py --rounds 1 --duration 3   # a quick look, about 8 minutes
    .venv/bin/python benchmarks/peers.py --check-only              # install, start, check answers
    .venv/bin/python benchmarks/peers.py --models small --servers mlscore,litserve --concurrency 8
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import http_bench  # run as a script, benchmarks/ is on sys.path
from compare import Spread
from http_bench import BENCH, HOST, REPO, VENV_PY, WORK, Server, ServerSpec

PEERS_WORK = WORK / "peers"
MODELS_DIR = PEERS_WORK / "models"
LUA_DIR = PEERS_WORK / "lua"
LOG_DIR = PEERS_WORK / "logs"
TEMPLATES = BENCH / "peers"
CHART_PNG = "peers.png"
SEED = 17
MODEL_NAME = "mlp"  # the name in MLServer's and KServe's routes
INFERENCE_WORKERS = 1  # in every server: mlscore's one scoring process, each peer's one worker
MAX_BATCH_SIZE = 8
BATCH_DELAY_MS = 5.0
READY_DEADLINE_S = 180.0
BURST = 16  # concurrent single-row requests of the answer check
ROW_DECIMALS = 3  # rows sent as short decimals: the server parses the same float32 we run here
RTOL = 1e-4  # answers may differ in the last bits with the batch size and the threads
FRAMEWORKS = ("mlscore", "mlserver", "bentoml", "litserve", "kserve")
# What each peer's venv holds besides the onnxruntime of .venv; the framework first. MLServer 1.7.1's
# inference workers call asyncio.get_event_loop() with no loop set, which uvloop 0.22 and later
# answer with RuntimeError (every worker dies at start): uvloop stays at 0.21.
PEER_PACKAGES = {"mlserver": ["mlserver==1.7.1", "uvloop==0.21.0"], "bentoml": ["bentoml==1.4.40"],
                 "litserve": ["litserve==0.2.19"], "kserve": ["kserve==0.21.0"]}


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """An MLP: layer widths from the input to the output, ReLU between the layers."""

    name: str
    widths: tuple[int, ...]

    @property
    def features(self) -> int:
        return self.widths[0]

    @property
    def path(self) -> Path:
        return MODELS_DIR / f"{self.name}-{'-'.join(map(str, self.widths))}-seed{SEED}.onnx"

    def describe(self) -> str:
        return f"{self.name} MLP ({'-'.join(map(str, self.widths))})"


MODELS = {"small": ModelSpec("small", (10, 64, 1)), "wide": ModelSpec("wide", (1024, 4096, 4096, 1000))}


def build_model(spec: ModelSpec, seed: int = SEED) -> bytes:
    """The serialized ONNX model: Gemm layers with He-scaled normal weights from `seed`, input "x"
    and output "y" with a dynamic first (batch) dimension. The same bytes for the same arguments."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous = "x"
    layers = list(zip(spec.widths, spec.widths[1:]))
    for index, (width_in, width_out) in enumerate(layers):
        weight = (rng.standard_normal((width_in, width_out)) * math.sqrt(2.0 / width_in)).astype(np.float32)
        bias = (rng.standard_normal(width_out) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(weight, f"w{index}"), numpy_helper.from_array(bias, f"b{index}")]
        last = index == len(layers) - 1
        output = "y" if last else f"h{index}"
        gemm = output if last else f"g{index}"
        nodes.append(helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [gemm]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm], [output]))
        previous = output
    graph = helper.make_graph(
        nodes, f"mlp_{spec.name}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", spec.widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", spec.widths[-1]])],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10,
                              producer_name="mlscore benchmarks/peers.py")
    return model.SerializeToString()


def ensure_model(spec: ModelSpec) -> Path:
    if not spec.path.is_file():
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {spec.path.relative_to(REPO)}", flush=True)
        partial = spec.path.with_suffix(".partial")
        partial.write_bytes(build_model(spec))
        partial.replace(spec.path)
    return spec.path


def sample_rows(spec: ModelSpec, count: int, seed: int = SEED + 1) -> np.ndarray:
    """`count` different input rows, rounded to ROW_DECIMALS (float64: what the JSON bodies say)."""
    return np.round(np.random.default_rng(seed).standard_normal((count, spec.features)), ROW_DECIMALS)


def reference_answers(path: Path, rows: np.ndarray) -> np.ndarray:
    """The model's outputs for `rows` from onnxruntime here, one row at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": rows[i:i + 1].astype(np.float32)})[0]
                           for i in range(len(rows))])


def mismatches(expected: np.ndarray, answers: list[np.ndarray | None], what: str) -> list[str]:
    """What is wrong with `answers`, one per row of `expected` (None: no answer), naming the row
    an answer belongs to when it is another row's: how a batcher that mixes rows up shows."""
    scale = float(np.max(np.abs(expected))) or 1.0

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=RTOL, atol=RTOL * scale))

    problems = []
    for index, (want, got) in enumerate(zip(expected, answers, strict=True)):
        if got is None:
            problems.append(f"{what}: row {index} got no answer")
            continue
        got = np.asarray(got, dtype=np.float64).reshape(-1)
        if close(got, want):
            continue
        owner = next((j for j, other in enumerate(expected) if j != index and close(got, other)), None)
        if owner is not None:
            problems.append(f"{what}: row {index} got row {owner}'s answer")
        else:
            problems.append(f"{what}: row {index} got {np.array2string(got[:3], precision=5)}, "
                            f"expected {np.array2string(want[:3], precision=5)}")
    return problems


# --------------------------------------------------------------------------- request formats


@dataclass(frozen=True)
class Format:
    """One framework's JSON request and answer for rows of the model's single input."""

    path: str
    body: Callable[[np.ndarray], dict]
    answer: Callable[[dict], np.ndarray]

    def encode(self, rows: np.ndarray) -> bytes:
        return json.dumps(self.body(rows), separators=(",", ":")).encode()

    def decode(self, body: bytes) -> np.ndarray:
        return np.asarray(self.answer(json.loads(body)), dtype=np.float64)


def _v2_answer(doc: dict) -> np.ndarray:
    output = doc["outputs"][0]
    return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


FORMATS = {
    "mlscore": Format("/score", lambda rows: {"x": rows.tolist()}, lambda doc: doc["y"]),
    "mlserver": Format(f"/v2/models/{MODEL_NAME}/infer",
                       lambda rows: {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32",
                                                 "data": rows.reshape(-1).tolist()}]},
                       _v2_answer),
    "bentoml": Format("/predict", lambda rows: {"x": rows.tolist()}, lambda doc: doc),
    "litserve": Format("/predict", lambda rows: {"input": rows.tolist()}, lambda doc: doc["output"]),
    "kserve": Format(f"/v1/models/{MODEL_NAME}:predict", lambda rows: {"instances": rows.tolist()},
                     lambda doc: doc["predictions"]),
}
SERVER_CODE = {"mlserver": "mlserver_runtime.py", "bentoml": "bentoml_service.py", "litserve": "litserve_server.py",
               "kserve": "kserve_server.py"}  # in benchmarks/peers/
READY_PATHS = {"mlscore": "/", "mlserver": "/v2/health/ready", "bentoml": "/readyz", "litserve": "/health",
               "kserve": f"/v1/models/{MODEL_NAME}"}


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One server configuration: a framework, batching off (max_batch_size 0) or on."""

    label: str
    framework: str
    max_batch_size: int = 0
    batch_delay_ms: float = 0.0

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def is_mlscore(self) -> bool:
        return self.framework == "mlscore"


VARIANTS = (
    Variant("mlscore", "mlscore"),
    Variant("mlscore batch", "mlscore", MAX_BATCH_SIZE),
    Variant("mlscore batch 5ms", "mlscore", MAX_BATCH_SIZE, BATCH_DELAY_MS),
    Variant("MLServer", "mlserver"),
    Variant("MLServer batch", "mlserver", MAX_BATCH_SIZE, BATCH_DELAY_MS),
    Variant("BentoML", "bentoml"),
    Variant("BentoML batchable", "bentoml", MAX_BATCH_SIZE),
    Variant("LitServe", "litserve"),
    Variant("LitServe batch", "litserve", MAX_BATCH_SIZE, BATCH_DELAY_MS),
    Variant("KServe", "kserve"),
)


def ort_threads() -> int:
    """The thread rule: onnxruntime's intra-op threads = the cores ÷ the inference workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // INFERENCE_WORKERS)


class Unavailable(Exception):
    """A variant that cannot run here, and why."""


def venv_dir(framework: str) -> Path:
    return PEERS_WORK / framework / "venv"


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def ensure_venv(framework: str) -> Path:
    """The peer's virtualenv (made and installed once; the stamp names what it holds): its bin/."""
    venv = venv_dir(framework)
    requirements = [*PEER_PACKAGES[framework], f"onnxruntime=={onnxruntime_version()}"]
    stamp = venv.parent / "installed.txt"
    if stamp.is_file() and stamp.read_text().split() == requirements and (venv / "bin" / "python").exists():
        return venv / "bin"
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        print(f"creating {venv.relative_to(REPO)}", flush=True)
        base_python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    print(f"{framework}: pip install {' '.join(requirements)}", flush=True)
    log = venv.parent / "pip.log"
    with log.open("w") as out:
        result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *requirements],
                                stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = " | ".join(line for line in log.read_text(errors="replace").splitlines()[-3:])
        raise Unavailable(f"pip install {' '.join(requirements)} failed ({log.relative_to(REPO)}): {tail}")
    stamp.write_text("\n".join(requirements) + "\n")
    return venv / "bin"


def mlscore_serve_help() -> str:
    return subprocess.run([str(VENV_PY), "-m", "mlscore", "serve", "--help"], capture_output=True, text=True).stdout


def mlscore_argv(variant: Variant, model: ModelSpec, port: int, threads: int) -> list[str]:
    """`mlscore serve` for `variant`; Unavailable when this tree's mlscore lacks a flag it needs."""
    batching = []
    if variant.batching:
        batching = ["--max-batch-size", str(variant.max_batch_size)]
    if variant.batch_delay_ms:
        batching += ["--max-batch-delay-ms", f"{variant.batch_delay_ms:g}"]
    known = mlscore_serve_help()
    missing = [flag for flag in batching[::2] if flag not in known]
    if missing:
        raise Unavailable(f"mlscore serve has no {', '.join(missing)} in this tree (batching has not landed)")
    return [str(VENV_PY), "-m", "mlscore", "serve", "--model", str(model.path), "--model-name", MODEL_NAME,
            "--host", HOST, "--port", str(port), "--cpu-threads", str(threads), *batching]


def run_folder(variant: Variant, model: ModelSpec) -> Path:
    """A fresh folder holding the server's code (copied from benchmarks/peers/) and settings."""
    folder = PEERS_WORK / variant.framework / f"{variant.label.replace(' ', '-')}-{model.name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("onnx_session.py", SERVER_CODE[variant.framework]):
        shutil.copy(TEMPLATES / name, folder / name)
    return folder


def server_spec(variant: Variant, model: ModelSpec, port: int) -> ServerSpec:
    """How to start `variant` serving `model` on `port`; Unavailable when it cannot run here."""
    threads = ort_threads()
    label = f"{variant.label} {model.name}"
    if variant.is_mlscore:
        return ServerSpec(label, "mlscore", mlscore_argv(variant, model, port, threads), port, log_dir=LOG_DIR)
    bin_dir = ensure_venv(variant.framework)
    folder = run_folder(variant, model)
    env = {"PEER_MODEL": str(model.path), "PEER_MODEL_NAME": MODEL_NAME, "PEER_ORT_THREADS": str(threads),
           "PEER_PORT": str(port), "PEER_MAX_BATCH_SIZE": str(variant.max_batch_size or 1),
           "PEER_BATCH_TIMEOUT_MS": f"{variant.batch_delay_ms:g}", "PYTHONPATH": str(folder)}
    if variant.framework == "mlserver":
        settings = {"debug": False, "host": HOST, "http_port": port, "grpc_port": http_bench.free_port(),
                    "metrics_port": http_bench.free_port()}
        model_settings = {"name": MODEL_NAME, "implementation": "mlserver_runtime.OnnxRuntime",
                          "parameters": {"uri": str(model.path)}}
        if variant.batching:
            model_settings |= {"max_batch_size": variant.max_batch_size,
                               "max_batch_time": variant.batch_delay_ms / 1000.0}
        (folder / "settings.json").write_text(json.dumps(settings, indent=2))
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        argv = [str(bin_dir / "mlserver"), "start", str(folder)]
    elif variant.framework == "bentoml":
        env |= {"BENTOML_HOME": str(folder / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"}
        argv = [str(bin_dir / "bentoml"), "serve", "bentoml_service:Mlp", "--host", HOST, "--port", str(port)]
    elif variant.framework == "litserve":
        argv = [str(bin_dir / "python"), "litserve_server.py"]
    else:
        argv = [str(bin_dir / "python"), "kserve_server.py", "--http_port", str(port), "--enable_grpc", "false",
                "--enable_latency_logging", "false", "--configure_logging", "false"]
    return ServerSpec(label, variant.framework, argv, port, env=env, cwd=folder, log_dir=LOG_DIR)


# --------------------------------------------------------------------------- servers


@dataclass
class Running:
    """A started server that answered its checks."""

    variant: Variant
    server: Server
    lua: Path
    ready_s: float


@dataclass
class Outcome:
    """What became of one variant for one model: measured, or left out and why."""

    variant: Variant
    model: str
    status: str  # "ok", "skipped", "failed check", "failed to start"
    detail: str = ""
    ready_s: float = math.nan
    idle_share: float = math.nan  # of one core, used by the server while nobody asks it anything


def post(port: int, path: str, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    return http_bench.http_status(f"http://{HOST}:{port}{path}", data=body, timeout=timeout)


def wait_ready(server: Server, path: str) -> float:
    """Poll the readiness route until 200; the seconds it took. Unavailable if it dies or never is."""
    started = time.monotonic()
    url = f"http://{HOST}:{server.spec.port}{path}"
    while time.monotonic() - started < READY_DEADLINE_S:
        if server.proc.poll() is not None:
            raise Unavailable(f"exited with {server.proc.returncode} before it was ready; "
                              f"{server.log_path.relative_to(REPO)}:\n{http_bench.log_tail(server, 8)}")
        try:
            if http_bench.http_status(url, timeout=2.0)[0] == 200:
                return time.monotonic() - started
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise Unavailable(f"not ready after {READY_DEADLINE_S:.0f} s; {server.log_path.relative_to(REPO)}:\n"
                      f"{http_bench.log_tail(server, 8)}")


def check_answers(port: int, fmt: Format, rows: np.ndarray, expected: np.ndarray) -> list[str]:
    """One row, 8 different rows in one request, and BURST concurrent single-row requests, each
    answer against onnxruntime's for its own rows."""

    failures: list[str] = []  # why a request got no answer, the first few

    def ask(batch: np.ndarray) -> np.ndarray | None:
        try:
            status, body = post(port, fmt.path, fmt.encode(batch))
            if status == 200:
                return fmt.decode(body).reshape(len(batch), -1)
            failures.append(f"{status} {body[:200]!r}")
        except (OSError, urllib.error.URLError) as error:
            failures.append(f"{type(error).__name__}: {error}")
        except (ValueError, KeyError, TypeError, IndexError) as error:
            failures.append(f"unexpected answer ({type(error).__name__}: {error}): {body[:200]!r}")
        return None

    problems = mismatches(expected[:1], [None if (a := ask(rows[:1])) is None else a[0]], "one row")
    eight = ask(rows[:8])
    problems += mismatches(expected[:8], list(eight) if eight is not None else [None] * 8, "8 rows in one request")
    burst = rows[8:8 + BURST]
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(ask, [burst[i:i + 1] for i in range(len(burst))]))
    problems += mismatches(expected[8:8 + BURST], [None if a is None else a[0] for a in answers],
                           f"{BURST} concurrent single rows")
    return problems + [f"no answer: {why}" for why in dict.fromkeys(failures)][:2]


def write_lua(variant: Variant, model: ModelSpec, row: np.ndarray) -> Path:
    """The wrk script posting one row in the framework's own JSON shape to its route."""
    fmt = FORMATS[variant.framework]
    LUA_DIR.mkdir(parents=True, exist_ok=True)
    path = LUA_DIR / f"{variant.framework}-{model.name}.lua"
    path.write_text(f"-- written by benchmarks/peers.py: {variant.framework}, {model.describe()}, one row\n"
                    f'wrk.method = "POST"\nwrk.path = "{fmt.path}"\n'
                    f'wrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = '{fmt.encode(row[None, :]).decode()}'\n")
    return path


def start_variants(model: ModelSpec, variants: list[Variant], started: list[Running],
                   outcomes: list[Outcome]) -> None:
    """Start each variant in turn (their loads would compete), check its answers, keep the good ones."""
    rows = sample_rows(model, 8 + BURST)
    expected = reference_answers(model.path, rows)
    for variant in variants:
        try:
            spec = server_spec(variant, model, http_bench.free_port())
        except Unavailable as why:
            print(f"skipping {variant.label}: {why}", flush=True)
            outcomes.append(Outcome(variant, model.name, "skipped", str(why)))
            continue
        print(f"starting {spec.name} on {HOST}:{spec.port}: {shlex.join(spec.argv)}", flush=True)
        server = http_bench.start_server(spec)
        try:
            ready_s = wait_ready(server, READY_PATHS[variant.framework])
        except Unavailable as why:
            print(f"  {variant.label} failed to start: {why}", flush=True)
            http_bench.stop_servers([server])
            outcomes.append(Outcome(variant, model.name, "failed to start", str(why)))
            continue
        http_bench.wait_idle(server)
        idle = idle_share(server)
        problems = check_answers(spec.port, FORMATS[variant.framework], rows, expected)
        if problems:
            print(f"  {variant.label} FAILS the answer check: " + "; ".join(problems[:4]), flush=True)
            http_bench.stop_servers([server])
            outcomes.append(Outcome(variant, model.name, "failed check", "; ".join(problems[:4]), ready_s, idle))
            continue
        print(f"  ready in {ready_s:.1f} s; answers match onnxruntime (1 row, 8 rows, {BURST} concurrent)",
              flush=True)
        started.append(Running(variant, server, write_lua(variant, model, rows[0]), ready_s))
        outcomes.append(Outcome(variant, model.name, "ok", ready_s=ready_s, idle_share=idle))


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Cell:
    """One wrk run against one server."""

    rps: float  # all answers
    ok_rps: float  # 2xx answers only
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    cpu_ms_per_request: float  # the server's CPU (all its processes) over the cell ÷ its answers


@dataclass
class Row:
    """The rounds of one (model, server variant, concurrency)."""

    model: str
    variant: Variant
    concurrency: int
    cells: list[Cell] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.variant.label

    def spread(self, value: Callable[[Cell], float]) -> Spread:
        return Spread.of(value(c) for c in self.cells)

    @property
    def ok_rps(self) -> float:
        return self.spread(lambda c: c.ok_rps).median

    @property
    def p99_ms(self) -> float:
        return self.spread(lambda c: c.p99_ms).median

    @property
    def errors(self) -> tuple[int, int]:
        return sum(c.non2xx for c in self.cells), sum(c.socket_errors for c in self.cells)


def idle_share(server: Server, window_s: float = 2.0) -> float:
    """The share of one core the server's processes use while nobody asks anything: CPU they take
    from whichever server is being measured."""
    before = tree_cpu_seconds(server.proc.pid)
    time.sleep(window_s)
    return (tree_cpu_seconds(server.proc.pid) - before) / window_s


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and all its descendants alive now."""
    table = http_bench.proc_table()
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, (parent, _) in table.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(table[pid][1] for pid in tree if pid in table) / os.sysconf("SC_CLK_TCK")


def measure_cell(wrk: str, running: Running, concurrency: int, args: argparse.Namespace) -> tuple[Cell, str]:
    port = running.server.spec.port
    if args.warmup > 0:
        http_bench.run_wrk(wrk, port, concurrency, args.warmup, 1, running.lua)
    cpu_before = tree_cpu_seconds(running.server.proc.pid)
    output = http_bench.run_wrk(wrk, port, concurrency, args.duration, 1, running.lua)
    cpu = tree_cpu_seconds(running.server.proc.pid) - cpu_before
    parsed = http_bench.parse_wrk(output)
    ok_share = 1.0 - parsed.non2xx / parsed.requests if parsed.requests else 0.0
    cell = Cell(parsed.rps, parsed.rps * ok_share, parsed.p50_ms, parsed.p99_ms, parsed.requests, parsed.non2xx,
                parsed.socket_errors, 1000.0 * cpu / parsed.requests if parsed.requests else math.nan)
    return cell, output


@contextlib.contextmanager
def others_paused(measured: Running, servers: list[Running], pause: bool) -> Iterator[None]:
    """While a cell runs, every other server is stopped (SIGSTOP to its process group, SIGCONT
    after): what it does while idle (LitServe's batching loop polls, about a tenth of a core) then
    takes nothing from the server measured, whose own CPU may be the bound."""
    paused = [r.server.proc.pid for r in servers if pause and r is not measured and r.server.proc.poll() is None]
    for group in paused:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        for group in paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)


def measure(wrk: str, model: ModelSpec, servers: list[Running], args: argparse.Namespace) -> list[Row]:
    """For each concurrency, `--rounds` rounds of one cell per server, the order rotated each round."""
    rows = {(r.variant.label, c): Row(model.name, r.variant, c) for c in args.concurrency for r in servers}
    total, done = len(rows) * args.rounds, 0
    with (LOG_DIR / f"wrk-{model.name}.log").open("w") as raw_log:
        for concurrency in args.concurrency:
            for round_index in range(args.rounds):
                shift = round_index % len(servers)
                for running in servers[shift:] + servers[:shift]:
                    done += 1
                    if running.server.proc.poll() is not None:
                        print(f"[{done}/{total}] {running.variant.label} has exited "
                              f"({running.server.proc.returncode}); no cell", flush=True)
                        continue
                    with others_paused(running, servers, args.pause_others):
                        cell, output = measure_cell(wrk, running, concurrency, args)
                    raw_log.write(f"### {running.variant.label} {model.name} c={concurrency} "
                                  f"round={round_index + 1}\n{output}\n")
                    rows[(running.variant.label, concurrency)].cells.append(cell)
                    print(f"[{done}/{total}] {model.name} c={concurrency:<3} {running.variant.label:<18} "
                          f"{cell.ok_rps:9.0f} ok req/s  p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:8.2f} ms  "
                          f"CPU {cell.cpu_ms_per_request:6.3f} ms/req  non-2xx {cell.non2xx}  "
                          f"socket errors {cell.socket_errors}", flush=True)
    return [row for row in rows.values() if row.cells]


# --------------------------------------------------------------------------- summaries


def paired(row: Row, other: Row | None, value: Callable[[Cell], float]) -> Spread:
    """`value` of each round of `row` over the same round of `other` (they ran in the same round)."""
    if other is None:
        return Spread.of([])
    return Spread.of(value(a) / value(b) for a, b in zip(row.cells, other.cells) if value(b) > 0)


def results_table(rows: list[Row], model: str) -> str:
    lines = [["server", "c", "ok req/s median [min–max]", "spread", "p50 ms", "p99 ms median [min–max]",
              "CPU ms/req", "÷ best peer", "best peer", "errors"],
             ["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---", "--:"]]
    order = {v.label: i for i, v in enumerate(VARIANTS)}
    for row in sorted((r for r in rows if r.model == model), key=lambda r: (r.concurrency, order[r.label])):
        peer = best_peer(rows, model, row.concurrency)
        rps = row.spread(lambda c: c.ok_rps)
        non2xx, sockets = row.errors
        mine = row.variant.is_mlscore and peer is not None
        lines.append([
            row.label, str(row.concurrency), rps.format(), f"{rps.relative:.0%}" if len(row.cells) > 1 else "",
            row.spread(lambda c: c.p50_ms).format(2), row.spread(lambda c: c.p99_ms).format(2),
            row.spread(lambda c: c.cpu_ms_per_request).format(3),
            paired(row, peer, lambda c: c.ok_rps).format(2) if mine else "",
            peer.label if mine else "",
            "0" if not (non2xx or sockets) else f"{non2xx} non-2xx, {sockets} socket",
        ])
    return http_bench.markdown_table(lines)


@dataclass(frozen=True)
class Verdict:
    target: str
    passed: bool | None  # None: a server it needs was not measured
    detail: str

    def line(self) -> str:
        word = {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]
        return f"{word} {self.target}: {self.detail}"


def _row(rows: list[Row], model: str, label: str, concurrency: int) -> Row | None:
    return next((r for r in rows if r.model == model and r.label == label and r.concurrency == concurrency), None)


def _best(rows: list[Row], model: str, concurrency: int, among: Callable[[Variant], bool]) -> Row | None:
    """The row with the most successful req/s (median) at that cell among the variants `among` takes."""
    cell = [r for r in rows if r.model == model and r.concurrency == concurrency and among(r.variant)]
    return max(cell, key=lambda r: r.ok_rps, default=None)


def _mlscore(variant: Variant) -> bool:
    return variant.is_mlscore


def _mlscore_batching(variant: Variant) -> bool:
    return variant.is_mlscore and variant.batching


def best_peer(rows: list[Row], model: str, concurrency: int) -> Row | None:
    """The peer variant with the most successful req/s (median) at that cell."""
    return _best(rows, model, concurrency, lambda variant: not variant.is_mlscore)


def _ratio(ours: Row, theirs: Row) -> float:
    return ours.ok_rps / theirs.ok_rps if theirs.ok_rps else math.inf


def verdicts(rows: list[Row]) -> list[Verdict]:
    """Issue 17's targets, on medians over the rounds. "mlscore with batching" is the better of its
    batching variants at that cell, plain "mlscore" the best of all its variants (the one a user
    would pick); "batching on" at c=1 is the variant without a delay."""
    out: list[Verdict] = []

    def judge(target: str, ours: Row | None, theirs: Row | None, passed: Callable[[Row, Row], bool],
              detail: Callable[[Row, Row], str]) -> None:
        if ours is None or theirs is None:
            out.append(Verdict(target, None, "not measured"))
        else:
            out.append(Verdict(target, passed(ours, theirs), detail(ours, theirs)))

    def versus(ours: Row, theirs: Row) -> str:
        return (f"{ours.label} {ours.ok_rps:,.0f} vs {theirs.label} {theirs.ok_rps:,.0f} req/s = "
                f"{_ratio(ours, theirs):.2f}x")

    judge("wide c=64: mlscore with batching >= 1.5x the best peer variant's ok req/s, p99 no worse",
          _best(rows, "wide", 64, _mlscore_batching), best_peer(rows, "wide", 64),
          lambda ours, peer: _ratio(ours, peer) >= 1.5 and ours.p99_ms <= peer.p99_ms,
          lambda ours, peer: f"{versus(ours, peer)}; p99 {ours.p99_ms:.1f} vs {peer.p99_ms:.1f} ms")
    judge("wide c=64: mlscore with batching >= 3x mlscore without",
          _best(rows, "wide", 64, _mlscore_batching), _row(rows, "wide", "mlscore", 64),
          lambda ours, base: _ratio(ours, base) >= 3.0, versus)
    judge("small c=1: batching on costs <= 5% of req/s against off",
          _row(rows, "small", "mlscore batch", 1), _row(rows, "small", "mlscore", 1),
          lambda ours, base: _ratio(ours, base) >= 0.95, versus)
    for concurrency in (8, 64):
        judge(f"small c={concurrency}: mlscore >= 5x every peer variant",
              _best(rows, "small", concurrency, _mlscore), best_peer(rows, "small", concurrency),
              lambda ours, peer: _ratio(ours, peer) >= 5.0, versus)

    target = "every cell: mlscore at or ahead of every peer variant"
    cells = sorted({(r.model, r.concurrency) for r in rows}, key=lambda mc: (list(MODELS).index(mc[0]), mc[1]))
    pairs = [(model, c, _best(rows, model, c, _mlscore), best_peer(rows, model, c)) for model, c in cells]
    pairs = [(model, c, ours, peer) for model, c, ours, peer in pairs if ours and peer]
    behind = [f"{model} c={c}: {ours.label} {ours.ok_rps:,.0f} < {peer.label} {peer.ok_rps:,.0f} req/s"
              for model, c, ours, peer in pairs if ours.ok_rps < peer.ok_rps]
    if not pairs:
        out.append(Verdict(target, None, "not measured"))
    else:
        out.append(Verdict(target, not behind, "; ".join(behind) or f"ahead in all {len(pairs)} cells"))
    return out


def outcome_lines(outcomes: list[Outcome]) -> list[str]:
    """Per variant: measured on which models, or why not."""
    lines = []
    for variant in dict.fromkeys(o.variant for o in outcomes):
        mine = [o for o in outcomes if o.variant == variant]
        parts = []
        for o in mine:
            if o.status == "ok":
                parts.append(f"{o.model}: answers match onnxruntime (1 row, 8 rows in one request, {BURST} "
                             f"concurrent single rows), ready in {o.ready_s:.1f} s, idle CPU {o.idle_share:.0%} "
                             "of a core")
            else:
                parts.append(f"{o.model}: {o.status}: {o.detail.splitlines()[0] if o.detail else ''}")
        lines.append(f"- {variant.label}: " + "; ".join(parts))
    return lines


# --------------------------------------------------------------------------- chart


COLORS = {"mlscore": "tab:blue", "mlserver": "tab:orange", "bentoml": "tab:green", "litserve": "tab:purple",
          "kserve": "tab:brown", "mlscore batch 5ms": "tab:cyan"}  # by framework, or by label


def plot(rows: list[Row], path: Path) -> None:
    """Per model, ok req/s and p99 for each server variant and concurrency: bars at the median,
    whiskers over min–max; batching variants hatched."""
    import matplotlib  # only the chart needs it, and Agg must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    models = [m for m in MODELS if any(r.model == m for r in rows)]
    figure, panels = plt.subplots(len(models), 2, figsize=(14, 4.8 * len(models)), squeeze=False)
    for line, model in enumerate(models):
        mine = [r for r in rows if r.model == model]
        labels = [v.label for v in VARIANTS if any(r.label == v.label for r in mine)]
        levels = sorted({r.concurrency for r in mine})
        width = 0.8 / len(labels)
        for axes, title, value in ((panels[line][0], "successful requests/s", lambda c: c.ok_rps),
                                   (panels[line][1], "p99 latency, ms", lambda c: c.p99_ms)):
            for index, label in enumerate(labels):
                variant = next(v for v in VARIANTS if v.label == label)
                spreads = [(_row(mine, model, label, level) or Row(model, variant, level)).spread(value)
                           for level in levels]
                offsets = [j + (index - (len(labels) - 1) / 2) * width for j in range(len(levels))]
                heights = [0 if math.isnan(s.median) else s.median for s in spreads]
                whiskers = [[0 if math.isnan(s.median) else s.median - s.low for s in spreads],
                            [0 if math.isnan(s.median) else s.high - s.median for s in spreads]]
                color = COLORS.get(label, COLORS[variant.framework])
                axes.bar(offsets, heights, width, yerr=whiskers, capsize=2, color=color,
                         hatch="//" if variant.batching else None, edgecolor="white", label=label)
            axes.set_xticks(range(len(levels)), [f"c={level}" for level in levels])
            axes.set_yscale("log")
            axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axes.yaxis.set_major_formatter(ScalarFormatter())
            axes.yaxis.set_minor_formatter(NullFormatter())
            axes.set_title(f"{MODELS[model].describe()}: {title}")
            axes.grid(True, axis="y", alpha=0.3)
    legend = {}  # label -> handle, over every model's panel, in VARIANTS order
    for line in range(len(models)):
        legend |= dict(zip(*reversed(panels[line][0].get_legend_handles_labels())))
    labels = [v.label for v in VARIANTS if v.label in legend]
    figure.legend([legend[label] for label in labels], labels, loc="lower center", ncol=min(len(labels), 10),
                  fontsize=8)
    rounds = max(len(r.cells) for r in rows)
    figure.suptitle(f"benchmarks/peers.py: wrk on 127.0.0.1, one row per request, median of {rounds} round(s), "
                    "whiskers min–max; hatched: batching")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


# --------------------------------------------------------------------------- results file


def version_lines() -> list[str]:
    main = http_bench.package_versions(VENV_PY, ["mlscore", "onnxruntime", "numpy", "onnx", "uvicorn", "matplotlib"])
    lines = ["- .venv (mlscore): " + ", ".join(f"{k} {v}" for k, v in main.items())]
    for framework, requirements in PEER_PACKAGES.items():
        python = venv_dir(framework) / "bin" / "python"
        names = [requirement.partition("==")[0] for requirement in requirements]
        found = http_bench.package_versions(python, [*names, "onnxruntime", "numpy", "uvicorn", "fastapi"])
        lines.append(f"- {framework} venv: " + (", ".join(f"{k} {v}" for k, v in found.items()) or "not installed"))
    return lines


def write_results(args: argparse.Namespace, rows: list[Row], outcomes: list[Outcome], busy_before: float,
                  chart: Path) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()
    section = [
        f"## {stamp}: peers (`benchmarks/peers.py`)", "",
        f"- machine: {len(os.sched_getaffinity(0))} CPUs (nproc), {http_bench.cpu_model()}, Linux "
        f"{platform.release()}, CPUs {busy_before:.0%} busy just before the run; mlscore revision "
        f"{http_bench.git_revision()}",
        *version_lines(),
        f"- models: {', '.join(MODELS[m].describe() for m in args.models)}, float32, seed {SEED}; onnxruntime "
        f"intra-op threads {ort_threads()} everywhere (cores ÷ {INFERENCE_WORKERS} inference worker), the "
        "session options of `benchmarks/peers/onnx_session.py`",
        f"- load: {wrk_version}, -t 1, one row per request in each server's JSON, c="
        f"{','.join(map(str, args.concurrency))}, {args.duration} s cells after a {args.warmup} s warm-up, "
        f"{args.rounds} round(s), every server once a round (order rotated), "
        f"{'the others paused (SIGSTOP) during each cell' if args.pause_others else 'the others left running'}; batching: max {MAX_BATCH_SIZE} rows, "
        f"{BATCH_DELAY_MS:g} ms (MLServer, LitServe, mlscore batch {BATCH_DELAY_MS:g}ms), BentoML's adaptive window "
        "(max_latency_ms 1000), none for mlscore batch (`--max-batch-delay-ms` 0: what is queued)",
        "", "```", command, "```", "",
        "Servers and answer checks:", "", *outcome_lines(outcomes), "",
    ]
    for model in args.models:
        if any(r.model == model for r in rows):
            section += [f"### {MODELS[model].describe()}", "", results_table(rows, model), ""]
    section += [
        "Successful (2xx) req/s: median over the rounds with [min–max]; spread = (max − min) / median. CPU ms/req: "
        "user + system CPU of the server's process tree over the cell ÷ its answers. ÷ best peer pairs each "
        "round with the best peer variant's cell of the same round. Errors are summed.", "",
        "Targets:", "", *[f"- {v.line()}" for v in verdicts(rows)], "",
        f"Chart: `{chart.relative_to(REPO) if chart.is_relative_to(REPO) else chart}`", "", "",
    ]
    http_bench.append_results(section)


# --------------------------------------------------------------------------- arguments and main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mlscore beside MLServer, BentoML, LitServe and KServe on the same "
                                                 "ONNX models, wrk cells alternated round by round.")
    parser.add_argument("--models", type=http_bench.name_list(tuple(MODELS), "models"), default=list(MODELS),
                        help="comma list among small,wide (default both)")
    parser.add_argument("--servers", type=http_bench.name_list(FRAMEWORKS), default=list(FRAMEWORKS),
                        help="comma list among " + ",".join(FRAMEWORKS) + " (default all), each with its variants")
    parser.add_argument("--concurrency", type=http_bench.int_list, default=[1, 8, 64],
                        help="wrk connections, comma list (default 1,8,64)")
    parser.add_argument("--rounds", type=int, default=3, help="cells per (model, server, c) (default 3)")
    parser.add_argument("--duration", type=int, default=4, help="whole seconds per cell (default 4)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="whole seconds of discarded wrk load before each cell (default 1; 0: none)")
    parser.add_argument("--no-pause", dest="pause_others", action="store_false",
                        help="leave the other servers running during a cell (by default they are paused, "
                             "SIGSTOP/SIGCONT, so their idle work does not count against the one measured)")
    parser.add_argument("--check-only", action="store_true",
                        help="install, start and check every server's answers, measure nothing")
    parser.add_argument("--write-results", action="store_true",
                        help=f"append a dated section to RESULTS.md and write benchmarks/{CHART_PNG}")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be >= 1, --warmup >= 0")
    args.models = [m for m in MODELS if m in args.models]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = "" if args.check_only else http_bench.require_wrk()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    variants = [v for v in VARIANTS if v.framework in args.servers]
    busy_before = http_bench.cpu_busy_share()
    if busy_before > http_bench.BUSY_SHARE:
        print(f"warning: the CPUs are {busy_before:.0%} busy before the run: figures will be noisy", flush=True)
    signal.signal(signal.SIGTERM, http_bench._raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    rows: list[Row] = []
    outcomes: list[Outcome] = []
    for name in args.models:
        model = MODELS[name]
        ensure_model(model)
        started: list[Running] = []
        try:
            start_variants(model, variants, started, outcomes)
            if started and not args.check_only:
                for running in started:
                    http_bench.wait_idle(running.server, deadline_s=5.0)
                rows += measure(wrk, model, started, args)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping the servers", file=sys.stderr)
            raise
        finally:
            http_bench.stop_servers([running.server for running in started])
    print()
    print("\n".join(outcome_lines(outcomes)))
    if not rows:
        return 0 if args.check_only else 1
    for model in args.models:
        if any(r.model == model for r in rows):
            print(f"\n{MODELS[model].describe()}\n\n{results_table(rows, model)}")
    print("\nTargets:\n" + "\n".join(v.line() for v in verdicts(rows)))
    # The repository's chart is the whole matrix's: a part of it (a model, a framework, some
    # concurrencies) gets a chart named after what it covers, beside it.
    whole = (set(args.models) == set(MODELS) and set(args.servers) == set(FRAMEWORKS)
             and sorted(args.concurrency) == [1, 8, 64])
    name = CHART_PNG if whole else (f"peers-{'-'.join(args.models)}-{'-'.join(args.servers)}-"
                                    f"c{'-'.join(map(str, args.concurrency))}.png")
    chart = (BENCH if args.write_results else PEERS_WORK) / name
    plot(rows, chart)
    print(f"\nchart: {chart}")
    if args.write_results:
        write_results(args, rows, outcomes, busy_before, chart)
    return 0


if __name__ == "__main__":
    http_bench.run_script(main)
