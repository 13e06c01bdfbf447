"""Start-up mistakes are one line a person can act on: it names what is wrong and where, the
user's own traceback follows once when the cause is in their code, and mlscore's own frames stay
out of the output at the default log level."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from conftest import EXAMPLES, ROOT, SCRIPTS, run_server_to_exit, serve_command
from mlscore.accelerators import onnx_runtime
from mlscore.server.cli import main
from test_tls import make_certificate

FRAME = re.compile(r'File "([^"]+)"')
USER_RAISE = 'raise ValueError("model file is corrupt")'


def our_frames(output: str) -> list[str]:
    """Traceback lines that point into mlscore's own code (not the scripts of tests/ and examples/)."""
    own = [str(ROOT / folder) for folder in ("server", "scoring", "accelerators", "deploy", "loadtest")]
    return [path for path in FRAME.findall(output) if path.startswith(tuple(own))]


def first_error(output: str) -> str:
    """The message of the first ERROR line of a text log."""
    line = next(line for line in output.splitlines() if " ERROR " in line)
    return line.split(": ", 1)[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_missing_script_is_one_line_naming_the_file(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", "missing.py")
    assert result.returncode == 3
    assert first_error(result.stderr) == f"cannot start: entry script {tmp_path.resolve()}/missing.py: file not found"
    assert "Traceback" not in result.stderr and our_frames(result.stderr) == []


@pytest.mark.parametrize("script, cause, user_line", [
    ("broken_syntax.py", "SyntaxError: expected ':' (line 4)", "def run(data)"),
    ("import_error.py", "importing it raised ModuleNotFoundError: No module named 'module_that_does_not_exist'",
     "import module_that_does_not_exist"),
])
def test_unloadable_script_names_it_and_shows_only_its_own_frames(tmp_path, script, cause, user_line):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / script))
    assert result.returncode == 3
    assert first_error(result.stderr) == f"cannot start: entry script {SCRIPTS / script}: {cause}"
    assert f'File "{SCRIPTS / script}", line' in result.stderr and user_line in result.stderr
    assert our_frames(result.stderr) == []


@pytest.mark.parametrize("executor", ["processes", "threads"])
def test_init_that_raises_shows_the_users_traceback_once_and_none_of_ours(tmp_path, executor):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "init_raises.py"), "--executor", executor)
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr  # the worker does not say it too
    assert first_error(result.stderr) == (f"cannot start: entry script {SCRIPTS / 'init_raises.py'}: "
                                          "init() raised ValueError: model file is corrupt")
    assert result.stderr.count("Traceback") == 1 and result.stderr.count(USER_RAISE) == 1, result.stderr
    assert our_frames(result.stderr) == []


def test_init_failure_shows_mlscores_frames_at_debug_level(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "init_raises.py"), "--log-level", "debug")
    assert result.returncode == 3
    assert f"{ROOT / 'server' / 'supervisor.py'}" in our_frames(result.stderr)


def test_missing_device_names_the_model_not_an_entry_script(tmp_path):
    if onnx_runtime.gpu_works():
        pytest.skip("this machine has a working GPU")
    model = EXAMPLES / "digits_onnx" / "models" / "digits_mlp.onnx"
    result = run_server_to_exit(tmp_path, "--model", str(model), "--device", "gpu")
    assert result.returncode == 3
    assert first_error(result.stderr).startswith(f"cannot start: model {model}: device 'gpu' is not available: ")
    assert "entry script" not in result.stderr and "Traceback" not in result.stderr


def test_misspelt_serve_flag_prints_serves_usage_and_the_flag_meant(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mlscore", "serve", "--entry-scirpt", "x.py"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: mlscore serve ")
    assert result.stderr.strip().splitlines()[-1] == (
        "mlscore serve: error: unrecognized arguments: --entry-scirpt x.py (did you mean --entry-script?)")


def test_busy_port_names_the_address(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([*serve_command("--entry-script", str(SCRIPTS / "plain_echo.py")), "--port", str(port)],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert first_error(result.stderr) == f"cannot start: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in result.stderr


def test_certificate_without_its_key_says_the_key_is_missing(tmp_path):
    cert, _ = make_certificate(tmp_path)
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"), "--ssl-cert", str(cert))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"mlscore: error: --ssl-cert: {cert} holds a certificate but no private key: "
                                     "give the key with --ssl-key (or MLSCORE_SSL_KEY), or append it to that file")


def test_loadtest_against_a_closed_port_says_nothing_listens(capsys):
    port = free_port()
    assert main(["loadtest", f"http://127.0.0.1:{port}/score", "--duration", "2s"]) == 3
    assert capsys.readouterr().err.strip() == (
        f"mlscore loadtest: error: http://127.0.0.1:{port}/score: nothing listens on 127.0.0.1:{port} (connection "
        "refused); is the service running, on that port?")


def test_settings_line_lists_only_what_was_given_and_where_from(tmp_path):
    result = run_server_to_exit(tmp_path, "--entry-script", "missing.py", env={"MLSCORE_EXECUTOR": "threads"})
    [line] = [line for line in result.stderr.splitlines() if "mlscore.server: settings: " in line]
    assert line.endswith("settings: entry_script=missing.py, port=0, executor=threads (MLSCORE_EXECUTOR)")
    debug = run_server_to_exit(tmp_path, "--entry-script", "missing.py", "--log-level", "debug")
    assert "every setting: {'entry_script': 'missing.py', 'model': None," in debug.stderr
