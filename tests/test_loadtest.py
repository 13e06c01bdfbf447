"""`mlscore loadtest` and its locust users: short headless runs against real servers (a few seconds
each), and the pieces that need no server. Locust is never imported here: it monkey-patches the
process with gevent, so it only ever runs in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import EXAMPLES, ROOT, SCRIPTS, Server, start_server
from mlscore.loadtest.cli import UsageError, parse_duration
from mlscore.loadtest.outcomes import OVERLOAD, SCORING_TIMEOUT, failure_kind
from mlscore.loadtest.report import Summary, Threshold, ThresholdError, parse_fail_on, percentile
from mlscore.loadtest.target import TargetError, split_url, v2_request
from mlscore.server.cli import main

KEY = "load-test-key"


def loadtest(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlscore", "loadtest", url, *args], capture_output=True,
                          text=True, timeout=60, env=env)


def results(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def sleepy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One slot, 10 ms of queue, 100 ms to score: a run() of 150 ms is a 504 and everyone waiting a 503."""
    server = start_server(tmp_path_factory.mktemp("sleepy"), "--entry-script", str(SCRIPTS / "sleepy.py"),
                          "--executor", "threads", "--max-concurrent-requests", "1", "--max-queue-wait-ms", "10",
                          "--scoring-timeout-ms", "100")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("onnx"), "--model",
                          str(EXAMPLES / "digits_onnx" / "models" / "digits_mlp.onnx"), "--auth-key", KEY)
    yield server
    server.stop()


# --- real runs -------------------------------------------------------------------------------------


def test_run_on_the_diabetes_example_has_no_failures_and_writes_its_results(diabetes_server, tmp_path):
    out = tmp_path / "run"
    run = loadtest(diabetes_server.url + "/score", "--users", "4", "--spawn-rate", "4", "--duration", "3s",
                   "--out", str(out), "--fail-on", "error_ratio=0")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "the example in " + diabetes_server.url + "/swagger.json" in run.stdout
    assert " req/s " in run.stdout  # a progress line
    assert "requests/s  p50 ms  p95 ms  p99 ms" in run.stdout and "passed: error_ratio within 0" in run.stdout
    summary = results(out)
    assert summary["failures"] == 0 and summary["failures_by_kind"] == {}
    assert summary["requests"] > 50 and summary["p99_ms"] is not None
    locust_json = json.loads((out / "locust.json").read_text())
    assert sum(entry["num_requests"] for entry in locust_json) == summary["requests"]
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "timeline.csv",
                 "loadtest.png", "request.json", "locust.log"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "timeline.csv").read_text().count("\n") >= 3  # the header and a line a second


def test_503s_and_504s_are_failures_of_their_own_kinds_and_fail_on_exits_1(sleepy_server, tmp_path):
    payload = tmp_path / "sleep.json"
    payload.write_text('{"ms": 150}')
    out = tmp_path / "run"
    run = loadtest(sleepy_server.url + "/score", "--users", "4", "--duration", "2s", "--payload", str(payload),
                   "--out", str(out), "--fail-on", "error_ratio=0.01")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED: error ratio" in run.stdout and "above error_ratio=0.01" in run.stdout
    assert f"the file {payload}" in run.stdout
    summary = results(out)
    kinds = summary["failures_by_kind"]
    assert set(kinds) == {OVERLOAD, SCORING_TIMEOUT}, kinds
    assert sum(kinds.values()) == summary["failures"]
    assert OVERLOAD in run.stdout and SCORING_TIMEOUT in run.stdout  # the table's failures by kind


def test_service_without_a_request_example_needs_a_payload_and_exits_3(sleepy_server, tmp_path):
    run = loadtest(sleepy_server.url + "/score", "--duration", "1s", "--out", str(tmp_path / "run"))
    assert run.returncode == 3
    assert "has no request example" in run.stderr and "--payload FILE" in run.stderr


def test_v2_infer_sends_zeros_of_the_model_inputs_with_the_key_as_bearer(onnx_server, tmp_path):
    url = onnx_server.url + "/v2/models/digits_mlp/infer"
    out = tmp_path / "run"
    run = loadtest(url, "--users", "2", "--duration", "2s", "--out", str(out), "--key", KEY)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = results(out)
    assert summary["failures"] == 0 and summary["requests"] > 20
    request = json.loads((out / "request.json").read_text())
    assert request["inputs"][0]["name"] == "input" and request["inputs"][0]["shape"] == [1, 64]
    assert KEY not in (out / "locust.log").read_text()  # the key went through the environment


