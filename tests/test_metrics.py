"""GET /metrics: Prometheus text whose values follow a known sequence of requests."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import SCRIPTS, start_server
from mlscore.server.metrics import Metrics


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def samples(url: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metric_values_after_a_known_sequence_of_requests(tmp_path):
    calls = tmp_path / "calls.txt"
    calls.touch()
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "sleepy.py"), "--executor", "threads",
                          "--max-queue-wait-ms", "200", "--scoring-timeout-ms", "800",
                          env={"SLEEPY_CALLS_FILE": str(calls)})
    try:
        url = server.url
        before = samples(url)
        assert before[("mlscore_rejections_total", (("reason", "queue_timeout"),))] == 0
        assert before[("mlscore_init_duration_seconds", ())] >= 0
        for _ in range(2):
            assert httpx.post(url + "/score", json={"ms": 0}).status_code == 200
        assert httpx.post(url + "/score", content=b"\xff\xfe").status_code == 400
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(httpx.post, url + "/score", timeout=30,
                               json={"ms": 3000, "tag": "slow", "until": str(tmp_path / "release")})
            wait_until(lambda: "slow" in calls.read_text())  # it holds the only slot, past its 504 until it returns
            queued = httpx.post(url + "/score", json={"ms": 0}, timeout=30)
            assert queued.status_code == 503 and "Waited 200 ms" in queued.json()["message"]
            assert slow.result().status_code == 504
            (tmp_path / "release").touch()
        assert httpx.get(url + "/health/live").status_code == 200
        after = samples(url)
        assert after[("mlscore_requests_total", (("route", "/score"), ("status", "200")))] == 2
        assert after[("mlscore_requests_total", (("route", "/score"), ("status", "400")))] == 1
        assert after[("mlscore_requests_total", (("route", "/score"), ("status", "503")))] == 1
        assert after[("mlscore_requests_total", (("route", "/score"), ("status", "504")))] == 1
        live = ("mlscore_requests_total", (("route", "/health/live"), ("status", "200")))
        assert after[live] == before.get(live, 0) + 1  # start_server probed it too
        assert after[("mlscore_rejections_total", (("reason", "queue_timeout"),))] == 1
        assert after[("mlscore_rejections_total", (("reason", "scoring_timeout"),))] == 1
        assert after[("mlscore_run_duration_seconds_count", ())] == 2  # the 504's run() has not returned a time
        assert after[("mlscore_request_duration_seconds_count", ())] == 4  # every request that got a slot
        assert after[("mlscore_queue_wait_seconds_count", ())] == 4
        assert after[("mlscore_in_flight", ())] in (0, 1)  # the timed-out run() may still hold its slot
        assert after[("mlscore_queue_depth", ())] == 0
    finally:
        server.stop()


def test_worker_restarts_are_counted(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "crashy.py"), "--executor", "processes")
    try:
        assert httpx.post(server.url + "/score", content=b"die", timeout=30).status_code == 500
        wait_until(lambda: samples(server.url)[("mlscore_worker_restarts_total", (("reason", "crash"),))] >= 1)
        assert samples(server.url)[("mlscore_rejections_total", (("reason", "worker_died"),))] == 1
    finally:
        server.stop()


def test_histograms_and_counters_in_prometheus_form():
    metrics = Metrics()
    for total in (0.0005, 0.0007, 0.001, 0.3, 120.0):  # a bucket's bound counts in it (le is "at most")
        metrics.scored(total, 0.0, 2.0)
    metrics.scored(0.002, 0.0001, None)  # run() was not timed: no run observation
    metrics.request("/score", 200)
    metrics.request("/score", 200)
    metrics.request("/score", 503)
    metrics.rejected("queue_full")
    found = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    bucket = "mlscore_request_duration_seconds_bucket"
    assert found[(bucket, (("le", "0.0005"),))] == 1
    assert found[(bucket, (("le", "0.001"),))] == 3
    assert found[(bucket, (("le", "0.0025"),))] == 4
    assert found[(bucket, (("le", "0.25"),))] == 4
    assert found[(bucket, (("le", "0.5"),))] == 5
    assert found[(bucket, (("le", "60.0"),))] == 5
    assert found[(bucket, (("le", "+Inf"),))] == 6
    assert found[("mlscore_request_duration_seconds_count", ())] == 6
    assert abs(found[("mlscore_request_duration_seconds_sum", ())] - 120.3042) < 1e-9
    assert found[("mlscore_run_duration_seconds_count", ())] == 5
    assert found[("mlscore_run_duration_seconds_bucket", (("le", "0.0025"),))] == 5
    assert found[("mlscore_queue_wait_seconds_count", ())] == 6
    assert found[("mlscore_requests_total", (("route", "/score"), ("status", "200")))] == 2
    assert found[("mlscore_requests_total", (("route", "/score"), ("status", "503")))] == 1
    assert found[("mlscore_rejections_total", (("reason", "queue_full"),))] == 1
    assert found[("mlscore_rejections_total", (("reason", "worker_died"),))] == 0
