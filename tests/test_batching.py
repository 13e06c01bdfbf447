"""Batching for a served ONNX model (`--model`, the /score and V2 infer routes): requests queued
together share one model call, each gets its own rows back, a bad one keeps its 400, and /metrics
and Server-Timing say how many shared a call."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper

from conftest import SCRIPTS, start_server
from mlscore.deploy.configs import ConfigError, load_deployment_config, to_settings_env
from mlscore.scoring.messages import RawRequest
from mlscore.scoring.onnx_model import OnnxPipeline
from mlscore.server.settings import Settings, SettingsError
from mlscore.server.worker import BATCH_STARTED, BATCH_WAIT_MARGIN, RESPONSE, RequestReader, take_batch
from test_onnx_serving import build_mlp, reference


def build_scale(path: Path, first: str | int = "batch", output_first: str | int = "batch",
                reduce_rows: bool = False) -> Path:
    """x float32 [first, "width"] -> y = 2x (or, with reduce_rows, the sum over rows kept as one row,
    while the signature still says the first dimension is the batch's: a model batching must not trust)."""
    if reduce_rows:
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)]
        initializers = [onnx.numpy_helper.from_array(np.array([0], np.int64), "axes")]
    else:
        nodes = [helper.make_node("Add", ["x", "x"], ["y"])]
        initializers = []
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, "width"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [output_first, "width"])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path)
    return path


def post(path: str, body: dict) -> RawRequest:
    return RawRequest("POST", path, b"", [], orjson.dumps(body), b"id", "client")


def loaded(path: Path) -> OnnxPipeline:
    pipeline = OnnxPipeline(path, path.stem)
    pipeline.call_init()
    return pipeline


def test_requests_share_one_call_and_each_gets_its_own_rows(tmp_path):
    pipeline = loaded(build_mlp(tmp_path / "mlp.onnx"))
    assert pipeline.batches
    rng = np.random.default_rng(1)
    rows = [rng.normal(size=(count, 4)).astype(np.float32) for count in (1, 3, 2)]
    responses = pipeline.handle_batch([post("/score", {"input": batch.tolist()}) for batch in rows])
    for batch, response in zip(rows, responses):
        assert response.status == 200 and response.batch == 3
        answer = orjson.loads(response.body)
        np.testing.assert_allclose(answer["logits"], reference(batch)["logits"], rtol=1e-5, atol=1e-5)


def test_a_bad_request_keeps_its_400_and_the_rest_are_answered_together(tmp_path):
    pipeline = loaded(build_mlp(tmp_path / "mlp.onnx"))
    requests = [post("/score", {"input": [[1, 2, 3, 4]]}), post("/score", {"input": [[1, 2, 3]]}),
                RawRequest("POST", "/score", b"", [], b"{not json", b"id", "c"), post("/score", {"input": [[4, 3, 2, 1]]})]
    first, short, broken, last = pipeline.handle_batch(requests)
    assert (first.status, first.batch, last.status, last.batch) == (200, 2, 200, 2)
    assert short.status == 400 and "dimension 1 must be 4" in orjson.loads(short.body)["message"]
    assert broken.status == 400 and "not valid JSON" in orjson.loads(broken.body)["message"]
    assert pipeline.handle_batch([requests[0]])[0].body == pipeline.handle(requests[0]).body


def test_only_requests_with_the_same_other_dimensions_share_a_call(tmp_path):
    pipeline = loaded(build_scale(tmp_path / "scale.onnx"))
    requests = [post("/score", {"x": [[1, 2]]}), post("/score", {"x": [[1, 2, 3]]}), post("/score", {"x": [[3, 4]]})]
    narrow, wide, narrow_too = pipeline.handle_batch(requests)
    assert (narrow.batch, wide.batch, narrow_too.batch) == (2, 1, 2)
    assert orjson.loads(wide.body) == {"y": [[2.0, 4.0, 6.0]]}
    assert orjson.loads(narrow_too.body) == {"y": [[6.0, 8.0]]}


