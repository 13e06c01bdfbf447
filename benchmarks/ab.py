"""This working tree against an earlier revision, on the same machine in one run.

A git worktree of `--against` (default HEAD) is made under benchmarks/.work/ab/; both trees serve
the same thing (`--model` or `--entry-script`, plus any `--flags`) with .venv's Python, and wrk
cells (`-t1`, `--concurrency`, `--duration` s) alternate between them for `--rounds` rounds. For
each tree: median requests/s with min–max, and the CPU of the front and of the scoring workers per
request (from /proc, over each cell). Ratios are new ÷ old. Alternating cells, rather than one run
after the other, keeps the machine's drift (other work, frequency) out of the comparison.

    .venv/bin/python benchmarks/ab.py --against 70b26c9 --concurrency 8,64
    .venv/bin/python benchmarks/ab.py --flags "--max-batch-size 8" --rounds 5
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import http_bench  # run as a script, benchmarks/ is on sys.path
from http_bench import REPO, VENV_PY, WORK, ServerSpec  # noqa: E402

AB_WORK = WORK / "ab"
DEFAULT_MODEL = REPO / "examples" / "digits_onnx" / "models" / "digits_mlp.onnx"


@dataclass
class Tally:
    rps: list[float] = field(default_factory=list)
    front_us: list[float] = field(default_factory=list)
    workers_us: list[float] = field(default_factory=list)


def old_tree(revision: str) -> Path:
    """A package folder whose `mlscore` is a worktree of `revision` (made once per revision)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision], check=True,
                            capture_output=True, text=True).stdout.strip()
    package = AB_WORK / commit
    tree = package / "mlscore"
    if not tree.exists():
        package.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
    return package


def cpu_ticks(pid: int) -> int:
    return http_bench.proc_table().get(pid, (0, 0))[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD", help="the earlier revision (default HEAD)")
    parser.add_argument("--model", type=Path, help=f"an ONNX model (default {DEFAULT_MODEL.relative_to(REPO)})")
    parser.add_argument("--entry-script", type=Path, help="serve an entry script instead of a model")
    parser.add_argument("--payload", type=Path, help="the body to POST (JSON file; default: one row of zeros)")
    parser.add_argument("--flags", default="", help="more `mlscore serve` flags for both trees, one string")
    parser.add_argument("--concurrency", type=http_bench.int_list, default=[8], help="comma list (default 8)")
    parser.add_argument("--rounds", type=int, default=4, help="cells per tree and concurrency (default 4)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per cell (default 4)")
    args = parser.parse_args()
    wrk = http_bench.require_wrk()
    served = (["--entry-script", str(args.entry_script.resolve())] if args.entry_script
              else ["--model", str((args.model or DEFAULT_MODEL).resolve())])
    if args.payload is not None:
        body = args.payload.read_text()
    elif args.entry_script is None:
        body = None  # one row of zeros, from the model's signature below
    else:
        parser.error("--entry-script needs --payload")
    if body is None:
        import onnxruntime as ort  # noqa: PLC0415  # only for a model
        session = ort.InferenceSession(str((args.model or DEFAULT_MODEL).resolve()), providers=["CPUExecutionProvider"])
        body = "{" + ", ".join(f'"{i.name}": [{[0.0] * int(i.shape[-1])}]' for i in session.get_inputs()) + "}"
    AB_WORK.mkdir(parents=True, exist_ok=True)
    lua = AB_WORK / "post.lua"
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f"wrk.body = {body!r}\n")  # a Python repr of a str is a Lua string literal
    # .venv imports mlscore from this working tree; PYTHONPATH puts the old tree's package first.
    trees = {"new": {}, "old": {"PYTHONPATH": str(old_tree(args.against))}}
    for name, env in trees.items():  # each tree's server must import its own mlscore
        found = subprocess.run([str(VENV_PY), "-c", "import mlscore; print(mlscore.__file__)"], check=True,
                               capture_output=True, text=True, cwd=AB_WORK, env={**os.environ, **env}).stdout.strip()
        expected = REPO if name == "new" else Path(env["PYTHONPATH"]) / "mlscore"
        if Path(found).resolve().parent != expected.resolve():
            raise SystemExit(f"the {name} tree's Python imports mlscore from {found}, not {expected}")
    servers = {}
    try:
        for name, env in trees.items():
            port = http_bench.free_port()
            argv = [str(VENV_PY), "-m", "mlscore", "serve", *served, "--port", str(port), *shlex.split(args.flags)]
            spec = ServerSpec(f"ab-{name}", "mlscore", argv, port, env=env, cwd=AB_WORK, log_dir=AB_WORK)
            servers[name] = http_bench.start_server(spec)
            http_bench.wait_ready(servers[name])
        for concurrency in args.concurrency:
            tallies = {name: Tally() for name in servers}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    front = server.proc.pid
                    workers = http_bench.child_pids(front)
                    before = [cpu_ticks(front), sum(cpu_ticks(pid) for pid in workers)]
                    output = http_bench.run_wrk(wrk, server.spec.port, concurrency, args.duration, 1, lua)
                    after = [cpu_ticks(front), sum(cpu_ticks(pid) for pid in workers)]
                    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
                    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
                    tally = tallies[name]
                    tally.rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)))  # type: ignore[union-attr]
                    tally.front_us.append((after[0] - before[0]) * tick_us / requests)
                    tally.workers_us.append((after[1] - before[1]) * tick_us / requests)
            for name, tally in tallies.items():
                print(f"{name} ({'working tree' if name == 'new' else args.against}) c={concurrency}: "
                      f"{statistics.median(tally.rps):,.0f} req/s [{min(tally.rps):,.0f}–{max(tally.rps):,.0f}], "
                      f"CPU a request: front {statistics.median(tally.front_us):.1f} µs, workers "
                      f"{statistics.median(tally.workers_us):.1f} µs")
            new, old = tallies["new"], tallies["old"]
            print(f"new ÷ old c={concurrency}: req/s {statistics.median(new.rps) / statistics.median(old.rps):.3f}, "
                  f"CPU a request {statistics.median(a + b for a, b in zip(new.front_us, new.workers_us)) / statistics.median(a + b for a, b in zip(old.front_us, old.workers_us)):.3f}",
                  flush=True)
    finally:
        http_bench.stop_servers(list(servers.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
