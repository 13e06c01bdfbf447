"""tests/crash_guard.py: a test that kills the interpreter is that test's failure and the run goes
on; a run killed from outside leaves no test process, server or helper behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import process_gone

TESTS = Path(__file__).resolve().parent

CONFTEST = """
import sys
sys.path.insert(0, {tests!r})
pytest_plugins = ("crash_guard",)
"""

CRASHING = """
import os, sys, warnings

def test_before():
    warnings.warn("deprecated in the child")

def test_native_code_aborts():
    os.write(2, b"LLVM ERROR: Do not know how to scalarize this operator's operand!\\n")
    os.abort()

def test_after():
    pass

def test_fails_as_usual():
    print("said before failing")
    assert 1 == 2

def test_skips():
    import pytest
    pytest.skip("not here")
"""


def run_pytest(folder: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True, timeout=timeout)


def suite(tmp_path: Path, tests: str) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST.format(tests=str(TESTS)))
    (tmp_path / "test_suite.py").write_text(tests)
    return tmp_path


def test_a_crash_fails_that_test_with_its_output_and_the_rest_still_run(tmp_path: Path) -> None:
    result = run_pytest(suite(tmp_path, CRASHING), "-q", "-rA")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "2 failed, 2 passed, 1 skipped" in out.splitlines()[-1]
    assert "SKIPPED [1] test_suite.py:20: not here" in out
    assert "PASSED test_suite.py::test_before" in out and "PASSED test_suite.py::test_after" in out
    assert "the test process was killed by SIGABRT while running this test" in out
    assert "LLVM ERROR: Do not know how to scalarize this operator's operand!" in out
    assert "Fatal Python error: Aborted" in out  # faulthandler's traceback, naming the test's line
    assert "said before failing" in out and "assert 1 == 2" in out  # an ordinary failure reads as ever
    assert "test_suite.py:5: UserWarning: deprecated in the child" in out  # the warnings summary too


def test_exit_first_stops_at_the_crash(tmp_path: Path) -> None:
    result = run_pytest(suite(tmp_path, CRASHING), "-q", "-x")
    assert result.returncode == 1
    assert "1 failed, 1 passed" in result.stdout.splitlines()[-1]


def test_plugin_can_be_turned_off(tmp_path: Path) -> None:
    result = run_pytest(suite(tmp_path, CRASHING), "-q", "-p", "no:crash_guard", "-k", "not aborts")
    assert "1 failed, 2 passed, 1 skipped, 1 deselected" in result.stdout.splitlines()[-1]


def test_killing_the_run_kills_its_test_process_and_what_the_tests_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    suite(tmp_path, f"""
import os, subprocess, sys, time
from conftest_helpers import dies_with_tests

def test_starts_a_server_and_waits():
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True,
                              preexec_fn=dies_with_tests())
    open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{server.pid}}")
    time.sleep(300)
""")
    (tmp_path / "conftest_helpers.py").write_text(  # tests/conftest.py's helper, under a name of its own here
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('mlscore_conftest', {str(TESTS / 'conftest.py')!r})\n"
        "module = sys.modules['mlscore_conftest'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "dies_with_tests = module.dies_with_tests\n")
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not pids.exists() or len(pids.read_text().split()) < 2:
        assert time.monotonic() < deadline and run.poll() is None, "the test never started"
        time.sleep(0.05)
    test_process, server = map(int, pids.read_text().split())
    assert test_process != run.pid  # the test ran in a child of the run
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    for pid in (test_process, server):
        assert process_gone(pid), f"process {pid} outlived the killed run"