def test_v2_infer_requests_batch_and_answer_in_their_own_format(tmp_path):
    pipeline = loaded(build_scale(tmp_path / "scale.onnx"))
    infer = f"/v2/models/{pipeline.name}/infer"

    def tensor(values: list[float], request_id: str) -> RawRequest:
        return post(infer, {"id": request_id, "inputs": [{"name": "x", "shape": [1, len(values)], "datatype": "FP32",
                                                           "data": values}]})

    first, second, wrong = pipeline.handle_batch([tensor([1, 2], "a"), tensor([5, 6], "b"), post(infer, {"inputs": []})])
    assert (first.batch, second.batch) == (2, 2)
    answer = orjson.loads(second.body)
    assert answer["id"] == "b" and answer["outputs"][0]["data"] == [10.0, 12.0]
    assert wrong.status == 400 and "error" in orjson.loads(wrong.body)


def test_a_model_without_a_batch_dimension_is_never_batched(tmp_path):
    assert not OnnxPipeline(build_scale(tmp_path / "fixed.onnx", first=1, output_first=1), "fixed").batches
    assert not OnnxPipeline(build_scale(tmp_path / "out.onnx", output_first=1), "out").batches


def test_outputs_that_do_not_follow_the_rows_make_each_request_run_alone(tmp_path):
    pipeline = loaded(build_scale(tmp_path / "sum.onnx", reduce_rows=True))
    requests = [post("/score", {"x": [[1, 2], [3, 4]]}), post("/score", {"x": [[10, 20]]})]
    first, second = pipeline.handle_batch(requests)
    assert orjson.loads(first.body) == {"y": [[4.0, 6.0]]} and first.batch == 1
    assert orjson.loads(second.body) == {"y": [[10.0, 20.0]]} and second.batch == 1


def test_batch_settings_are_checked():
    assert Settings.build({}, environ={}).max_batch_size == 1
    settings = Settings.build({}, environ={"MLSCORE_MAX_BATCH_SIZE": "16", "MLSCORE_MAX_BATCH_DELAY_MS": "5"})
    assert (settings.max_batch_size, settings.max_batch_delay_ms) == (16, 5)
    with pytest.raises(SettingsError, match="--max-batch-size=0"):
        Settings.build({"max_batch_size": "0"}, environ={})
    with pytest.raises(SettingsError, match="MLSCORE_MAX_BATCH_DELAY_MS"):
        Settings.build({}, environ={"MLSCORE_MAX_BATCH_DELAY_MS": "-1"})


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


@pytest.mark.parametrize("executor", ["processes", "threads", "inline"])
def test_a_served_model_batches_concurrent_requests_without_mixing_their_rows(tmp_path, executor):
    model = build_mlp(tmp_path / "mlp.onnx")
    # A generous delay: the 8 requests sent together join one batch even on a busy machine.
    server = start_server(tmp_path, "--model", str(model), "--executor", executor, "--max-batch-size", "8",
                          "--max-batch-delay-ms", "500")
    try:
        rng = np.random.default_rng(3)
        rows = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda batch: httpx.post(server.url + "/score", json={"input": batch.tolist()},
                                                             timeout=30), rows))
        for batch, answer in zip(rows, answers):
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["logits"], reference(batch)["logits"], rtol=1e-5, atol=1e-5)
        timings = [answer.headers["server-timing"] for answer in answers]
        assert any('batch;desc="' in timing for timing in timings), timings
        calls, requests = _metric(server.url, "mlscore_batch_size_count"), _metric(server.url, "mlscore_batch_size_sum")
        assert requests == 8 and calls < 8
        assert _metric(server.url, "mlscore_batch_wait_seconds_count") == calls
    finally:
        server.stop()


def test_a_lone_request_waits_for_nothing_without_a_delay(tmp_path):
    server = start_server(tmp_path, "--model", str(build_mlp(tmp_path / "mlp.onnx")), "--max-batch-size", "8")
    try:
        answer = httpx.post(server.url + "/score", json={"input": [[1, 2, 3, 4]]})
        assert answer.status_code == 200 and "batch;" not in answer.headers["server-timing"]
        assert _metric(server.url, "mlscore_batch_size_count") == 1
        assert _metric(server.url, "mlscore_batch_wait_seconds_sum") == 0
    finally:
        server.stop()


