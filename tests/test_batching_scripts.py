"""Batching in an entry script (@batched run()), in-process: the pipeline's handle_batch with several
requests, as an executor calls it when requests are queued."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import SCRIPTS
from mlscore.scoring import collect
from mlscore.scoring.entry_script import EntryScriptError, load_entry_script
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.pipeline import ScoringPipeline

JSON = [(b"content-type", b"application/json")]


def pipeline_for(script: str) -> ScoringPipeline:
    pipeline = ScoringPipeline(load_entry_script(SCRIPTS / script))
    pipeline.call_init()
    return pipeline


def calls(pipeline: ScoringPipeline) -> list[Any]:
    return pipeline.script.module.CALLS


def post(payload: Any, request_id: str = "r") -> RawRequest:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return RawRequest("POST", "/score", headers=list(JSON), body=body, request_id=request_id.encode())


def rows(*firsts: float) -> dict[str, Any]:
    """A numpy request of one row per first value: [first, 1, 1] (a sum per row of first + 2)."""
    return {"data": [[first, 1.0, 1.0] for first in firsts]}


def answer(response: RawResponse) -> Any:
    return orjson.loads(response.body)


def test_numpy_requests_share_one_run_call_and_each_gets_its_own_rows():
    pipeline = pipeline_for("batch_numpy.py")
    responses = pipeline.handle_batch([post(rows(1)), post(rows(2, 3)), post(rows(4, 5, 6))])
    assert calls(pipeline) == [6]
    assert [answer(response) for response in responses] == [[3.0], [4.0, 5.0], [6.0, 7.0, 8.0]]
    assert [response.status for response in responses] == [200, 200, 200]
    assert [response.batch for response in responses] == [3, 3, 3]
    assert len({response.run_ms for response in responses}) == 1 and responses[0].run_ms >= 0


def test_bad_request_gets_its_own_400_and_the_others_share_one_call():
    pipeline = pipeline_for("batch_numpy.py")
    responses = pipeline.handle_batch([
        post(rows(1)), post({"data": [["a", "b", "c"]]}), post(b'{"data": [[1,'), post(rows(2, 3)),
    ])
    assert [response.status for response in responses] == [200, 400, 400, 200]
    assert "'data'" in answer(responses[1])["message"]
    assert answer(responses[2])["message"].startswith("POST body could not be decoded as JSON")
    assert calls(pipeline) == [3]
    assert answer(responses[0]) == [3.0] and answer(responses[3]) == [4.0, 5.0]
    assert responses[0].batch == responses[3].batch == 2


def test_run_raising_on_a_batch_is_retried_alone_so_only_the_failing_request_gets_a_500(caplog):
    pipeline = pipeline_for("batch_numpy.py")
    responses = pipeline.handle_batch([post(rows(1)), post(rows(2, 666)), post(rows(3))])
    assert [response.status for response in responses] == [200, 500, 200]
    assert calls(pipeline) == [4, 1, 2, 1]
    assert responses[1].run_failed and not responses[0].run_failed
    assert "run() raised RuntimeError" in answer(responses[1])["message"]
    assert answer(responses[0]) == [3.0] and answer(responses[2]) == [5.0]
    assert [response.batch for response in responses] == [1, 1, 1]
    assert "on a batch of 3 requests" in caplog.text


def test_result_of_the_wrong_length_is_a_500_for_every_request_naming_the_lengths():
    pipeline = pipeline_for("batch_numpy.py")
    responses = pipeline.handle_batch([post(rows(1)), post(rows(777, 2)), post(rows(3, 4, 5))])
    assert calls(pipeline) == [6]
    message = "run() returned 5 rows for a batch of 6 rows (3 requests)"
    assert [(response.status, answer(response)["message"]) for response in responses] == [(500, message)] * 3
    assert all(response.run_failed and response.batch == 3 for response in responses)


def test_pandas_requests_are_concatenated_and_the_result_split_by_rows():
    pipeline = pipeline_for("batch_pandas.py")
    responses = pipeline.handle_batch([
        post({"table": [{"a": 1, "b": 2}]}), post({"table": [{"a": 3, "b": 4}, {"a": 5, "b": 6}]}),
    ])
    assert calls(pipeline) == [3]
    assert [answer(response) for response in responses] == [[{"total": 3.0}], [{"total": 7.0}, {"total": 11.0}]]


def test_plain_run_gets_a_list_of_bodies_and_headers_and_answers_a_list():
    pipeline = pipeline_for("batch_plain.py")
    requests = [RawRequest("POST", "/score", headers=[(b"x-ms-request-id", name.encode())], body=name.encode(),
                           request_id=name.encode()) for name in ("a", "b")]
    responses = pipeline.handle_batch(requests)
    assert calls(pipeline) == [2]
    assert [answer(response) for response in responses] == [{"upper": "A", "id": "a"}, {"upper": "B", "id": "b"}]
    assert [response.batch for response in responses] == [2, 2]


def test_plain_run_raising_is_retried_alone_and_a_short_list_is_a_500_naming_the_lengths():
    pipeline = pipeline_for("batch_plain.py")
    responses = pipeline.handle_batch([post(b"x"), post(b"boom"), post(b"y")])
    assert [response.status for response in responses] == [200, 500, 200]
    assert calls(pipeline) == [3, 1, 1, 1]
    responses = pipeline.handle_batch([post(b"x"), post(b"short"), post(b"y")])
    assert {answer(response)["message"] for response in responses} == {
        "run() returned 2 answers for a batch of 3 requests"}


def test_requests_join_a_call_only_when_their_other_parameters_are_the_same():
    pipeline = pipeline_for("batch_numpy_inner.py")  # @batched below inference-schema's decorators
    assert pipeline.batches
    responses = pipeline.handle_batch([
        post({**rows(1), "scale": 1}), post({**rows(2), "scale": 10}), post(rows(3, 4)), post({**rows(5), "scale": 1}),
    ])
    assert calls(pipeline) == [(2, 1), (1, 10), (2, 1)]  # the one without scale (2 rows): a call of its own
    assert [answer(response) for response in responses] == [[3.0], [40.0], [5.0, 6.0], [7.0]]
    assert [response.batch for response in responses] == [2, 1, 1, 2]


def test_a_request_whose_arrays_disagree_on_rows_is_a_400_naming_them():
    pipeline = pipeline_for("batch_numpy_inner.py")
    responses = pipeline.handle_batch([post({**rows(1, 2), "weights": [1, 2, 3]}), post({**rows(1), "weights": [2]})])
    assert responses[0].status == 400
    assert answer(responses[0])["message"] == (
        "The parameters of a batched run() must have a row each for the same rows; got 'data' 2, 'weights' 3")
    assert answer(responses[1]) == [6.0]


def test_what_a_batched_run_collects_joins_every_request_of_the_call_under_all_their_ids(monkeypatch):
    monkeypatch.setattr(collect, "_enabled", True)
    pipeline = pipeline_for("batch_plain.py")
    responses = pipeline.handle_batch([post(b"x", "id-1"), post(b"y", "id-2")])
    assert [response.headers[-1] for response in responses] == [(collect.COLLECTED_HEADER, b'{"ids":"id-1,id-2"}')] * 2


def test_a_request_answered_alone_is_a_batch_of_one():
    pipeline = pipeline_for("batch_numpy.py")
    alone = pipeline.handle(post(rows(1, 2)))
    in_batch = pipeline.handle_batch([post(rows(1, 2))])[0]
    assert calls(pipeline) == [2, 2]
    assert (alone.status, answer(alone), alone.batch) == (in_batch.status, answer(in_batch), in_batch.batch) == (
        200, [3.0, 4.0], 1)
    assert pipeline.handle(post(rows(666))).status == 500
    assert pipeline.handle(RawRequest("OPTIONS", "/score")).status == 200


def test_warm_up_calls_a_batched_run_with_the_sample_as_a_batch_of_one():
    pipeline = pipeline_for("batch_numpy.py")
    assert pipeline.warm_up()
    assert calls(pipeline) == [1]


@pytest.mark.parametrize("script", ["contract.py", "plain_echo.py", "raw_echo.py"])
def test_a_script_without_batched_does_not_batch(script):
    assert ScoringPipeline(load_entry_script(SCRIPTS / script)).batches is False


def test_batched_on_a_raw_http_run_is_a_load_error():
    with pytest.raises(EntryScriptError, match="both @rawhttp and @batched"):
        ScoringPipeline(load_entry_script(SCRIPTS / "batch_rawhttp.py"))


def test_a_batched_script_starts_warms_up_and_serves_over_http(client_for):
    client = client_for("batch_numpy.py")
    assert client.get("/health/ready").status_code == 200
    response = client.post("/score", json=rows(1, 2))
    assert response.status_code == 200, response.text
    assert response.json() == [3.0, 4.0]
