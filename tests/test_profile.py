"""`mlscore profile`: a real profile of the diabetes example at two short levels, the --input path, the
errors for no sample and a rejected sample, the server stopped on Ctrl-C, and the pure parts
(recommendation, percentiles and errors of a level, the Swagger example, the sample's content type)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mlscore.deploy import Registry
from mlscore.deploy.configs import load_inference_config
from mlscore.deploy.profile import (
    MIN_CPU,
    MIN_MEMORY_GB,
    Level,
    Plan,
    Profile,
    ProfileError,
    Sample,
    _level,
    _report,
    default_levels,
    profile,
    recommend,
    swagger_example,
    write_plot,
)
from mlscore.server.cli import main

ROOT = Path(__file__).resolve().parent.parent
DIABETES = ROOT / "examples" / "diabetes"
MODEL = "sklearn_regression_model.pkl"
SHORT = ["--duration-per-level", "1", "--warm-up", "0.3"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding the diabetes model, the example's inference config, and one with an
    undecorated script (no sample)."""
    folder = tmp_path_factory.mktemp("profile")
    Registry(folder / "home").register(MODEL, DIABETES / "models" / MODEL)
    (folder / "ic.json").write_text(json.dumps({"entryScript": str(DIABETES / "score.py")}))
    (folder / "plain.py").write_text("def init():\n    pass\n\n\ndef run(data):\n    return {'length': len(data)}\n")
    (folder / "ic-plain.json").write_text(json.dumps({"entryScript": "plain.py"}))
    return folder


def run_profile(project: Path, *args: str, ic: str = "ic.json") -> int:
    return main(["profile", "--registry", str(project / "home"), "--ic", str(project / ic), "-m", f"{MODEL}:1",
                 *args])


# --- end to end ----------------------------------------------------------------------------------------


def test_profile_of_the_diabetes_example_reports_levels_recommends_and_writes_files(project, tmp_path, capsys):
    output = tmp_path / "out"
    assert run_profile(project, "--concurrency", "1,2", *SHORT, "--output", str(output)) == 0
    printed = capsys.readouterr().out
    assert "concurrency  requests/s  p50 ms  p95 ms  p99 ms  errors  CPU cores  memory MiB" in printed
    assert '"containerResourceRequirements"' in printed

    report = json.loads((output / "profile.json").read_text())
    assert report["models"] == [f"{MODEL}:1"]
    assert report["sample"]["source"] == "the Swagger document's example"
    assert report["server"] == {"workers": 2, "max_concurrent_requests": 2}
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["requests"] > 0 and level["requests_per_s"] > 0 and level["errors"] == 0
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        assert level["cpu_cores"] > 0 and level["memory_mib"] > 10
    recommendation = report["recommendation"]
    resources = recommendation["containerResourceRequirements"]
    basis = recommendation["basis"]
    chosen = next(level for level in report["levels"] if level["concurrency"] == basis["concurrency"])
    assert resources["cpu"] >= max(MIN_CPU, chosen["cpu_cores"] * 1.2 - 1e-9)
    assert resources["cpu"] <= max(MIN_CPU, chosen["cpu_cores"] * 1.2) + 0.1
    peak_gb = max(level["memory_mib"] for level in report["levels"]) * 2**20 / 1e9
    assert max(MIN_MEMORY_GB, peak_gb * 1.5) <= resources["memoryInGB"] <= max(MIN_MEMORY_GB, peak_gb * 1.5) + 0.1
    assert (output / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "serving" in (output / "server.log").read_text()


def test_input_file_is_the_body_sent(project, tmp_path, capsys):
    body = tmp_path / "two-rows.json"
    body.write_text(json.dumps({"data": [[1.0] * 10, [2.0] * 10]}))
    output = tmp_path / "out"
    assert run_profile(project, "--input", str(body), "--concurrency", "1", "--duration-per-level", "0.5",
                       "--warm-up", "0", "--output", str(output)) == 0
    report = json.loads((output / "profile.json").read_text())
    assert report["sample"] == {"source": str(body), "content_type": "application/json",
                                "bytes": body.stat().st_size}
    assert report["levels"][0]["requests"] > 0


def test_no_sample_and_no_input_is_an_error_naming_both(project, tmp_path, capsys):
    assert run_profile(project, "--concurrency", "1", *SHORT, "--output", str(tmp_path), ic="ic-plain.json") == 1
    error = capsys.readouterr().err
    assert error.startswith("mlscore: error: nothing to send")
    assert "--input FILE" in error and "input sample" in error


def test_a_sample_the_script_rejects_fails_with_the_service_answer(project, tmp_path, capsys):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"data": [[1, 2]]}))
    assert run_profile(project, "--input", str(wrong), "--concurrency", "1", *SHORT, "--output",
                       str(tmp_path / "out")) == 1
    error = capsys.readouterr().err
    assert f"the service rejected the sample ({wrong}, application/json) with HTTP 400" in error
    assert "expected an array of float64 with shape (n, 10)" in error
    assert not (tmp_path / "out" / "profile.json").exists()


def test_an_interrupted_profile_stops_the_server(project, tmp_path):
    def interrupt(line: str) -> None:
        if line.startswith("concurrency"):
            raise KeyboardInterrupt

    registry = Registry(project / "home")
    with pytest.raises(KeyboardInterrupt):
        profile(registry, [f"{MODEL}:1"], load_inference_config(project / "ic.json"), plan=Plan((1,), 1, 0),
                output=tmp_path, progress=interrupt)
    pid = int(next(line for line in (tmp_path / "server.log").read_text().splitlines()
                   if "Started server process" in line).rsplit("[", 1)[1].rstrip("]"))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- the pure parts ------------------------------------------------------------------------------------


