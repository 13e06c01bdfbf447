"""server/protocol.py builds on uvicorn's private names: held by a test that says what changed, and a
server that falls back to uvicorn's plain protocol rather than crash when they are gone."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import httpx
import uvicorn

from mlscore.server import protocol
from mlscore.server.settings import Settings

from conftest import SCRIPTS, start_server


def test_this_uvicorn_has_every_internal_the_protocol_builds_on():
    missing = protocol.missing_internals()
    assert missing == (), (
        f"uvicorn {uvicorn.__version__} changed what server/protocol.py builds on: {', '.join(missing)}. "
        "Adapt GuardedHttpToolsProtocol to it, or keep pyproject.toml's pin below this release.")


def test_without_those_internals_the_protocol_is_uvicorns_plain_one_bounded_by_limit_concurrency(monkeypatch, caplog):
    monkeypatch.setattr(protocol, "missing_internals", lambda: ("HttpToolsProtocol._start_asgi_task",))
    with caplog.at_level(logging.WARNING, logger="mlscore.server"):
        http = protocol.protocol_class(Settings.build({"entry_script": "x.py"}, environ={}), 100, ())
    assert http == "httptools"
    assert protocol.fallback_limits(http, 100) == {"limit_concurrency": 100}
    assert "lacks what mlscore's HTTP protocol builds on (HttpToolsProtocol._start_asgi_task)" in caplog.text


def test_a_server_on_a_uvicorn_without_those_internals_scores_through_asgi(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent("""
        import sys
        from mlscore.server import protocol
        protocol.missing_internals = lambda: ("simulated",)  # as on a uvicorn that renamed them
        if __name__ == "__main__":  # not again in the scoring workers, which import this module
            from mlscore.server.cli import main
            sys.exit(main(sys.argv[1:]))
    """))
    server = start_server(tmp_path, command=[sys.executable, str(launcher), "serve", "--port", "0",
                                             "--entry-script", str(SCRIPTS / "plain_echo.py")])
    try:
        answer = httpx.post(server.url + "/score", content=b"hello", timeout=30)
        assert answer.status_code == 200 and answer.headers["x-ms-run-function-failed"] == "False"
        assert httpx.get(server.url + "/health/ready", timeout=30).status_code == 200
        too_large = httpx.post(server.url + "/score", content=b"x" * (101 << 20), timeout=60)
        assert too_large.status_code == 413  # the body limit holds on the ASGI path
        assert "serving with uvicorn's plain httptools protocol" in server.log()
    finally:
        assert server.stop() == 0


def test_a_uvicorn_without_the_request_count_is_named(monkeypatch):
    """on_response_complete is ours now (the lazy keep-alive timer) and counts requests as uvicorn's does."""

    class Bare:
        pass

    protocol.missing_internals.cache_clear()
    monkeypatch.setattr(protocol, "ServerState", Bare)
    try:
        assert "ServerState().total_requests" in protocol.missing_internals()
    finally:
        monkeypatch.undo()
        protocol.missing_internals.cache_clear()
    assert protocol.missing_internals() == ()