@pytest.mark.parametrize("compute_type", ["local", "aci", "aks"])
def test_deployment_configs_carry_the_batch_settings_to_the_server(compute_type):
    config = load_deployment_config({"computeType": compute_type, "maxBatchSize": 16, "maxBatchDelayMs": 3,
                                     **({} if compute_type == "local" else {"authEnabled": False})})
    settings = Settings.build({}, environ=to_settings_env(config))
    assert (settings.max_batch_size, settings.max_batch_delay_ms) == (16, 3)
    with pytest.raises(ConfigError, match="maxBatchSize: must be an integer from 1 to 1024"):
        load_deployment_config({"computeType": compute_type, "maxBatchSize": 0})


@pytest.mark.parametrize("executor", ["processes", "threads"])
def test_an_entry_script_marked_batched_is_batched_by_the_server(tmp_path, executor):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "batch_numpy.py"), "--executor", executor,
                          "--max-batch-size", "8", "--max-batch-delay-ms", "500")
    try:
        def score_together(rows: list[list[float]]) -> list[httpx.Response]:
            with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
                return list(pool.map(lambda row: httpx.post(server.url + "/score", json={"data": [row]}, timeout=30),
                                     rows))

        rows = [[float(index), 1.0, 2.0] for index in range(8)]
        for row, answer in zip(rows, score_together(rows)):
            assert answer.status_code == 200 and answer.json() == [sum(row)], answer.text
        assert _metric(server.url, "mlscore_batch_size_sum") == 8
        assert _metric(server.url, "mlscore_batch_size_count") < 8
        # A batch whose run() raises is run again request by request: only the bad row's request fails.
        *good, bad = score_together([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [666.0, 0.0, 0.0]])
        assert [answer.json() for answer in good] == [[3.0], [6.0]]
        assert bad.status_code == 500 and bad.headers["x-ms-run-function-failed"] == "True"
    finally:
        server.stop()


@pytest.mark.parametrize("trouble, status", [({"ms": 5000}, 504), ({"die": True}, 500)])
def test_every_request_of_a_batch_shares_its_timeout_or_its_worker_death(tmp_path, trouble, status):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "batch_sleepy.py"), "--max-batch-size", "4",
                          "--max-batch-delay-ms", "1000", "--max-queue-wait-ms", "5000",
                          "--scoring-timeout-ms", "1500")
    try:
        bodies = [{"ms": 0}, {"ms": 0}, {"ms": 0}, trouble]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda body: httpx.post(server.url + "/score", json=body, timeout=30), bodies))
        # They were one batch (the delay lets all four join it), so each gets the batch's fate, and
        # none is run again elsewhere.
        assert [answer.status_code for answer in answers] == [status] * 4, [answer.text for answer in answers]
        assert _metric(server.url, "mlscore_batch_wait_seconds_count") == 1
        # The worker is replaced (ready again once its replacement is), and the next batch is served.
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.05)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            again = list(pool.map(lambda body: httpx.post(server.url + "/score", json=body, timeout=30),
                                  [{"ms": 0}, {"ms": 0}]))
        assert [answer.status_code for answer in again] == [200, 200]
    finally:
        server.stop()


def test_a_batch_stops_waiting_for_more_well_before_a_members_queue_deadline():
    """The worker's batch start must reach the front before the front's timer answers a member 503 at
    its queue deadline: waiting for more ends BATCH_WAIT_MARGIN before the member's start-by time,
    not at it (on a loaded machine 1 ms was too little)."""
    front, back = socket.socketpair()
    try:
        reader = RequestReader(back)
        waits: list[float] = []
        reader.wait = waits.append  # type: ignore[method-assign]  # nothing more arrives
        request = RawRequest("POST", "/score", body=b"{}")
        outbox: list[bytes] = []
        take_batch(reader, [request, request], 8, 1.0, 2, time.time() + BATCH_WAIT_MARGIN * 0.6, outbox)
        assert waits == [], "a member within the margin of its start-by time: the batch starts at once"
        status, _, _, size, _, _ = RESPONSE.unpack(outbox[0])
        assert len(outbox) == 1 and (status, size) == (BATCH_STARTED, 2)
        take_batch(reader, [request, request], 8, 1.0, 2, time.time() + BATCH_WAIT_MARGIN + 0.1, [])
        assert waits and max(waits) <= 0.1 + 0.01, waits  # waits for more until the margin, no longer
    finally:
        front.close()
        back.close()
