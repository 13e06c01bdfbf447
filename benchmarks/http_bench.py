"""Side-by-side HTTP benchmark: mlscore vs the floor vs azureml-inference-server-http.

One run starts every server once on 127.0.0.1, all serving the same entry script
(``examples/diabetes/score.py`` by default), then drives them with ``wrk`` in *alternating*
cells: for each concurrency, for each repeat, for each server, one wrk run of ``--duration``
seconds. Alternating spreads any drift of the machine (thermal, noisy neighbours) over all
servers instead of charging it to whichever ran last. Each cell is preceded by one warm-up
request and a short discarded wrk run at the same concurrency.

Servers:

- ``mlscore``: ``python -m mlscore serve ...`` (see :func:`mlscore_command`).
- ``floor``: ``benchmarks/floor_app.py``, bare Starlette + uvicorn(uvloop, httptools) + orjson
  calling the script's undecorated ``run()``: the least a Python server can do.
- ``peer w=N``: azureml-inference-server-http 1.5.1 (gunicorn sync workers, Flask) in its own
  venv at ``benchmarks/.work/peer-venv`` (created on first use), kept on loopback by
  ``benchmarks/run_peer_loopback.py``, once per ``WORKER_COUNT`` in ``--peer-workers``. The venv
  also holds azureml-core (the example imports ``azureml.core.model.Model``) and the peer runs
  from the model folder, where that real ``Model.get_model_path`` finds the file.

Output: a table (median req/s with min-max over repeats, median p50/p99, non-2xx and socket
errors summed over repeats) and the ratios mlscore/peer(best worker count) and mlscore/floor.
``--write-results`` appends a dated section to ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/http_bench.py --write-results
    .venv/bin/python benchmarks/http_bench.py --servers floor,peer --duration 3 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
WORK = BENCH / ".work"
LOGS = WORK / "logs"
VENV_PY = REPO / ".venv" / "bin" / "python"
PEER_VENV = WORK / "peer-venv"
PEER_PY = PEER_VENV / "bin" / "python"
POST_LUA = BENCH / "post.lua"
RESULTS_MD = BENCH / "RESULTS.md"
BUILD_MODELS = REPO / "examples" / "build_models.py"

HOST = "127.0.0.1"
PEER_PACKAGE = "azureml-inference-server-http"
PEER_VERSION = "1.5.1"
# Entry scripts written the Azure way import azureml.core.model.Model; the peer needs the real one.
PEER_AZUREML_CORE = "azureml-core==1.61.0.post4"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
WRK_INSTALL = "sudo apt-get update && sudo apt-get install -y wrk"
SERVER_KINDS = ("mlscore", "floor", "peer")
READY_DEADLINE_S = 180.0
STOP_GRACE_S = 10.0
IDLE_DEADLINE_S = 30.0
IDLE_SHARE = 0.05  # of one core: below this a server counts as idle
BUSY_SHARE = 0.10  # of all CPUs, busy before the run: above this the machine is not quiet enough
# Variables that would change how a server under test behaves if inherited from the shell.
SCRUBBED_ENV = ("WORKER_COUNT", "SEPERATE_HEALTH_ENDPOINT", "AZUREML_ENTRY_SCRIPT", "AZUREML_MODEL_DIR",
                "AML_APP_ROOT", "AZUREML_CONFIG_FILE", "SERVER_PORT")


# --------------------------------------------------------------------------- data


@dataclass
class ServerSpec:
    """How to start one server under test."""

    name: str  # the label in the table: "mlscore", "floor", "peer w=2"
    kind: str  # one of SERVER_KINDS
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)  # on top of the scrubbed environment
    cwd: Path = REPO
    # The floor has no GET / route; it calls init() before it binds, so any HTTP answer means ready.
    ready_on_any_status: bool = False
    log_dir: Path = LOGS


@dataclass
class Server:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Cell:
    """One wrk run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int