def test_a_refused_first_request_stops_the_test_with_the_reason(onnx_server, tmp_path):
    without_key = {name: value for name, value in os.environ.items() if name != "MLSCORE_LOADTEST_KEY"}
    run = loadtest(onnx_server.url + "/v2/models/digits_mlp/infer", "--duration", "1s", "--out", str(tmp_path / "run"),
                   env=without_key)
    assert run.returncode == 3
    assert "answered 401; give the service's key with --key" in run.stderr
    assert not (tmp_path / "run").exists()


def test_benchmarks_locustfile_exposes_the_users_to_locust_itself():
    listed = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
                             "--list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert "ScoringUser" in listed.stdout


# --- no server -------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--users", "0"], "--users must be 1 or more"),
    (["--duration", "soon"], "--duration 'soon'"),
    (["--fail-on", "p42_ms=3"], "unknown threshold 'p42_ms'"),
    (["--fail-on", "p99_ms=fast"], "needs a number"),
])
def test_bad_arguments_exit_2_naming_the_argument(capsys, argv, message):
    assert main(["loadtest", "http://127.0.0.1:9/score", *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_locust_exits_3_saying_how_to_install_it(capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "locust" else find_spec(name, *a))
    assert main(["loadtest", "http://127.0.0.1:9/score"]) == 3
    assert "pip install 'mlscore[loadtest]'" in capsys.readouterr().err


def test_failure_kinds_are_stable_names():
    assert failure_kind(200) is None and failure_kind(204) is None
    assert failure_kind(503) == OVERLOAD and failure_kind(504) == SCORING_TIMEOUT
    assert failure_kind(400) == "HTTP 400" and failure_kind(500) == "HTTP 500"
    assert failure_kind(0, ConnectionRefusedError(111, "refused")) == "no response: ConnectionRefusedError"


def test_durations_take_locust_forms():
    assert [parse_duration(text) for text in ("30", "30s", "2m", "1m30s", "1h")] == [30, 30, 120, 90, 3600]
    for bad in ("", "0s", "1.5s", "m"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_thresholds_say_which_was_crossed():
    summary = Summary(requests=1000, failures=20, duration_s=10, p50_ms=5, p95_ms=40, p99_ms=600, max_ms=900,
                      failures_by_kind={OVERLOAD: 20})
    thresholds = parse_fail_on(["error_ratio=0.01,p99_ms=500", "p95_ms=50", "min_rps=200"])
    assert [threshold.crossed(summary) for threshold in thresholds] == [
        "error ratio 0.0200 above error_ratio=0.01", "p99 600 ms above p99_ms=500", None,
        "requests/s 100.0 below min_rps=200"]
    assert Threshold("p99_ms", 500).crossed(Summary(0, 0, 0, None, None, None, None, {})) is None
    with pytest.raises(ThresholdError):
        parse_fail_on(["p99_ms=-1"])


def test_percentiles_are_computed_as_locust_computes_them():
    histogram = {1: 90, 5: 9, 100: 1}  # locust's {rounded ms: count}
    assert [percentile(histogram, q) for q in (0.5, 0.95, 0.99, 1.0)] == [1, 5, 100, 100]
    assert percentile({}, 0.5) is None


def test_scoring_urls_split_into_origin_and_path():
    assert split_url("http://127.0.0.1:5001") == ("http://127.0.0.1:5001", "/score")
    assert split_url("https://h/api/v1/service/x/score?verbose=1") == ("https://h", "/api/v1/service/x/score?verbose=1")
    assert split_url("http://h:1/score", "v2/models/m/infer") == ("http://h:1", "/v2/models/m/infer")
    with pytest.raises(TargetError):
        split_url("127.0.0.1:5001/score")


def test_v2_request_fills_each_input_with_zeros_of_its_shape():
    request = v2_request({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]},
                                     {"name": "flag", "datatype": "BOOL", "shape": [2]}]})
    assert request == {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]},
                                  {"name": "flag", "shape": [2], "datatype": "BOOL", "data": [False, False]}]}
    with pytest.raises(TargetError, match="--payload"):
        v2_request({"inputs": []})
