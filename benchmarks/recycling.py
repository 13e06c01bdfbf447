"""Worker recycling under a leaking run(): RSS over time, with and without --worker-max-rss-mb.

    .venv/bin/python benchmarks/recycling.py [--calls 60] [--leak-mb 50] [--bound-mb 400] [--pace-ms 0]

Serves tests/scripts/leaky.py (each call keeps --leak-mb more MiB), sends --calls sequential requests
(--pace-ms apart) to a server without a bound and to one with --worker-max-rss-mb, and prints, per
server, each answer's status, worker pid and that worker's RSS, then the peak RSS, the statuses and
the restarts /metrics counted.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "leaky.py"
SERVING = re.compile(r"serving .* on http://([\d.]+):(\d+)")


def serve(extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "mlscore", "serve", "--entry-script", str(SCRIPT), "--port", "0", *extra]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT.parent,
                                   env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = SERVING.search(log.read_text(errors="replace"))
        if found:
            url = f"http://{found.group(1)}:{found.group(2)}"
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    return process, url
            except httpx.HTTPError:
                pass
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server did not become ready:\n{log.read_text()}")


def trial(label: str, extra: list[str], calls: int, leak_mb: int, pace_ms: float, log: Path) -> None:
    process, url = serve(extra, log)
    statuses: collections.Counter[int] = collections.Counter()
    peak = 0
    started = time.monotonic()
    print(f"\n## {label}: {' '.join(extra) or '(no bound)'}")
    print("  t (s)  status    pid  rss MiB")
    try:
        with httpx.Client(timeout=120) as client:
            for _ in range(calls):
                response = client.post(url + "/score", json={"leak_mb": leak_mb})
                statuses[response.status_code] += 1
                elapsed = time.monotonic() - started
                if response.status_code == 200:
                    answer = response.json()
                    peak = max(peak, answer["rss_mb"])
                    print(f"{elapsed:7.2f}  {response.status_code:6d}  {answer['pid']:5d}  {answer['rss_mb']:7d}")
                else:
                    print(f"{elapsed:7.2f}  {response.status_code:6d}  {response.json()['message'][:60]}")
                if pace_ms:
                    time.sleep(pace_ms / 1000)
            restarts = [line for line in client.get(url + "/metrics").text.splitlines()
                        if line.startswith("mlscore_worker_restarts_total{")]
    finally:
        process.terminate()
        process.wait(30)
    print(f"peak RSS of an answering worker: {peak} MiB; statuses: {dict(statuses)}")
    print("restarts: " + ", ".join(line.split("{", 1)[1] for line in restarts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--leak-mb", type=int, default=50)
    parser.add_argument("--bound-mb", type=int, default=400)
    parser.add_argument("--pace-ms", type=float, default=0.0, help="pause between requests")
    args = parser.parse_args()
    work = ROOT / "benchmarks" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    trial("without a bound", [], args.calls, args.leak_mb, args.pace_ms, work / "recycling-unbounded.log")
    trial("with a bound", ["--worker-max-rss-mb", str(args.bound_mb)], args.calls, args.leak_mb, args.pace_ms,
          work / "recycling-bounded.log")


if __name__ == "__main__":
    main()