@dataclass
class Row:
    """The summary of all repeats of one (server, concurrency)."""

    server: str
    kind: str
    concurrency: int
    cells: list[Cell]

    @property
    def rps(self) -> float:
        return statistics.median(c.rps for c in self.cells)

    @property
    def rps_min(self) -> float:
        return min(c.rps for c in self.cells)

    @property
    def rps_max(self) -> float:
        return max(c.rps for c in self.cells)

    @property
    def p50_ms(self) -> float:
        return statistics.median(c.p50_ms for c in self.cells)

    @property
    def p99_ms(self) -> float:
        return statistics.median(c.p99_ms for c in self.cells)

    @property
    def non2xx(self) -> int:
        return sum(c.non2xx for c in self.cells)

    @property
    def socket_errors(self) -> int:
        return sum(c.socket_errors for c in self.cells)


# --------------------------------------------------------------------------- arguments


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return values


def variant(text: str) -> tuple[str, str]:
    name, sep, flags = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS, got {text!r}")
    return f"mlscore {name.strip()}", flags


def name_list(choices: tuple[str, ...] | list[str], what: str = "servers") -> Callable[[str], list[str]]:
    """An argparse type: a comma list of names among `choices` (`what` they are, for the error)."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = sorted(set(names) - set(choices))
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"{what} must be among {','.join(choices)}, got {text!r}")
        return names

    return parse


server_list = name_list(SERVER_KINDS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Side-by-side HTTP benchmark of mlscore, the floor and azureml-inference-server-http.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="cells per (server, concurrency) (default 3)")
    parser.add_argument("--concurrency", type=int_list, default=[1, 8, 64], help="comma list (default 1,8,64)")
    parser.add_argument("--servers", type=server_list, default=list(SERVER_KINDS),
                        help="comma list among mlscore,floor,peer (default all)")
    parser.add_argument("--peer-workers", type=int_list, default=[1, 2, 4],
                        help="WORKER_COUNT values for the peer, one server each (default 1,2,4)")
    parser.add_argument("--mlscore-args", default="", help='extra flags for "mlscore serve", one shell string')
    parser.add_argument("--variant", type=variant, action="append",
                        help='NAME=FLAGS: an mlscore server named NAME with these extra flags, repeatable, in '
                             'place of the single "mlscore" (e.g. --variant "threads=--executor threads")')
    parser.add_argument("--wrk-threads", type=int, choices=(1, 2), default=1,
                        help="wrk -t (capped at the concurrency; default 1: the load generator shares the cores)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of discarded wrk load before each cell, after one warm-up request (default 1)")
    parser.add_argument("--entry-script", type=Path, default=Path("examples/diabetes/score.py"))
    parser.add_argument("--model-dir", type=Path, default=Path("examples/diabetes/models"))
    parser.add_argument("--write-results", action="store_true", help=f"append a dated section to {RESULTS_MD.name}")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.duration <= 0:
        parser.error("--repeats must be >= 1 and --duration > 0")
    args.entry_script = (REPO / args.entry_script).resolve()
    args.model_dir = (REPO / args.model_dir).resolve()
    return args


# --------------------------------------------------------------------------- prerequisites


def require_wrk() -> str:
    """The wrk binary, or exit 2 with the command that installs it."""
    path = shutil.which("wrk")
    if path is None:
        print(f"wrk is not installed. Install it with:\n\n    {WRK_INSTALL}\n", file=sys.stderr)
        raise SystemExit(2)
    return path


def ensure_models(entry_script: Path, model_dir: Path) -> None:
    """Build the example models if the model folder is missing or empty."""
    if not entry_script.is_file():
        fail(f"entry script not found: {entry_script}")
    if model_dir.is_dir() and any(model_dir.iterdir()):
        return
    if not BUILD_MODELS.is_file():
        fail(f"model folder {model_dir} is empty and {BUILD_MODELS} does not exist")
    print(f"building example models: {BUILD_MODELS.relative_to(REPO)}", flush=True)
    subprocess.run([str(VENV_PY), str(BUILD_MODELS)], cwd=REPO, check=True)


def peer_requirements() -> list[str]:
    """What the peer venv holds: the peer, azureml-core, and the main venv's scikit-learn."""
    sklearn = package_versions(VENV_PY, ["scikit-learn"]).get("scikit-learn")
    # The same scikit-learn as the one that pickled the example models, so they load cleanly.
    return [f"{PEER_PACKAGE}=={PEER_VERSION}", PEER_AZUREML_CORE,
            f"scikit-learn=={sklearn}" if sklearn else "scikit-learn", "joblib"]


