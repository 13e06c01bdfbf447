"""Workers recycled before they exhaust memory: --worker-max-requests (with jitter) and
--worker-max-rss-mb replace a worker after its request, its replacement runs init() before it takes
traffic, no request fails because of it, and /metrics counts it by reason."""

from __future__ import annotations

import concurrent.futures
import time
from types import SimpleNamespace
from typing import Callable

import httpx
import pytest

from conftest import SCRIPTS, run_server_to_exit, start_server
from mlscore.deploy.configs import (
    AciConfig, AksConfig, ContainerResources, InferenceConfig, Keys, LocalConfig, load_deployment_config,
    to_settings_env,
)
from mlscore.deploy.kubernetes import render_manifests
from mlscore.server.settings import Settings, SettingsError
from mlscore.server.worker import Recycling

LEAKY = str(SCRIPTS / "leaky.py")


def restarts(url: str, reason: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'mlscore_worker_restarts_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no mlscore_worker_restarts_total for {reason}")


def score_until(url: str, done: Callable[[list[dict]], bool], payload: dict, clients: int = 1,
                timeout: float = 90) -> list[dict]:
    """Score steadily from `clients` kept-alive connections until `done(answers)`; every answer must be a 200."""
    answers: list[dict] = []
    deadline = time.monotonic() + timeout

    def client() -> None:
        with httpx.Client(timeout=30) as session:
            while not done(answers) and time.monotonic() < deadline:
                response = session.post(url + "/score", json=payload)
                assert response.status_code == 200, response.text
                answers.append(response.json())

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    assert done(answers), f"not done within {timeout} s after {len(answers)} answers"
    return answers


def pids(answers: list[dict]) -> list[int]:
    """The workers that answered, in the order they first did."""
    return list(dict.fromkeys(answer["pid"] for answer in answers))


def test_a_worker_past_its_request_bound_is_replaced_without_a_failed_request(tmp_path):
    # init() takes a second: a request that waited for the replacement's start would pass the
    # 500 ms queue wait and be a 503.
    server = start_server(tmp_path, "--entry-script", LEAKY, "--worker-max-requests", "30",
                          "--worker-max-requests-jitter", "0", env={"LEAKY_INIT_S": "1"})
    try:
        answers = score_until(server.url, lambda answers: len(pids(answers)) >= 3, {}, clients=4)
        assert all(answer["initialized"] for answer in answers)
        counts = [sum(answer["pid"] == pid for answer in answers) for pid in pids(answers)]
        # A worker serves its 30 and then, while its replacement starts, a few more at most.
        assert all(count >= 30 for count in counts[:-1]), counts
        assert restarts(server.url, "max_requests") >= 2
        assert restarts(server.url, "crash") == 0
        log = server.log_path.read_text()
        assert "served --worker-max-requests 30" in log and "replaced worker" in log
    finally:
        server.stop()


def test_a_worker_past_its_memory_bound_is_replaced_without_a_failed_request(tmp_path):
    bound = 200
    server = start_server(tmp_path, "--entry-script", LEAKY, "--worker-max-rss-mb", str(bound), "--workers", "2",
                          env={"LEAKY_INIT_S": "1"})
    try:
        # Each worker keeps 10 MiB a call until it is 20 MiB past the bound, then serves on while its
        # replacement starts (a second: requests that waited for it would be 503s).
        leak = {"leak_mb": 10, "below_mb": bound + 20}
        answers = score_until(server.url, lambda answers: len(pids(answers)) >= 4, leak, clients=2)
        assert all(answer["initialized"] for answer in answers)
        assert max(answer["rss_mb"] for answer in answers) <= bound + 20 + 10
        assert restarts(server.url, "max_rss") >= 2
        assert restarts(server.url, "crash") == 0
        assert "over --worker-max-rss-mb 200" in server.log_path.read_text()
    finally:
        server.stop()


def test_a_leak_faster_than_the_replacement_stops_the_worker_at_one_and_a_half_times_the_bound(tmp_path):
    bound = 200
    server = start_server(tmp_path, "--entry-script", LEAKY, "--worker-max-rss-mb", str(bound),
                          env={"LEAKY_INIT_S": "3"})
    try:
        answers: list[int] = []
        with httpx.Client(timeout=30) as session:
            # 10 MiB a call, without end: the only worker passes 300 MiB long before its replacement is ready.
            while len(set(pids([a for a in answers if isinstance(a, dict)]))) < 2:
                response = session.post(server.url + "/score", json={"leak_mb": 10})
                # It takes no more requests: they wait for the replacement, or are refused while
                # no worker takes requests (not ready), never a 500.
                assert response.status_code in (200, 503), response.text
                answers.append(response.json() if response.status_code == 200 else response.status_code)
        served = [answer for answer in answers if isinstance(answer, dict)]
        assert max(answer["rss_mb"] for answer in served) <= bound * 1.5 + 10 + 5
        assert "over 1.5 times --worker-max-rss-mb 200" in server.log_path.read_text()
        assert restarts(server.url, "max_rss") == 1
    finally:
        server.stop()


def test_a_bound_below_the_memory_after_init_warns_once_and_replaces_nothing(tmp_path):
    server = start_server(tmp_path, "--entry-script", LEAKY, "--worker-max-rss-mb", "1")
    try:
        answers = score_until(server.url, lambda answers: len(answers) >= 20, {})
        assert len(pids(answers)) == 1
        assert restarts(server.url, "max_rss") == 0
        log = server.log_path.read_text()
        assert log.count("after init(), over the bound of 1 MiB (--worker-max-rss-mb)") == 1
    finally:
        server.stop()


def test_restarts_of_every_reason_are_exposed_from_the_start(tmp_path):
    server = start_server(tmp_path, "--entry-script", LEAKY)
    try:
        for reason in ("scoring_timeout", "crash", "max_rss", "max_requests"):
            assert restarts(server.url, reason) == 0
    finally:
        server.stop()


def test_recycling_flags_need_the_processes_executor(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", LEAKY, "--executor", "threads",
                                "--worker-max-requests", "10")
    assert result.returncode == 2
    assert "--worker-max-requests: replace scoring processes, which executor 'threads'" in result.stderr
    # From the environment (an image's default from memoryInGB) they are left unused instead.
    settings = Settings.build({"executor": "threads"}, environ={"MLSCORE_WORKER_MAX_RSS_MB": "300"})
    assert settings.worker_max_rss_mb is None


def test_the_jitter_defaults_to_a_tenth_and_values_are_checked():
    assert Settings.build({"worker_max_requests": "1000"}, environ={}).worker_max_requests_jitter == 100
    assert Settings.build({}, environ={}).worker_max_requests is None
    with pytest.raises(SettingsError, match="--worker-max-rss-mb=0: must be between 1 and"):
        Settings.build({"worker_max_rss_mb": "0"}, environ={})
    with pytest.raises(SettingsError, match="MLSCORE_WORKER_MAX_REQUESTS="):
        Settings.build({}, environ={"MLSCORE_WORKER_MAX_REQUESTS": "many"})


def _settings(max_requests: int | None = None, jitter: int = 0, max_rss_mb: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(worker_max_requests=max_requests, worker_max_requests_jitter=jitter,
                           worker_max_rss_mb=max_rss_mb)


def test_a_worker_is_due_after_its_bound_plus_a_random_part_of_the_jitter():
    seen = set()
    for _ in range(200):
        recycling = Recycling(_settings(max_requests=10, jitter=5))
        calls = 1
        while not recycling.due():
            calls += 1
        seen.add(calls)
        assert recycling.due() == ""  # said once
    assert seen <= set(range(10, 16)) and len(seen) > 1


def test_a_worker_is_due_past_its_memory_bound_and_told_to_stop_past_one_and_a_half_times_it(monkeypatch):
    import mlscore.server.worker as worker

    rss = [100 << 20]
    monkeypatch.setattr(worker, "rss_bytes", lambda: rss[0])
    recycling = Recycling(_settings(max_rss_mb=200))
    assert recycling.due() == ""
    rss[0] = 201 << 20
    assert recycling.due() == "max_rss"
    rss[0] = 290 << 20
    assert recycling.due() == ""
    rss[0] = 301 << 20
    assert recycling.due() == "stop"
    assert recycling.due() == ""
    rss[0] = 300 << 20
    assert Recycling(_settings(max_rss_mb=200)).max_rss is None  # already past it after init(): never due


@pytest.mark.parametrize(("config", "bound"), [
    (AciConfig(), 204),  # 0.5 GB, one worker: 80 % of 512 MiB over two (it and its replacement)
    (AciConfig(container_resource_requirements=ContainerResources(memory_in_gb=4)), 1638),
    (AksConfig(max_concurrent_requests_per_container=3,
               container_resource_requirements=ContainerResources(memory_in_gb=2)), 409),
])
def test_the_deployment_configs_memory_gives_the_default_bound(config, bound):
    env = to_settings_env(config, keys=Keys("primary", "secondary"))
    assert env["MLSCORE_WORKER_MAX_RSS_MB"] == str(bound)
    assert "MLSCORE_WORKER_MAX_RSS_MB" not in to_settings_env(LocalConfig())


def test_the_kubernetes_deployment_carries_the_bound_from_memory_in_gb():
    deployment = load_deployment_config({"computeType": "aks", "authEnabled": False,
                                         "containerResourceRequirements": {"cpu": 1, "memoryInGB": 3}})
    manifests = render_manifests("bounded", deployment, InferenceConfig(entry_script="score.py"), "img:1", [])
    container = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MLSCORE_WORKER_MAX_RSS_MB"] == "1228"  # 80 % of 3 GiB over the worker and its replacement
    assert container["resources"]["limits"]["memory"] == "3072Mi"
