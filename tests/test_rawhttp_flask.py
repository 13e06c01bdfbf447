"""A `@rawhttp` run() gets werkzeug's Request, as Flask hands it on Azure, and may answer with anything
Azure's AMLResponse, werkzeug or Flask makes; the azureml_inference_server_http import names; other
input modes never load werkzeug; a script whose input_schema names a parameter run() lacks is served."""

from __future__ import annotations

import hashlib
import logging
import socket
import subprocess
import sys
import textwrap

import httpx
import pytest

from conftest import SCRIPTS, start_server
from mlscore.scoring.messages import RawRequest
from mlscore.server.worker import RequestReader, request_frame

IMAGE = bytes(range(256)) * 7 + b"\r\n--not-a-boundary\r\n\x00"  # bytes a multipart parser must leave alone
SHA = hashlib.sha256(IMAGE).hexdigest()


@pytest.fixture()
def seen(client_for):
    """What azure_rawhttp_request.py saw of a request: `seen("post", "/score?x=1", json=...)`."""
    client = client_for("azure_rawhttp_request.py")

    def request(method: str, url: str = "/score", **kwargs) -> dict:
        response = client.request(method.upper(), url, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    return request


# --- the request run() receives --------------------------------------------------------------

def test_rawhttp_request_headers_iterate_as_title_case_name_value_pairs(seen):
    answer = seen("post", content=b"x", headers={"x-custom-thing": "one", "content-type": "text/plain"})
    headers = dict(answer["headers"])
    assert headers["X-Custom-Thing"] == "one"
    assert headers["Content-Type"] == "text/plain" and headers["Content-Length"] == "1"
    assert answer["request_type"] == "AMLRequest"


def test_rawhttp_repeated_request_header_is_one_comma_joined_value(seen):
    answer = seen("post", content=b"x", headers=[("x-dup", "1"), ("x-dup", "2")])
    assert dict(answer["headers"])["X-Dup"] == "1,2"


def test_rawhttp_multipart_upload_reaches_files_byte_for_byte_with_its_form_field(client_for):
    client = client_for("azure_rawhttp_image.py")
    response = client.post("/score", files={"image": ("cat.png", IMAGE, "image/png")}, data={"caption": "a cat"})
    assert response.status_code == 200, response.text
    assert response.json() == {"filename": "cat.png", "content_type": "image/png", "size": len(IMAGE),
                               "sha256": SHA, "caption": "a cat"}


def test_rawhttp_post_without_the_expected_file_gets_the_scripts_400(client_for):
    response = client_for("azure_rawhttp_image.py").post("/score", data={"caption": "no image"})
    assert response.status_code == 400
    assert "image" in response.json()["error"]


def test_rawhttp_form_values_and_args_getlist(seen):
    answer = seen("post", "/score?a=1&a=2&b=x", data={"a": "3", "caption": "hi"})
    assert answer["args"] == {"a": ["1", "2"], "b": ["x"]}
    assert answer["form"] == {"a": ["3"], "caption": ["hi"]}
    assert answer["values"] == {"a": ["1", "2", "3"], "b": ["x"], "caption": ["hi"]}
    assert answer["mimetype"] == "application/x-www-form-urlencoded"
    assert answer["data"] == ""  # as in Flask: a form body is parsed into form, not left in data


def test_rawhttp_multipart_files_and_form_together(seen):
    answer = seen("post", files={"image": ("cat.png", IMAGE, "image/png")}, data={"caption": "a cat"})
    assert answer["files"] == {"image": {"filename": "cat.png", "content_type": "image/png", "size": len(IMAGE),
                                         "sha256": SHA}}
    assert answer["form"] == {"caption": ["a cat"]}
    assert answer["mimetype"] == "multipart/form-data"
    assert answer["content_type"].startswith("multipart/form-data; boundary=")


def test_rawhttp_url_full_path_host_and_scheme(seen):
    answer = seen("get", "/score?x=1&y=two%20words")
    assert answer["url"] == "http://testserver/score?x=1&y=two%20words"
    assert answer["base_url"] == "http://testserver/score"
    assert answer["path"] == "/score"
    assert answer["full_path"] == "/score?x=1&y=two%20words"
    assert answer["query_string"] == "x=1&y=two%20words"
    assert answer["host"] == "testserver" and answer["scheme"] == "http"
    assert answer["method"] == "GET"


def test_rawhttp_url_without_a_query_has_the_bare_full_path(seen):
    answer = seen("get", "/score")
    assert answer["full_path"] == "/score?"  # werkzeug's (and Flask's) full_path always has the "?"
    assert answer["args"] == {}


def test_rawhttp_remote_addr_is_the_clients_host(seen):
    assert seen("get")["remote_addr"] == "testclient"  # what the in-process client gives as its host


def test_rawhttp_environ_is_a_wsgi_environ(seen):
    answer = seen("post", "/score?q=1", content=b"abc", headers={"content-type": "text/plain", "host": "example.org:8123"})
    assert answer["environ"] == {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/score", "QUERY_STRING": "q=1",
        "SERVER_NAME": "example.org", "SERVER_PORT": "8123", "REMOTE_ADDR": "testclient",
        "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "3", "wsgi.url_scheme": "http",
    }
    assert answer["url"] == "http://example.org:8123/score?q=1"


def test_rawhttp_data_and_get_json_of_a_json_body(seen):
    answer = seen("post", json={"k": [1, 2]})
    assert answer["data"] == '{"k":[1,2]}'
    assert answer["json_forced"] == answer["json_silent"] == {"k": [1, 2]}
    assert answer["is_json"] is True
    assert answer["content_type"] == answer["mimetype"] == "application/json"


def test_rawhttp_get_json_force_reads_json_sent_as_text_and_silent_gives_none(seen):
    answer = seen("post", content=b'{"k": 1}', headers={"content-type": "text/plain; charset=utf-8"})
    assert answer["json_forced"] == {"k": 1}
    assert answer["json_silent"] is None
    assert answer["is_json"] is False
    assert answer["content_type"] == "text/plain; charset=utf-8" and answer["mimetype"] == "text/plain"


def test_rawhttp_get_json_silent_gives_none_for_a_body_that_is_not_json(seen):
    answer = seen("post", content=b"{nope", headers={"content-type": "application/json"})
    assert answer["json_forced"] is None and answer["json_silent"] is None
    assert answer["data"] == "{nope"


def test_rawhttp_get_json_of_a_body_that_is_not_json_is_a_400_naming_the_problem(client_for):
    response = client_for("azure_rawhttp_request.py").post(
        "/score?strict=1", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "could not be decoded as JSON" in response.json()["message"]
    assert response.headers["x-ms-run-function-failed"] == "False"


def test_rawhttp_get_json_without_a_json_content_type_is_werkzeugs_415(client_for):
    response = client_for("azure_rawhttp_request.py").post(
        "/score?strict=1", content=b'{"k": 1}', headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["message"]


def test_rawhttp_get_on_the_image_script_answers_its_full_path(client_for):
    response = client_for("azure_rawhttp_image.py").get("/score?size=small")
    assert response.status_code == 200
    assert response.content == b"/score?size=small"
    assert response.headers["content-type"] == "text/plain"


# --- what run() answers with -----------------------------------------------------------------

@pytest.mark.parametrize(
    "kind, status, body, content_type, failed",
    [
        ("aml-none", 333, b"{}", "application/json", "False"),
        ("aml-text", 444, b"test", "text/plain; charset=utf-8", "False"),
        ("aml-json-str", 555, b'"test"', "application/json", "True"),
        ("aml-bytes", 200, b"\x00\x01\xff", "application/octet-stream", "False"),
        ("aml-dict", 201, b'{"a":1}', "application/json", "False"),
        ("aml-run-failed", 200, b"soft", "text/plain; charset=utf-8", "True"),
        ("werkzeug", 202, b"wz", "text/plain; charset=utf-8", "False"),
        ("tuple-status", 201, b"made", "text/plain; charset=utf-8", "False"),
        ("tuple-headers", 200, b'{"h":1}', "application/json", "False"),
        ("tuple-full", 206, b"raw", "application/octet-stream", "False"),
        ("tuple-response", 299, b"r", "text/plain; charset=utf-8", "False"),
        ("tuple-list", 207, b"[1,2]", "application/json", "False"),
        ("not-flask-tuple", 200, b"[1,2,3]", "application/json", "False"),
    ],
)
def test_rawhttp_response_kinds_set_status_body_and_content_type(client_for, kind, status, body, content_type, failed):
    response = client_for("azure_rawhttp_responses.py").post(f"/score?kind={kind}", content=b"")
    assert response.status_code == status, response.text
    assert response.content == body
    assert response.headers["content-type"] == content_type
    assert response.headers["x-ms-run-function-failed"] == failed
    assert response.headers.get_list("x-ms-run-function-failed") == [failed]


def _headers(response: httpx.Response, name: str) -> list[str]:
    return [value for key, value in response.headers.multi_items() if key == name]


def test_aml_response_comma_separated_header_values_become_repeated_headers(client_for):
    response = client_for("azure_rawhttp_responses.py").post("/score?kind=aml-commas", content=b"")
    assert _headers(response, "x-multi") == ["a", "b"]
    assert _headers(response, "content-type") == ["text/csv"]  # the script's replaces the default


def test_aml_response_takes_its_headers_as_headers_too(client_for):
    response = client_for("azure_rawhttp_responses.py").post("/score?kind=aml-headers-kw", content=b"")
    assert response.headers["x-kw"] == "yes" and response.text == "kw"


def test_werkzeug_response_keeps_repeated_headers(client_for):
    response = client_for("azure_rawhttp_responses.py").post("/score?kind=werkzeug", content=b"")
    assert _headers(response, "x-rep") == ["1", "2"]


def test_flask_tuple_headers_as_pairs_repeat_and_replace_the_bodys(client_for):
    client = client_for("azure_rawhttp_responses.py")
    assert _headers(client.post("/score?kind=tuple-full", content=b""), "x-t") == ["2", "3"]
    assert client.post("/score?kind=tuple-headers", content=b"").headers["x-t"] == "1"
    assert client.post("/score?kind=tuple-response", content=b"").headers["x-r"] == "r"


def test_flask_response_is_answered_as_it_is(client_for):
    pytest.importorskip("flask")
    response = client_for("azure_rawhttp_responses.py").post("/score?kind=flask", content=b"")
    assert response.status_code == 203
    assert response.json() == {"f": 1}
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("kind, expected", [("aml-stream", b"part-0;part-1;part-2;"), ("tuple-stream", b"g0;g1;g2;")])
def test_rawhttp_generator_bodies_are_streamed(client_for, kind, expected):
    with client_for("azure_rawhttp_responses.py").stream("POST", f"/score?kind={kind}", content=b"") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        assert b"".join(response.iter_bytes()) == expected


def test_flask_tuple_with_a_status_http_cannot_carry_is_a_500_naming_it(client_for):
    response = client_for("azure_rawhttp_responses.py").post("/score?kind=bad-tuple-status", content=b"")
    assert response.status_code == 500
    assert "status 42" in response.json()["message"]
    assert response.headers["x-ms-run-function-failed"] == "True"


def test_a_tuple_from_a_run_that_is_not_rawhttp_stays_a_json_array():
    from mlscore.scoring.pipeline import to_response

    response = to_response(("made", 201))
    assert (response.status, response.body) == (200, b'["made",201]')


def test_werkzeug_abort_becomes_its_status_with_a_json_message(client_for):
    client = client_for("azure_rawhttp_responses.py")
    response = client.post("/score?kind=abort-404", content=b"")
    assert response.status_code == 404
    assert "not found" in response.json()["message"]
    assert response.headers["x-ms-run-function-failed"] == "False"
    response = client.post("/score?kind=abort-418", content=b"")
    assert (response.status_code, response.json()) == (418, {"message": "short and stout"})


def test_werkzeug_http_exception_keeps_its_headers(client_for):
    response = client_for("azure_rawhttp_responses.py").post("/score?kind=abort-405", content=b"")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.headers["content-type"] == "application/json"


# --- import names and werkzeug's cost --------------------------------------------------------

def test_azure_inference_server_import_names_are_the_contrib_ones(seen):
    assert seen("get")["same_class"] is True


def test_installed_azureml_inference_server_http_package_wins_over_the_alias(tmp_path):
    package = tmp_path / "azureml_inference_server_http" / "api"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "aml_request.py").write_text("REAL = True\n")
    code = textwrap.dedent("""
        from mlscore.scoring import compat
        compat.install()
        from azureml_inference_server_http.api import aml_request
        print(getattr(aml_request, "REAL", False))
    """)
    # cwd is first on `python -c`'s path: the package there is "installed".
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.stdout.strip() == "True", result.stderr


_WERKZEUG_PROBE = textwrap.dedent("""
    import sys
    from starlette.testclient import TestClient
    from mlscore.server.app import create_app
    from mlscore.server.runner import build_state
    from mlscore.server.settings import Settings

    settings = Settings.build({"entry_script": sys.argv[1], "executor": "threads"}, environ={})
    with TestClient(create_app(build_state(settings))) as client:
        response = client.post("/score", content=sys.argv[2], headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
    print("werkzeug" in sys.modules)
""")
_NESTED = ('{"inputs": {"matrix": [[1, 2], [3, 4]], "table": [{"name": "a", "score": 0.5}]}, "label": "x"}')


@pytest.mark.parametrize("script, body, imported", [
    ("plain_echo.py", "{}", False), ("schema_nested.py", _NESTED, False), ("azure_rawhttp_request.py", "{}", True)])
def test_only_rawhttp_scripts_import_werkzeug(tmp_path, script, body, imported):
    """A plain or a schema script pays nothing for the raw-HTTP request: werkzeug is never imported,
    by the server or the pipeline (the raw-HTTP script is the probe's control)."""
    probe = tmp_path / "probe.py"
    probe.write_text(_WERKZEUG_PROBE)
    result = subprocess.run([sys.executable, str(probe), str(SCRIPTS / script), body], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(imported)


# --- the worker frame carries the client ------------------------------------------------------

def test_worker_frame_carries_the_client_and_a_path_with_a_nul():
    front, back = socket.socketpair()
    with front, back:
        request = RawRequest("POST", "/score/a\0b", b"q=1", [(b"host", b"h")], b"body", b"id-1", "10.1.2.3")
        front.sendall(request_frame(request, 7))
        reader = RequestReader(back)
        reader.read(block=True)
        assert reader.pending[0][2] == request


# --- input_schema naming a parameter run() does not take -------------------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_schema_naming_a_parameter_run_lacks_starts_warns_once_and_answers_500(client_for):
    records = _Records()
    logger = logging.getLogger("mlscore")
    logger.addHandler(records)
    try:
        client = client_for("azure_schema_mismatch.py")
        assert client.get("/health/ready").status_code == 200
        answers = [client.post("/score", json={"x": [[1.0, 2.0]]}), client.post("/score", json={"data": [[1.0, 2.0]]}),
                   client.get("/score?x=1")]
    finally:
        logger.removeHandler(records)
    for response in answers:
        assert response.status_code == 500
        message = response.json()["message"]
        assert "input_schema names parameter(s) ['x'] that run() does not take" in message
        assert response.headers["x-ms-run-function-failed"] == "True"
    warnings = [message for message in records.messages if "does not take" in message]
    assert len(warnings) == 1 and "['x']" in warnings[0]


# --- through the real server and its worker processes ------------------------------------------

def test_rawhttp_through_worker_processes_sees_the_client_and_a_multipart_upload(tmp_path):
    server = start_server(tmp_path, "--entry-script", str(SCRIPTS / "azure_rawhttp_request.py"))
    try:
        response = httpx.post(server.url + "/score?tag=1", files={"image": ("cat.png", IMAGE, "image/png")},
                              data={"caption": "a cat"}, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["remote_addr"] == "127.0.0.1"
        assert answer["files"] == {"image": {"filename": "cat.png", "content_type": "image/png",
                                             "size": len(IMAGE), "sha256": SHA}}
        assert answer["form"] == {"caption": ["a cat"]} and answer["args"] == {"tag": ["1"]}
        assert answer["url"] == server.url + "/score?tag=1"
        # A GET takes the ASGI route rather than the server's direct path for POSTs: the same client.
        response = httpx.get(server.url + "/score?x=1", timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["remote_addr"] == "127.0.0.1"
    finally:
        server.stop()