def _missing(requirements: list[str], installed: dict[str, str]) -> list[str]:
    missing = []
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        if installed.get(name) is None or (version and installed[name] != version):
            missing.append(requirement)
    return missing


def ensure_peer_venv() -> None:
    """Create benchmarks/.work/peer-venv on first use, and top it up if a requirement is missing."""
    requirements = peer_requirements()
    if not PEER_PY.exists():
        print(f"creating the peer venv at {PEER_VENV.relative_to(REPO)}", flush=True)
        python3 = shutil.which("python3") or sys.executable
        subprocess.run([python3, "-m", "venv", str(PEER_VENV)], check=True)
    installed = package_versions(PEER_PY, [r.partition("==")[0] for r in requirements])
    missing = _missing(requirements, installed)
    if not missing:
        return
    print(f"peer venv: pip install {' '.join(missing)}", flush=True)
    result = subprocess.run([str(PEER_PY), "-m", "pip", "install", "-q", *missing])
    if result.returncode != 0:
        fail(f"pip install into {PEER_VENV} failed; remove that folder and retry")


def package_versions(python: Path, packages: list[str]) -> dict[str, str]:
    """Installed versions of ``packages`` as seen by another interpreter (missing ones left out)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    if not python.exists():
        return {}
    result = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def fail(message: str) -> NoReturn:
    print(f"http_bench: {message}", file=sys.stderr)
    raise SystemExit(1)


# --------------------------------------------------------------------------- server commands


def mlscore_command(port: int, entry_script: Path, model_dir: Path, extra_args: list[str]) -> list[str]:
    """The mlscore server under test. Adjust here if the CLI changes."""
    return [str(VENV_PY), "-m", "mlscore", "serve",
            "--entry-script", str(entry_script), "--model-dir", str(model_dir),
            "--port", str(port), "--host", HOST, *extra_args]


def floor_command(port: int, entry_script: Path, model_dir: Path) -> list[str]:
    return [str(VENV_PY), str(BENCH / "floor_app.py"),
            "--entry-script", str(entry_script), "--model-dir", str(model_dir), "--port", str(port)]


def peer_command(port: int, entry_script: Path, model_dir: Path) -> list[str]:
    return [str(PEER_PY), str(BENCH / "run_peer_loopback.py"),
            "--entry_script", str(entry_script), "--model_dir", str(model_dir), "--port", str(port)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def build_specs(args: argparse.Namespace) -> list[ServerSpec]:
    """One spec per server under test, in table order."""
    entry, models = args.entry_script, args.model_dir
    specs: list[ServerSpec] = []
    if "mlscore" in args.servers:
        for name, extra in args.variant or [("mlscore", args.mlscore_args)]:
            port = free_port()
            specs.append(ServerSpec(name, "mlscore", mlscore_command(port, entry, models, shlex.split(extra)), port))
    if "floor" in args.servers:
        port = free_port()
        specs.append(ServerSpec("floor", "floor", floor_command(port, entry, models), port,
                                ready_on_any_status=True))
    if "peer" in args.servers:
        for workers in args.peer_workers:
            port = free_port()
            # cwd = the model folder: azureml-core's Model.get_model_path(name) outside a workspace
            # looks in $AML_APP_ROOT/azureml-models/ and then ./name; it never reads AZUREML_MODEL_DIR.
            specs.append(ServerSpec(f"peer w={workers}", "peer", peer_command(port, entry, models), port,
                                    env={"WORKER_COUNT": str(workers), "AML_APP_ROOT": str(REPO)}, cwd=models))
    return specs


# --------------------------------------------------------------------------- server lifecycle


def scrubbed_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(extra)
    return env


def start_server(spec: ServerSpec) -> Server:
    """Start a server in its own process group, logging to its spec's log folder."""
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = spec.log_dir / f"{spec.name.replace(' ', '').replace('=', '')}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(spec.argv, cwd=spec.cwd, env=scrubbed_env(spec.env), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(spec, proc, log_path)


