"""`mlscore loadtest URL`: a headless locust run against a scoring URL, with a progress line every
couple of seconds, a summary table at the end, locust's CSV and JSON files, a timeline and its
plot, and `--fail-on` thresholds that turn the run into a release gate.

Locust runs as a child process (`python -m locust -f mlscore/loadtest/locustfile.py`): importing
locust monkey-patches the whole process with gevent, which this process, and anything it shares a
process with (tests, `mlscore serve`), should not get. The child prints marked JSON lines (see
`locustfile._Progress`); everything else it says goes to `locust.log`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import mimetypes
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlscore.loadtest import LOCUSTFILE
from mlscore.loadtest.report import (
    PROGRESS_MARK, THRESHOLDS, Sample, Summary, Threshold, ThresholdError, format_sample, format_summary,
    parse_fail_on, read_failures_csv, write_plot, write_timeline,
)
from mlscore.loadtest.target import FETCH_TIMEOUT_S, KEY_ENV, Target, TargetError, resolve, send_once, split_url

EXIT_OK = 0
EXIT_THRESHOLD_CROSSED = 1  # also: no request completed at all
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 3  # locust missing, nothing to send, the service refused the request, locust failed
EXIT_INTERRUPTED = 130

DEFAULT_USERS = 10
DEFAULT_DURATION = "30s"
SAMPLE_INTERVAL_S = 1.0  # the timeline's resolution
PRINT_EVERY_SAMPLES = 2  # a progress line every 2 s
STOP_TIMEOUT_S = 15.0
PREFIX = "locust"  # locust's files: locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust.json
INSTALL_HINT = "pip install 'mlscore[loadtest]' (or: pip install locust)"
_LOCUST_LOG_LEVEL = re.compile(r"/(WARNING|ERROR|CRITICAL)/[\w.]+: (.*)")
_TIMESPAN = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class UsageError(ValueError):
    """A bad argument; exit 2."""


@dataclass(frozen=True)
class Plan:
    """A load test's arguments, checked before anything runs."""

    url: str
    users: int
    spawn_rate: float
    duration_s: int
    out: Path
    thresholds: list[Threshold]
    payload: Path | None
    content_type: str | None
    key: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.users < 1:
            raise UsageError("--users must be 1 or more")
        spawn_rate = args.spawn_rate if args.spawn_rate is not None else float(args.users)
        if spawn_rate <= 0:
            raise UsageError("--spawn-rate must be above 0")
        try:
            thresholds = parse_fail_on(args.fail_on)
        except ThresholdError as error:
            raise UsageError(str(error)) from None
        out = args.out or Path(f"loadtest-{datetime.now():%Y%m%d-%H%M%S}")
        return cls(args.url, args.users, spawn_rate, parse_duration(args.duration), out.resolve(), thresholds,
                   args.payload.resolve() if args.payload else None, args.content_type, args.key or None)


