"""Fuzzing each example through its own served OpenAPI document: schemathesis generates requests
from /swagger.json (valid ones, and ones that break the schema), sends them to a real server, and
no answer may be a 5xx, carry a status the document does not list, or break the document's schema
for that status. A short derandomized run is in the default suite; `make test-slow` runs a long
random one over every document version."""

from __future__ import annotations

from typing import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import EXAMPLES, Server, start_server  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SERVED_BY_CONFTEST = {"diabetes", "digits", "powerbi"}  # session servers that other tests share


@pytest.fixture(scope="module", params=["diabetes", "digits", "powerbi", "digits_onnx", "cnn_onnx"])
def example_server(request: pytest.FixtureRequest, session_tmp) -> Iterator[Server]:
    name = request.param
    if name in SERVED_BY_CONFTEST:
        yield request.getfixturevalue(f"{name}_server")
        return
    server = start_server(session_tmp, "--entry-script", str(EXAMPLES / name / "score.py"),
                          "--model-dir", str(EXAMPLES / name / "models"))
    yield server
    server.stop()


def fuzz(url: str, version: str, examples: int, derandomize: bool) -> list[str]:
    """Every operation of the served document, with valid and with schema-breaking input; one line
    per distinct failure."""
    schema = schemathesis.openapi.from_url(f"{url}/swagger.json?version={version}")
    # schemathesis leaves out the route that serves the document itself: it is named here.
    operations = [schema[path][method] for path, item in schema.raw_schema["paths"].items() for method in item]
    failures: dict[str, str] = {}
    for operation in operations:
        for mode in schemathesis.GenerationMode:
            @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
                      suppress_health_check=list(HealthCheck), print_blob=False)
            @given(case=operation.as_strategy(generation_mode=mode))
            def exercise(case: schemathesis.Case) -> None:
                response = case.call(base_url=url, timeout=30)
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseException as found:  # a group of check failures
                    for failure in getattr(found, "exceptions", [found]):
                        title = str(failure).splitlines()[0]
                        failures.setdefault(f"{operation.label} ({mode.value}): {response.status_code} {title}",
                                            case.as_curl_command()[:500])

            try:
                exercise()
            except Unsatisfiable:  # an operation without parameters has no schema-breaking input
                pass
    return [f"{title}\n    {example}" for title, example in failures.items()]


def test_short_fuzz_finds_no_server_error_and_no_answer_outside_the_document(example_server):
    failures = fuzz(example_server.url, "3", examples=25, derandomize=True)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_long_fuzz_of_every_document_version(example_server, version):
    failures = fuzz(example_server.url, version, examples=500, derandomize=False)
    assert not failures, "\n".join(failures)