def level(concurrency: int, requests_per_s: float, cpu_cores: float, memory_mib: float = 300.0,
          requests: int = 100) -> Level:
    return Level(concurrency, 1.0, requests, 0, {}, requests_per_s, 1.0, 2.0, 3.0, cpu_cores, memory_mib, 0.2)


def test_recommendation_takes_the_lowest_level_within_90_percent_of_the_best_with_headroom():
    levels = [level(1, 500, 0.9), level(2, 950, 1.8), level(4, 1000, 3.5, memory_mib=800), level(8, 990, 3.9)]
    chosen = recommend(levels)
    assert chosen.concurrency == 2
    assert chosen.cpu == 2.2  # 1.8 × 1.2 = 2.16, rounded up to a tenth
    assert chosen.memory_in_gb == 1.3  # 800 MiB × 1.5 = 1.258 GB, rounded up to a tenth
    assert chosen.peak_requests_per_s == 1000
    assert chosen.deployment_fragment() == {"containerResourceRequirements": {"cpu": 2.2, "memoryInGB": 1.3}}


def test_recommendation_has_azure_floors_and_rounds_exact_tenths_exactly():
    assert recommend([level(1, 100, 0.01, memory_mib=50)]).cpu == MIN_CPU
    assert recommend([level(1, 100, 0.01, memory_mib=50)]).memory_in_gb == MIN_MEMORY_GB
    assert recommend([level(1, 100, 0.25)]).cpu == 0.3  # 0.25 × 1.2 = 0.3 (in floats, 0.30000000000000004)


def test_recommendation_ignores_levels_with_no_answer_and_refuses_when_none_answered():
    assert recommend([level(1, 0, 0.0, requests=0), level(2, 400, 1.0)]).concurrency == 2
    with pytest.raises(ProfileError, match="no request was answered"):
        recommend([level(1, 0, 0.5, requests=0)])


def test_a_level_counts_non_2xx_and_lost_connections_as_errors_and_times_only_the_answered():
    outcomes = [(0.001 * (index + 1), 200) for index in range(100)] + [(0.5, 500), (0.5, 500), (0.01, 0)]
    figures = _level(4, 2.0, outcomes, 1.5, 321.0, 0.4)
    assert (figures.requests, figures.errors) == (100, 3)
    assert figures.error_statuses == {"500": 2, "connection": 1}
    assert figures.requests_per_s == 50
    assert figures.p50_ms == pytest.approx(50.5) and figures.p99_ms == pytest.approx(99.01)


def test_swagger_example_is_read_from_swagger_2_and_openapi_3_documents():
    body_schema = {"$ref": "#/definitions/ServiceInput"}
    v2 = {"paths": {"/score": {"post": {"parameters": [{"in": "body", "name": "body", "schema": body_schema}]}}},
          "definitions": {"ServiceInput": {"type": "object", "example": {"data": [[1]]}}}}
    v3 = {"paths": {"/prefix/score": {"post": {"requestBody": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ServiceInput"}}}}}}},
          "components": {"schemas": {"ServiceInput": {"example": {"x": 1}}}}}
    undecorated = {"paths": {"/score": {"post": {"parameters": [{"in": "body", "schema": {"description": "Any"}}]}}}}
    assert swagger_example(v2) == {"data": [[1]]}
    assert swagger_example(v3) == {"x": 1}
    assert swagger_example(undecorated) is None
    assert swagger_example({}) is None


def test_input_content_type_follows_the_file_name_else_json(tmp_path):
    (tmp_path / "body").write_text("{}")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    assert Sample.from_file(tmp_path / "body").content_type == "application/json"
    assert Sample.from_file(tmp_path / "table.csv").content_type == "text/csv"
    assert Sample.from_file(tmp_path / "table.csv", "text/plain").content_type == "text/plain"
    with pytest.raises(ProfileError, match="--input .*missing.json: cannot be read"):
        Sample.from_file(tmp_path / "missing.json")


def test_default_levels_stop_at_the_core_count_but_keep_two():
    assert default_levels(1) == (1, 2)
    assert default_levels(6) == (1, 2, 4)
    assert default_levels(64) == (1, 2, 4, 8)
    assert Plan((4, 1, 2, 2)).levels == (1, 2, 4)
    with pytest.raises(ProfileError, match="--duration-per-level"):
        Plan((1,), duration_s=0)


def test_a_profile_with_failed_requests_is_written_but_exits_1_naming_the_statuses(tmp_path, capsys):
    levels = (level(1, 400, 0.9), replace(level(2, 600, 1.4), errors=3, error_statuses={"500": 2, "connection": 1}))
    result = Profile("m", ("m:1",), "score.py", {"source": "x"}, Plan((1, 2)), 2, "pss", "now", levels,
                     recommend(levels), tmp_path, ("profile.json",))
    assert _report(result) == 1
    captured = capsys.readouterr()
    assert "mlscore: error: 3 request(s) failed (500 x2, connection x1)" in captured.err
    assert "      2       600.0" in captured.out


def test_without_matplotlib_no_plot_is_written(tmp_path, monkeypatch):
    levels = (level(1, 400, 0.9),)
    result = Profile("m", ("m:1",), "score.py", {"source": "x"}, Plan((1,)), 2, "pss", "now", levels,
                     recommend(levels), tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it raises ImportError
    assert write_plot(result, tmp_path / "profile.png") is False
    assert not (tmp_path / "profile.png").exists()