def parse_duration(text: str) -> int:
    """Whole seconds from `30`, `30s`, `2m`, `1m30s` or `1h` (locust's --run-time forms)."""
    text = text.strip()
    match = _TIMESPAN.fullmatch(text)
    if text.isdigit():
        seconds = int(text)
    elif text and match:
        hours, minutes, secs = (int(group or 0) for group in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        seconds = 0
    if seconds < 1:
        raise UsageError(f"--duration {text!r}: give a time of 1 s or more, e.g. 30s, 2m, 1m30s")
    return seconds


def add_loadtest_command(subparsers: argparse._SubParsersAction) -> None:
    """Add `loadtest` to a parser's subcommands."""
    command = subparsers.add_parser(
        "loadtest", help="load-test a scoring URL with locust; summary, CSV/JSON, plot, pass/fail thresholds",
        description="Run locust headless against a scoring URL (mlscore's or any other server's): each user\n"
                    "posts the request, then the next as soon as it is answered. The request is --payload FILE,\n"
                    "else the example in the service's /swagger.json, else (for /v2/models/NAME/infer) zeros of\n"
                    "the model's inputs. 503 and 504 answers count as failures of their own kinds.\n\n"
                    "exit status: 0 passed, 1 a --fail-on threshold crossed (or no request completed),\n"
                    "2 bad arguments, 3 the test could not run (no locust, nothing to send, refused).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="thresholds for --fail-on (NAME=VALUE, comma-separated or the flag repeated):\n"
               + "\n".join(f"  {name:<12} {meaning}" for name, meaning in THRESHOLDS.items()))
    command.add_argument("url", metavar="URL", help="the scoring URL, e.g. http://127.0.0.1:5001/score or "
                         "http://127.0.0.1:5001/v2/models/NAME/infer")
    command.add_argument("--users", "-u", type=int, default=DEFAULT_USERS, metavar="N",
                         help=f"concurrent users, each with one request out at a time (default {DEFAULT_USERS})")
    command.add_argument("--spawn-rate", "-r", dest="spawn_rate", type=float, metavar="R",
                         help="users started per second (default: all of them in the first second)")
    command.add_argument("--duration", "-t", default=DEFAULT_DURATION, metavar="TIME",
                         help=f"how long to run: 30s, 2m, 1m30s (default {DEFAULT_DURATION})")
    command.add_argument("--key", default=os.environ.get(KEY_ENV), metavar="KEY",
                         help=f"send 'Authorization: Bearer KEY' (default: env {KEY_ENV})")
    command.add_argument("--payload", type=Path, metavar="FILE", help="the request body to send (default: the "
                         "service's Swagger example, or zeros of the V2 model's inputs)")
    command.add_argument("--content-type", dest="content_type", metavar="TYPE", help="the payload's content type "
                         "(default: what the file's name implies, else application/json)")
    command.add_argument("--fail-on", dest="fail_on", action="append", default=[], metavar="NAME=VALUE,…",
                         help="exit 1 when the run crosses a threshold, e.g. error_ratio=0.01,p99_ms=500")
    command.add_argument("--out", type=Path, metavar="DIR", help="where to write the results (default: "
                         "./loadtest-YYYYmmdd-HHMMSS)")


def run_loadtest_command(args: argparse.Namespace) -> int:
    """Run a parsed `loadtest` command; the exit status is one of the EXIT_ constants."""
    try:
        plan = Plan.from_args(args)
    except UsageError as error:
        return _fail(str(error), EXIT_USAGE)
    if importlib.util.find_spec("locust") is None:
        return _fail(f"locust is not installed here; install it with {INSTALL_HINT}", EXIT_CANNOT_RUN)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return loadtest(plan)
    finally:
        signal.signal(signal.SIGTERM, previous)


def loadtest(plan: Plan) -> int:
    try:
        _check_listening(plan.url)
        target = resolve(plan.url, payload=plan.payload, content_type=plan.content_type, key=plan.key)
        _say(f"load testing {target.url}: {plan.users} users (spawn {plan.spawn_rate:g}/s) for {plan.duration_s} s, "
             f"posting {len(target.body)} bytes of {target.content_type}: {target.source}")
        refusal = _check_first_request(target)
    except TargetError as error:
        return _fail(str(error), EXIT_CANNOT_RUN)
    if refusal:
        return _fail(refusal, EXIT_CANNOT_RUN)
    plan.out.mkdir(parents=True, exist_ok=True)
    request_file = plan.out / ("request" + _extension(target.content_type))
    request_file.write_bytes(target.body)
    run = _LocustRun(plan, target, request_file)
    interrupted = run.wait()
    return _report(plan, run, interrupted)


def _check_listening(url: str) -> None:
    """TargetError when nothing takes a connection at the URL's host and port: said as such, rather
    than as the failure of the first thing asked of the service."""
    split_url(url)  # TargetError when it is no http(s) URL
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:  # a port out of range
        raise TargetError(f"{url}: {error}") from None
    try:
        socket.create_connection((host, port), timeout=FETCH_TIMEOUT_S).close()
    except socket.gaierror as error:
        raise TargetError(f"{url}: the host {host!r} is not known ({error.strerror})") from None
    except TimeoutError:
        raise TargetError(f"{url}: no connection to {parts.netloc} within {FETCH_TIMEOUT_S:g} s") from None
    except ConnectionRefusedError:
        raise TargetError(f"{url}: nothing listens on {parts.netloc} (connection refused); is the service "
                          "running, on that port?") from None
    except OSError as error:
        raise TargetError(f"{url}: cannot connect to {parts.netloc} ({error.strerror or error})") from None


def _check_first_request(target: Target) -> str | None:
    """Why the test should not start (the service refuses the request itself), or None. A 5xx may be
    load-dependent, so only a 4xx, which every request would get, stops it."""
    status, body = send_once(target)
    if not 400 <= status < 500:
        if status >= 500:
            _say(f"note: a first request was answered {status}; load testing anyway")
        return None
    hint = {401: "; give the service's key with --key", 403: "; give the service's key with --key",
            404: "; check the URL's path", 415: "; give --content-type"}.get(status, "")
    detail = body[:300].decode("utf-8", errors="replace").strip()
    return f"POST {target.url} answered {status}{hint}: {detail}"


class _LocustRun:
    """The locust child process, its progress lines read as they come."""

    def __init__(self, plan: Plan, target: Target, request_file: Path) -> None:
        self.plan = plan
        self.samples: list[Sample] = []
        self.failures_by_kind: dict[str, int] | None = None
        self.log_path = plan.out / "locust.log"
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--users", str(plan.users), "--spawn-rate", str(plan.spawn_rate), "--run-time", f"{plan.duration_s}s",
            "--host", target.origin, "--scoring-path", target.path,
            "--payload", str(request_file), "--content-type", target.content_type,
            "--csv", str(plan.out / PREFIX), "--csv-full-history", "--json-file", str(plan.out / PREFIX),
            "--exit-code-on-error", "0",  # failures are judged by --fail-on here, not by locust
            "--progress-json", str(SAMPLE_INTERVAL_S),
        ]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if target.key:
            environment[KEY_ENV] = target.key
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=environment)

    def wait(self) -> bool:
        """Read the child's output until it exits; True when the run was interrupted (Ctrl-C, SIGTERM),
        after the child has written its files."""
        interrupted = False
        try:
            self._read()
        except KeyboardInterrupt:
            interrupted = True
            _say("interrupted: stopping locust")
            self.process.send_signal(signal.SIGTERM)  # locust writes its files on SIGTERM too
            try:
                self._read()
            except KeyboardInterrupt:
                self.process.kill()
        finally:
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()
        return interrupted

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(PROGRESS_MARK):
                self._progress(json.loads(line[len(PROGRESS_MARK):]))
                continue
            self.log.write(line)
            level = _LOCUST_LOG_LEVEL.search(line)
            if level:
                print(f"locust {level.group(1).lower()}: {level.group(2)}", file=sys.stderr, flush=True)

    def _progress(self, record: dict[str, Any]) -> None:
        if "failures_by_kind" in record:
            self.failures_by_kind = record["failures_by_kind"]
            return
        self.samples.append(Sample.from_dict(record))
        if len(self.samples) % PRINT_EVERY_SAMPLES == 0:
            _say(format_sample(self.samples[-1]))

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _report(plan: Plan, run: _LocustRun, interrupted: bool) -> int:
    json_file = plan.out / f"{PREFIX}.json"
    if not json_file.exists():
        return _fail(f"locust exited with {run.process.returncode} before writing its results; the end of "
                     f"{run.log_path}:\n{run.log_tail()}", EXIT_CANNOT_RUN)
    failures = run.failures_by_kind
    if failures is None:
        failures = read_failures_csv(plan.out / f"{PREFIX}_failures.csv")
    summary = Summary.from_locust_json(json_file, failures)
    crossed = [message for threshold in plan.thresholds if (message := threshold.crossed(summary))]
    _write_results(plan, run, summary, crossed)
    _say(format_summary(summary))
    for message in crossed:
        _say(f"FAILED: {message}")
    if plan.thresholds and not crossed:
        _say("passed: " + ", ".join(f"{threshold.name} within {threshold.limit:g}" for threshold in plan.thresholds))
    _say(f"results in {plan.out}/")
    if interrupted:
        return EXIT_INTERRUPTED
    if summary.requests == 0:
        return _fail("no request completed", EXIT_THRESHOLD_CROSSED)
    return EXIT_THRESHOLD_CROSSED if crossed else EXIT_OK


def _write_results(plan: Plan, run: _LocustRun, summary: Summary, crossed: list[str]) -> None:
    write_timeline(run.samples, plan.out / "timeline.csv")
    document = {
        "url": plan.url, "users": plan.users, "spawn_rate": plan.spawn_rate, "duration_s": plan.duration_s,
        **summary.to_dict(),
        "thresholds": [{"name": threshold.name, "limit": threshold.limit} for threshold in plan.thresholds],
        "crossed": crossed,
    }
    (plan.out / "summary.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    title = f"{plan.url}: {plan.users} users (spawn {plan.spawn_rate:g}/s)"
    if not write_plot(run.samples, plan.out / "loadtest.png", title):
        _say("no loadtest.png: matplotlib is not installed here (pip install 'mlscore[plot]')")


def _extension(content_type: str) -> str:
    if "json" in content_type:
        return ".json"
    return mimetypes.guess_extension(content_type.split(";", 1)[0].strip()) or ".bin"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # a SIGTERM ends the run as a Ctrl-C does: locust still writes its files


def _fail(message: str, status: int) -> int:
    print(f"mlscore loadtest: error: {message}", file=sys.stderr, flush=True)
    return status


def _say(line: str) -> None:
    print(line, flush=True)
