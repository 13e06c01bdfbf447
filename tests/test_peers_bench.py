"""benchmarks/peers.py without a benchmark: its models, its answer check and its targets, on made-up cells."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import each other as scripts

import peers  # noqa: E402

TINY = peers.ModelSpec("tiny", (4, 6, 3))


def test_model_generation_is_deterministic_and_seeded():
    assert peers.build_model(TINY) == peers.build_model(TINY)
    assert peers.build_model(TINY, seed=1) != peers.build_model(TINY, seed=2)


def test_generated_model_runs_with_a_dynamic_batch(tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(peers.build_model(TINY))
    rows = peers.sample_rows(TINY, 5)
    answers = peers.reference_answers(path, rows)
    assert answers.shape == (5, 3)
    assert len({tuple(np.round(a, 4)) for a in answers}) == 5  # different rows, different answers


def test_row_mixing_check_names_the_row_a_swapped_answer_belongs_to():
    expected = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert peers.mismatches(expected, [expected[0], expected[1] * (1 + 1e-6), expected[2]], "burst") == []
    problems = peers.mismatches(expected, [expected[1], expected[0], expected[2]], "burst")
    assert problems == ["burst: row 0 got row 1's answer", "burst: row 1 got row 0's answer"]
    assert peers.mismatches(expected, [expected[0], None, expected[2] + 1], "burst") == [
        "burst: row 1 got no answer", "burst: row 2 got [6. 7.], expected [5. 6.]"]


def test_request_formats_round_trip_rows_in_each_framework_shape():
    rows = np.array([[0.5, -1.25], [2.0, 3.0]])
    assert peers.FORMATS["mlscore"].encode(rows) == b'{"x":[[0.5,-1.25],[2.0,3.0]]}'
    v2 = peers.FORMATS["mlserver"]
    assert b'"shape":[2,2]' in v2.encode(rows) and b'"data":[0.5,-1.25,2.0,3.0]' in v2.encode(rows)
    answer = b'{"outputs":[{"name":"y","shape":[2,1],"datatype":"FP32","data":[1.5,2.5]}]}'
    assert v2.decode(answer).tolist() == [[1.5], [2.5]]
    assert peers.FORMATS["kserve"].decode(b'{"predictions":[[1.0],[2.0]]}').tolist() == [[1.0], [2.0]]
    assert peers.FORMATS["litserve"].encode(rows).startswith(b'{"input":')


def cell(rps: float, p99_ms: float, non2xx: int = 0) -> peers.Cell:
    return peers.Cell(rps=rps, ok_rps=rps, p50_ms=p99_ms / 2, p99_ms=p99_ms, requests=int(rps * 4),
                      non2xx=non2xx, socket_errors=0, cpu_ms_per_request=0.2)


def row(label: str, model: str, c: int, rps: tuple[float, ...], p99_ms: float) -> peers.Row:
    variant = next(v for v in peers.VARIANTS if v.label == label)
    return peers.Row(model, variant, c, [cell(r, p99_ms) for r in rps])


def made_up_rows(wide_batch_rps: float) -> list[peers.Row]:
    rows = []
    for c in (1, 8, 64):
        rows += [row("mlscore", "small", c, (10000, 11000, 10500), 1.0),
                 row("mlscore batch", "small", c, (9800, 10900, 10400), 1.1),
                 row("MLServer", "small", c, (1000, 1100, 1050), 9.0),
                 row("LitServe batch", "small", c, (1900, 2000, 1950), 8.0),
                 row("mlscore", "wide", c, (220, 230, 225), 300.0),
                 row("mlscore batch", "wide", c, (wide_batch_rps,) * 3, 200.0),
                 row("mlscore batch 5ms", "wide", c, (wide_batch_rps * 0.9,) * 3, 190.0),
                 row("MLServer batch", "wide", c, (500, 520, 526), 250.0)]
    return rows


def test_targets_pass_on_made_up_cells_that_meet_them():
    verdicts = peers.verdicts(made_up_rows(wide_batch_rps=900))
    assert [v.passed for v in verdicts] == [True] * 6, [v.line() for v in verdicts]
    assert verdicts[0].line() == (
        "PASS wide c=64: mlscore with batching >= 1.5x the best peer variant's ok req/s, p99 no worse: "
        "mlscore batch 900 vs MLServer batch 520 req/s = 1.73x; p99 200.0 vs 250.0 ms")


def test_targets_fail_where_mlscore_falls_short_and_say_where():
    verdicts = peers.verdicts(made_up_rows(wide_batch_rps=400))
    assert [v.passed for v in verdicts] == [False, False, True, True, True, False]
    assert verdicts[-1].detail.startswith("wide c=1: mlscore batch 400 < MLServer batch 520 req/s")


def test_targets_without_the_servers_they_need_are_not_judged():
    verdicts = peers.verdicts([row("mlscore", "small", 1, (100,), 1.0)])
    assert {v.passed for v in verdicts} == {None}


def test_results_table_pairs_mlscore_with_the_best_peer_round_by_round():
    table = peers.results_table(made_up_rows(wide_batch_rps=900), "small")
    mlscore_c8 = next(line for line in table.splitlines() if line.startswith("| mlscore ") and "| 8 " in line)
    assert "10,500 [10,000–11,000]" in mlscore_c8
    assert "5.38 [5.26–5.50]" in mlscore_c8 and "LitServe batch" in mlscore_c8  # 10000/1900, 11000/2000
    assert "| mlscore batch " in table and "| MLServer " in table


def test_chart_is_written(tmp_path):
    path = tmp_path / "peers.png"
    peers.plot(made_up_rows(wide_batch_rps=900), path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_arguments_keep_the_models_in_their_order_and_refuse_unknown_servers():
    assert peers.parse_args(["--models", "wide,small"]).models == ["small", "wide"]
    with pytest.raises(SystemExit):
        peers.parse_args(["--servers", "triton"])


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _wait_for(condition) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_servers_not_measured_are_paused_during_a_cell_and_resumed_after():
    def idle_server() -> SimpleNamespace:  # a parent and a child, as a server and its worker
        proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                                 "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                                 "time.sleep(60)"], start_new_session=True)
        return SimpleNamespace(server=SimpleNamespace(proc=proc))

    servers = [idle_server() for _ in range(3)]
    try:
        deadline = time.monotonic() + 30
        while any(not peers.http_bench.child_pids(s.server.proc.pid) for s in servers):  # each has its child
            assert time.monotonic() < deadline
            time.sleep(0.02)
        groups = [[s.server.proc.pid, *peers.http_bench.child_pids(s.server.proc.pid)] for s in servers]
        with pytest.raises(RuntimeError), peers.others_paused(servers[0], servers, pause=True):
            assert [_state(pid) for pid in groups[0]] != ["T", "T"]
            for group in groups[1:]:
                _wait_for(lambda: [_state(pid) for pid in group] == ["T", "T"])  # a signal lands soon, not at once
            raise RuntimeError("a cell that fails still resumes the others")
        for group in groups:
            _wait_for(lambda: "T" not in [_state(pid) for pid in group])
        with peers.others_paused(servers[0], servers, pause=False):
            assert all("T" not in [_state(pid) for pid in group] for group in groups)
    finally:
        for server in servers:
            os.killpg(server.server.proc.pid, 9)
            server.server.proc.wait()
