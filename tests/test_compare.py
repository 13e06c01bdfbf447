"""benchmarks/compare.py without a benchmark: summaries, tables, charts and arguments from made-up numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import each other as scripts

import compare  # noqa: E402
import http_bench  # noqa: E402
import overload_bench  # noqa: E402
from compare import Spread  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def wrk_cell(rps: float, p99_ms: float, non2xx: int = 0) -> http_bench.Cell:
    return http_bench.Cell(rps=rps, p50_ms=p99_ms / 2, p99_ms=p99_ms, requests=int(rps * 8), non2xx=non2xx,
                           socket_errors=0)


def throughput_rows() -> list[http_bench.Row]:
    """As http_bench.measure returns them: mlscore variants first, then the floor and the peer."""
    rows = []
    for c, scale in ((8, 1.0), (64, 0.9)):
        rows += [
            http_bench.Row("mlscore processes", "mlscore", c, [wrk_cell(r * scale, 2.7) for r in (5000, 5400, 5200)]),
            http_bench.Row("mlscore threads", "mlscore", c, [wrk_cell(r * scale, 3.0) for r in (4000, 4100, 4200)]),
            http_bench.Row("floor", "floor", c, [wrk_cell(r * scale, 1.7) for r in (8000, 9000, 8500)]),
            http_bench.Row("peer w=2", "peer", c, [wrk_cell(r * scale, 5.2, 1) for r in (2000, 2100, 1900)]),
        ]
    return rows


def overload_cell(server: str, kind: str, load: float, accepted: int, rejected: int, wait_ms: float) -> \
        overload_bench.Cell:
    """A cell of `accepted` 200s answered in `wait_ms` and `rejected` 503s answered on their deadline."""
    outcomes = []
    for i in range(accepted + rejected):
        at = i / 100
        outcome = overload_bench.Outcome(scheduled=at, started=at + 0.0005, written=at + 0.001)
        if i < accepted:
            outcome.status, outcome.done = 200, outcome.written + wait_ms / 1000
        else:
            outcome.status, outcome.done = 503, outcome.written + 0.5
            outcome.retry_after, outcome.message = "1", "Waited 500 ms for a scoring slot"
        outcomes.append(outcome)
    rss = [(0.0, 100 * 2**20), (1.0, 100 * 2**20)]
    return overload_bench.Cell(server, kind, load * overload_bench.CAPACITY_RPS, 2.0, outcomes, rss, 0.2)


def overload_cells() -> list[overload_bench.Cell]:
    cells = []
    for load in (0.5, 3.0):
        for repeat in range(2):
            cells.append(overload_cell("mlscore threads", "mlscore", load, 30, 0 if load < 1 else 60, 20 + repeat))
            cells.append(overload_cell("peer w=2", "peer", load, 30, 0, 200 + 100 * repeat))
    return cells


def test_spread_is_median_and_range_ignoring_nan():
    spread = Spread.of([3.0, math.nan, 1.0, 2.0])
    assert (spread.median, spread.low, spread.high) == (2.0, 1.0, 3.0)
    assert spread.relative == pytest.approx(1.0)
    assert spread.format(1) == "2.0 [1.0–3.0]"
    assert Spread.of([4200.0]).format() == "4,200"
    assert Spread.of([math.nan]).format() == "–"


def test_ratios_pair_each_repeat_with_the_same_round_of_the_reference():
    rows = throughput_rows()
    mlscore, floor = rows[0], rows[2]
    ratios = compare.paired_ratios(mlscore, floor, lambda c: c.rps)
    assert (ratios.low, ratios.median, ratios.high) == pytest.approx((5400 / 9000, 5200 / 8500, 5000 / 8000))
    assert math.isnan(compare.paired_ratios(mlscore, None, lambda c: c.rps).median)


def test_throughput_table_orders_floor_mlscore_peer_and_shows_ratios():
    table = compare.throughput_table(throughput_rows())
    body = table.splitlines()[2:]
    assert [line.split("|")[1].strip() for line in body[:4]] == \
        ["floor", "mlscore processes", "mlscore threads", "peer w=2"]
    assert len(body) == 8 and all("| 64 " in line for line in body[4:])
    processes = body[1]
    assert "5,200 [5,000–5,400]" in processes and "8%" in processes  # (5400 - 5000) / 5200
    assert "0.61 [0.60–0.62]" in processes  # ÷ floor, paired by repeat
    assert "2.57 [2.50–2.74]" in processes  # ÷ peer
    assert "3 non-2xx, 0 socket" in body[3]


def test_overload_table_and_verdicts_summarise_the_repeats():
    main = [c for c in overload_cells() if c.load == 3.0]
    table = compare.overload_table(main)
    header, _, threads, _ = ([cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines())
    threads = dict(zip(header, threads, strict=True))
    assert (threads["server"], threads["load"], threads["offered req/s"]) == ("mlscore threads", "3x", "600")
    assert (threads["200 %"], threads["503 %"]) == ("33.3", "66.7")  # the same in both repeats
    assert threads["200 p50 ms"] == "20.5 [20.0–21.0]"
    summary = compare.verdict_summary(main)
    assert summary[0] == "mlscore threads:"
    assert any(line.startswith("  - PASS every 503 carries Retry-After (2/2)") for line in summary)
    assert "peer w=2 (reference: no admission control):" in summary


def test_pooled_cell_holds_every_repeat():
    group = [c for c in overload_cells() if c.server == "peer w=2" and c.load == 0.5]
    cell = compare.pooled(group)
    assert len(cell.outcomes) == 60 and cell.duration_s == 4.0
    assert cell.accepted_ms(99) == pytest.approx(300.0)


def test_charts_are_written_as_png(tmp_path: Path):
    compare.plot_throughput(throughput_rows(), tmp_path / "throughput.png")
    compare.plot_overload(overload_cells(), tmp_path / "overload.png")
    for name in ("throughput.png", "overload.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_quick_shortens_what_is_not_given():
    args = compare.parse_args(["--quick", "--repeats", "5"])
    assert (args.repeats, args.duration, args.sweep_loads) == (5, compare.QUICK.duration, compare.QUICK.sweep_loads)
    full = compare.parse_args([])
    assert (full.repeats, full.duration, full.concurrency, full.peer_workers) == (3, 8, [8, 64], [2])
    assert full.scenarios == ["throughput", "overload"] and not full.write_results


def test_wrk_durations_are_whole_seconds(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        compare.parse_args(["--duration", "0.5"])
    assert "invalid int value" in capsys.readouterr().err


def test_scenarios_subset_and_unknown_names(capsys: pytest.CaptureFixture[str]):
    assert compare.parse_args(["--scenarios", "overload,throughput"]).scenarios == ["throughput", "overload"]
    assert compare.parse_args(["--scenarios", "overload"]).scenarios == ["overload"]
    with pytest.raises(SystemExit):
        compare.parse_args(["--scenarios", "latency"])
    assert "scenarios must be among throughput,overload" in capsys.readouterr().err


def test_throughput_runs_http_bench_with_the_mlscore_variants():
    bench_args = compare.throughput_bench_args(compare.parse_args(["--quick", "--concurrency", "1,8"]))
    assert (bench_args.repeats, bench_args.duration, bench_args.warmup, bench_args.concurrency) == (2, 2, 1, [1, 8])
    names = [spec.name for spec in http_bench.build_specs(bench_args)]
    assert names == ["mlscore processes", "mlscore threads", "mlscore processes w=2", "floor", "peer w=2"]


def test_missing_wrk_exits_with_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(http_bench.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exited:
        compare.main(["--quick"])
    assert exited.value.code == 2
    assert "apt-get install -y wrk" in capsys.readouterr().err