def http_status(url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of one request (an HTTP error status is an answer, not an exception)."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def log_tail(server: Server, lines: int = 25) -> str:
    text = server.log_path.read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def wait_ready(server: Server, deadline_s: float = READY_DEADLINE_S) -> float:
    """Poll GET / until 200 (any status for the floor); return the seconds it took."""
    started = time.monotonic()
    url = f"http://{HOST}:{server.spec.port}/"
    while time.monotonic() - started < deadline_s:
        if server.proc.poll() is not None:
            fail(f"{server.spec.name} exited with {server.proc.returncode} before it was ready; "
                 f"log {server.log_path}:\n{log_tail(server)}")
        try:
            status, _ = http_status(url, timeout=2.0)
            if status == 200 or server.spec.ready_on_any_status:
                return time.monotonic() - started
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    fail(f"{server.spec.name} not ready after {deadline_s:.0f} s; log {server.log_path}:\n{log_tail(server)}")


def check_score(server: Server) -> bytes:
    """One POST /score that must answer 200; returns the body."""
    status, body = http_status(f"http://{HOST}:{server.spec.port}/score", data=BODY)
    if status != 200:
        fail(f"{server.spec.name}: POST /score answered {status}: {body[:300]!r}\n{log_tail(server)}")
    return body


def stop_servers(servers: list[Server]) -> None:
    """SIGTERM every process group, then SIGKILL whatever is left after a grace period."""
    for server in servers:
        signal_group(server, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for server in servers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        signal_group(server, signal.SIGKILL)  # also reaps workers that outlived their parent
        server.proc.wait()


def proc_table() -> dict[int, tuple[int, int]]:
    """Every process now: pid -> (parent pid, user + system CPU ticks), from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state ppid ... utime(11) stime(12)
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`, now."""
    return [child for child, (parent, _) in proc_table().items() if parent == pid]


def signal_group(server: Server, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, sig)


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of all live processes in a process group."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_share(server: Server, window_s: float) -> float:
    """The share of one core that a server's process group used over ``window_s``."""
    before = group_cpu_seconds(server.proc.pid)
    time.sleep(window_s)
    return (group_cpu_seconds(server.proc.pid) - before) / window_s


def wait_idle(server: Server, deadline_s: float = IDLE_DEADLINE_S) -> None:
    """Wait until the server's processes stop using CPU.

    GET / answers as soon as one worker is up; the others (gunicorn's, mlscore's scoring
    processes) may still be importing and running init(), which would steal CPU from the
    first cells. Warn if a server never settles: it would slow down everyone's cells.
    """
    started = time.monotonic()
    share = 1.0
    while time.monotonic() - started < deadline_s:
        share = idle_share(server, 0.5)
        if share < IDLE_SHARE:
            return
    print(f"warning: {server.spec.name} still uses {share:.0%} of a core while idle", flush=True)


# --------------------------------------------------------------------------- wrk

_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _TIME_UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Cell:
    """Requests/s, p50, p99 and error counts from wrk's ``--latency`` text output."""
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rps = find(r"^Requests/sec:\s+([\d.]+)")
    p50 = find(r"^\s+50%\s+(\S+)\s*$")
    p99 = find(r"^\s+99%\s+(\S+)\s*$")
    total = find(r"^\s+(\d+) requests in ")
    if not (rps and p50 and p99 and total):
        raise ValueError(f"cannot parse wrk output:\n{output}")
    sockets = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    non2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    return Cell(
        rps=float(rps.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        requests=int(total.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def run_wrk(wrk: str, port: int, concurrency: int, seconds: float, threads: int, lua: Path = POST_LUA) -> str:
    """One wrk run of the `lua` script's request; its wrk.path, when it sets one, overrides /score."""
    argv = [wrk, "-t", str(min(threads, concurrency)), "-c", str(concurrency), "-d", f"{seconds:g}s",
            "--timeout", "10s", "--latency", "-s", str(lua), f"http://{HOST}:{port}/score"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        fail(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    return result.stdout


# --------------------------------------------------------------------------- the run


def measure(wrk: str, servers: list[Server], args: argparse.Namespace) -> list[Row]:
    """Alternate cells: for each concurrency, for each repeat, for each server."""
    rows = {(s.spec.name, c): Row(s.spec.name, s.spec.kind, c, []) for c in args.concurrency for s in servers}
    total = len(rows) * args.repeats
    done = 0
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / "wrk.log").open("w") as raw_log:
        for concurrency in args.concurrency:
            for repeat in range(args.repeats):
                for server in servers:
                    check_score(server)
                    if args.warmup > 0:
                        run_wrk(wrk, server.spec.port, concurrency, args.warmup, args.wrk_threads)
                    output = run_wrk(wrk, server.spec.port, concurrency, args.duration, args.wrk_threads)
                    raw_log.write(f"### {server.spec.name} c={concurrency} repeat={repeat + 1}\n{output}\n")
                    cell = parse_wrk(output)
                    rows[(server.spec.name, concurrency)].cells.append(cell)
                    done += 1
                    print(f"[{done}/{total}] c={concurrency:<3} {server.spec.name:<18} "
                          f"{cell.rps:9.0f} req/s  p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms  "
                          f"non-2xx {cell.non2xx}  socket errors {cell.socket_errors}", flush=True)
    return list(rows.values())


def best_peer(rows: list[Row], concurrency: int) -> Row | None:
    peers = [r for r in rows if r.kind == "peer" and r.concurrency == concurrency]
    return max(peers, key=lambda r: r.rps, default=None)


def render_table(rows: list[Row]) -> str:
    """A Markdown table; the peer's best worker count at each concurrency is starred."""
    best = {id(best_peer(rows, c)) for c in {r.concurrency for r in rows}}
    header = ["server", "c", "req/s median [min–max]", "p50 ms", "p99 ms", "non-2xx", "socket errors"]
    lines = [header, ["---", "--:", "--:", "--:", "--:", "--:", "--:"]]
    for row in sorted(rows, key=lambda r: r.concurrency):
        name = f"{row.server} *" if id(row) in best and row.kind == "peer" else row.server
        lines.append([name, str(row.concurrency), f"{row.rps:,.0f} [{row.rps_min:,.0f}–{row.rps_max:,.0f}]",
                      f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", str(row.non2xx), str(row.socket_errors)])
    return markdown_table(lines)


def markdown_table(lines: list[list[str]]) -> str:
    """Rows of cells (header and alignment row first) as a Markdown table with padded columns."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines)


def ratio_lines(rows: list[Row]) -> list[str]:
    """mlscore/peer(best) at c=8 and c=64, mlscore/floor at each concurrency."""
    by_key = {(r.server, r.concurrency): r for r in rows}
    lines: list[str] = []
    best = [(c, best_peer(rows, c)) for c in sorted({r.concurrency for r in rows})]
    if any(peer for _, peer in best):
        lines.append("peer's best worker count: " + ", ".join(
            f"c={c}: {peer.server.removeprefix('peer ')}" for c, peer in best if peer))
    variants = sorted({r.server for r in rows if r.kind == "mlscore"})
    for name in variants:
        for concurrency in sorted({r.concurrency for r in rows}):
            mlscore = by_key.get((name, concurrency))
            peer = best_peer(rows, concurrency)
            if mlscore and peer and concurrency in (8, 64):
                lines.append(f"{name} / peer(best: {peer.server}) at c={concurrency}: {mlscore.rps / peer.rps:.2f}x")
    for name in variants:
        for concurrency in sorted({r.concurrency for r in rows}):
            mlscore, floor = by_key.get((name, concurrency)), by_key.get(("floor", concurrency))
            if mlscore and floor:
                lines.append(f"{name} / floor at c={concurrency}: {mlscore.rps / floor.rps:.2f}x req/s, "
                             f"{mlscore.p99_ms / floor.p99_ms:.2f}x p99")
    for concurrency in sorted({r.concurrency for r in rows}):
        floor, peer = by_key.get(("floor", concurrency)), best_peer(rows, concurrency)
        if floor and peer:
            lines.append(f"floor / peer(best: {peer.server}) at c={concurrency}: {floor.rps / peer.rps:.2f}x")
    return lines


# --------------------------------------------------------------------------- results file


def cpu_busy_share(window_s: float = 1.0) -> float:
    """The share of all CPUs that was busy over ``window_s`` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(window_s)
    idle1, total1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def cpu_model() -> str:
    from mlscore.accelerators.onnx_runtime import cpu_name

    return cpu_name()


def git_revision() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" + uncommitted changes" if git("status", "--porcelain") else "")


def environment_lines(busy_before: float) -> list[str]:
    """Results-file lines naming the machine, the Python and the packages of both venvs."""
    main = package_versions(VENV_PY, ["starlette", "uvicorn", "uvloop", "httptools", "orjson", "numpy",
                                      "scikit-learn", "inference-schema"])
    peer = package_versions(PEER_PY, [PEER_PACKAGE, "gunicorn", "flask", "azureml-core", "scikit-learn"])
    python = subprocess.run([str(VENV_PY), "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True).stdout.strip()
    return [
        f"- machine: {len(os.sched_getaffinity(0))} CPUs (nproc), {cpu_model()}, Linux {platform.release()}, "
        f"CPUs {busy_before:.0%} busy just before the run",
        f"- Python {python} (.venv); " + ", ".join(f"{k} {v}" for k, v in main.items()),
        "- peer venv: " + (", ".join(f"{k} {v}" for k, v in peer.items()) or "not installed"),
    ]


def machine_lines(busy_before: float) -> list[str]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()
    return [
        *environment_lines(busy_before),
        f"- load: {wrk}, Lua POST `benchmarks/post.lua` (`{BODY.decode()}`), loopback 127.0.0.1",
        f"- mlscore revision: {git_revision()}",
    ]


def write_results(args: argparse.Namespace, table: str, ratios: list[str], ready_s: dict[str, float],
                  busy_before: float) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    section = [
        f"## {stamp}", "",
        *machine_lines(busy_before),
        f"- cells: {args.duration:g} s each after a {args.warmup:g} s warm-up, {args.repeats} repeats, "
        f"wrk -t {args.wrk_threads} (capped at c), servers alternated cell by cell",
        "- start-up to ready: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in ready_s.items()),
        "", "```", command, "```", "",
        table, "",
        "`*` = the peer's best worker count at that concurrency. p50/p99 are medians over the repeats; "
        "errors are summed over them.", "",
        *[f"- {line}" for line in ratios], "", "",
    ]
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text("# HTTP benchmark results\n\nAppended by `benchmarks/http_bench.py --write-results`."
                              " See benchmarks/README.md.\n\n")
    append_results(section)


def append_results(section: list[str]) -> None:
    """Append a dated section (its lines) to RESULTS.md: every benchmark's --write-results."""
    with RESULTS_MD.open("a") as out:
        out.write("\n".join(section))
    print(f"appended to {RESULTS_MD}")


def run_script(main: Callable[[], int]) -> None:
    """Exit with `main()`'s status; 130 after Ctrl-C (each main stops its servers on the way out)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)


# --------------------------------------------------------------------------- main


def _raise_on_sigterm(signum: int, frame: object) -> None:
    print("\nterminated; stopping the servers", file=sys.stderr)
    raise SystemExit(128 + signum)


def start_all(specs: list[ServerSpec], started: list[Server]) -> dict[str, float]:
    """Start servers one after another (their init() runs compete for the 2 cores otherwise)."""
    ready_s: dict[str, float] = {}
    for spec in specs:
        print(f"starting {spec.name} on {HOST}:{spec.port}: {shlex.join(spec.argv)}", flush=True)
        server = start_server(spec)
        started.append(server)
        ready_s[spec.name] = wait_ready(server)
        wait_idle(server)
        body = check_score(server)
        print(f"  ready in {ready_s[spec.name]:.1f} s; POST /score -> 200 {body[:80].decode(errors='replace')}",
              flush=True)
    return ready_s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = require_wrk()
    ensure_models(args.entry_script, args.model_dir)
    if "peer" in args.servers:
        ensure_peer_venv()
    busy_before = cpu_busy_share()
    if busy_before > BUSY_SHARE:
        print(f"warning: the CPUs are {busy_before:.0%} busy before the run: figures will be noisy", flush=True)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    servers: list[Server] = []
    try:
        ready_s = start_all(build_specs(args), servers)
        for server in servers:
            wait_idle(server, deadline_s=5.0)
        rows = measure(wrk, servers, args)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        raise
    finally:
        stop_servers(servers)
    table, ratios = render_table(rows), ratio_lines(rows)
    print()
    print(table)
    print("\n* = the peer's best worker count at that concurrency\n")
    print("\n".join(ratios))
    if args.write_results:
        write_results(args, table, ratios, ready_s, busy_before)
    return 0


if __name__ == "__main__":
    run_script(main)
