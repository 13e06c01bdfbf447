"""Runs the tests in a child pytest process, so that a test that kills the interpreter (a segfault
or an abort in native code: an OpenCL compiler, a driver) is that test's failure, with what the
process printed from the test's start, and the run goes on in a new child from the next test; the
summary comes at the end as usual. The child reports each test to this process as it runs, and this
process's terminal, cache and exit status work from those reports as if it had run the tests.

The child dies with this process (PR_SET_PDEATHSIG), and the servers tests start die with the
child (conftest.dies_with_tests): a killed run leaves nothing behind.

In the child, output is captured at the sys level (unless the run asks for another capture method)
so that what native code writes to the file descriptors, a compiler's last words above all, reaches
the child's log, which a crash report quotes. Off with `-p no:crash_guard`; not used with
--collect-only, --pdb or --trace, which need the tests in this process.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

_CHILD = "--crash-guard-child"  # the child reports into this file descriptor
_ITEMS = "--crash-guard-items"  # a file naming the tests the child runs, one node id a line
_LOG_LINES = 200  # how much of a crashed child's output a failure shows, at most


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("crash_guard", "running the tests in a child process that may crash")
    group.addoption(_CHILD, type=int, default=None, help="(internal) the file descriptor a child reports into")
    group.addoption(_ITEMS, default=None, help="(internal) the file listing the node ids a child runs")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption(_CHILD) is not None:
        _die_with_parent()
        config.pluginmanager.register(ChildReporter(config), "crash_guard_child")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = config.getoption(_ITEMS)
    if listed is None:
        return
    order = {nodeid: index for index, nodeid in enumerate(Path(listed).read_text().splitlines())}
    kept = sorted((item for item in items if item.nodeid in order), key=lambda item: order[item.nodeid])
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in order])
    items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    config = session.config
    if config.getoption(_CHILD) is not None or not session.items or config.option.collectonly \
            or config.getoption("usepdb", False) or config.getoption("trace", False):
        return None  # the default loop, in this process
    if session.testsfailed and not config.option.continue_on_collection_errors:  # as the default loop does
        raise session.Interrupted(f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                                  "during collection")
    Supervisor(session).run()
    return True


class ChildReporter:
    """In the child: each test's start, reports and end, as JSON lines on the parent's pipe."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._pipe = os.fdopen(config.getoption(_CHILD), "w", buffering=1)

    def _send(self, message: dict[str, Any]) -> None:
        self._pipe.write(json.dumps(message, default=str) + "\n")

    def pytest_runtest_logstart(self, nodeid: str, location: tuple) -> None:
        self._send({"start": nodeid, "location": location, "log_at": _log_position()})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._send({"report": self._config.hook.pytest_report_to_serializable(config=self._config, report=report)})

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple) -> None:
        self._send({"finish": nodeid, "location": location})

    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage, when: str, nodeid: str,
                                location: tuple | None) -> None:
        category = warning_message.category
        self._send({"warning": {"message": str(warning_message.message), "category": category.__name__,
                                "filename": warning_message.filename, "lineno": warning_message.lineno},
                    "when": when, "nodeid": nodeid, "location": location})


class Supervisor:
    """In the parent: runs children until every test has run, replaying what they report."""

    def __init__(self, session: pytest.Session) -> None:
        self.session = session
        self.config = session.config
        self.hook = session.config.hook

    def run(self) -> None:
        pending = [item.nodeid for item in self.session.items]
        with tempfile.TemporaryDirectory(prefix="crash-guard-") as scratch:
            while pending:
                done = self._child(pending, Path(scratch))
                pending = pending[done:]
                if self.session.shouldfail or self.session.shouldstop:
                    break

    def _child(self, nodeids: list[str], scratch: Path) -> int:
        """Run `nodeids` in one child; how many of them it got through (a crashed one included)."""
        listed, log_path = scratch / "items.txt", scratch / f"child-{time.monotonic_ns()}.log"
        listed.write_text("\n".join(nodeids))
        read_end, write_end = os.pipe()
        args = [*self.config.invocation_params.args, f"{_CHILD}={write_end}", f"{_ITEMS}={listed}"]
        if self.config.getoption("capture") == "fd" and not _asks_for_capture(self.config.invocation_params.args):
            args.append("--capture=sys")
        quiet = self.config.getoption("capture") == "no"
        with open(log_path, "wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=self.config.invocation_params.dir,
                                     stdin=subprocess.DEVNULL, stdout=None if quiet else log,
                                     stderr=None if quiet else subprocess.STDOUT, pass_fds=[write_end])
        os.close(write_end)
        running: dict[str, Any] | None = None
        finished = 0
        try:
            with os.fdopen(read_end) as pipe:
                for line in pipe:
                    message = json.loads(line)
                    if "start" in message:
                        running = {**message, "since": time.monotonic()}
                        self.hook.pytest_runtest_logstart(nodeid=message["start"], location=tuple(message["location"]))
                    elif "report" in message:
                        self.hook.pytest_runtest_logreport(report=self._report(message["report"]))
                    elif "warning" in message:
                        self._warn(message)
                    else:
                        running = None
                        finished += 1
                        self.hook.pytest_runtest_logfinish(nodeid=message["finish"],
                                                           location=tuple(message["location"]))
                        if self.session.shouldfail or self.session.shouldstop:
                            child.kill()  # -x or --maxfail: the rest is not to run
                            break
        except BaseException:  # Ctrl+C: the child stops with this process
            child.kill()
            child.wait()
            raise
        status = child.wait()
        if running is not None:
            self._crashed(running, status, log_path)
            return finished + 1
        if finished < len(nodeids) and not (self.session.shouldfail or self.session.shouldstop):
            self._died_between_tests(status, log_path)
            return len(nodeids)
        return finished

    def _report(self, data: dict[str, Any]) -> pytest.TestReport:
        """A report the child serialized: JSON gave back lists where pytest keeps tuples (a skip's
        (path, line, reason), a location)."""
        for key in ("longrepr", "location"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return self.hook.pytest_report_from_serializable(config=self.config, data=data)

    def _warn(self, message: dict[str, Any]) -> None:
        """A warning the child recorded, for this process's warnings summary."""
        fields = message["warning"]
        category = getattr(builtins, fields["category"], None)
        if not (isinstance(category, type) and issubclass(category, Warning)):
            category = type(fields["category"], (Warning,), {})
        record = warnings.WarningMessage(fields["message"], category, fields["filename"], fields["lineno"])
        location = tuple(message["location"]) if message["location"] else None
        self.hook.pytest_warning_recorded.call_historic(kwargs={
            "warning_message": record, "when": message["when"], "nodeid": message["nodeid"], "location": location})

    def _crashed(self, running: dict[str, Any], status: int, log_path: Path) -> None:
        nodeid, location = running["start"], tuple(running["location"])
        with open(log_path, "rb") as log:
            log.seek(running["log_at"] or 0)
            printed = log.read().decode(errors="replace").splitlines()[-_LOG_LINES:]
        longrepr = (f"the test process {_how_it_ended(status)} while running this test; what it printed from the "
                    f"test's start:\n" + "\n".join(printed))
        report = pytest.TestReport(nodeid, location, {}, "failed", longrepr, "call",
                                   duration=time.monotonic() - running["since"])
        self.hook.pytest_runtest_logreport(report=report)
        self.hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    def _died_between_tests(self, status: int, log_path: Path) -> None:
        """A child that ended before its tests did, outside any test (a session fixture's teardown,
        an internal error): the run fails, with the end of what it printed."""
        tail = log_path.read_text(errors="replace").splitlines()[-_LOG_LINES:]
        self.session.testsfailed += 1
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"crash_guard: the test process {_how_it_ended(status)} outside a test:\n"
                                + "\n".join(tail), red=True)


def _log_position() -> int | None:
    """Where the child's log (its stdout and stderr, one file) will take the next output: a crash
    report quotes the log from there. None when the output is not a file (a run with -s)."""
    for stream in (sys.__stdout__, sys.__stderr__):
        stream.flush()
    try:
        return os.lseek(1, 0, os.SEEK_CUR)
    except OSError:
        return None


def _asks_for_capture(args: tuple[str, ...]) -> bool:
    return any(arg.startswith("--capture") or arg == "-s" for arg in args)


def _how_it_ended(status: int) -> str:
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"was killed by signal {-status}"


def _die_with_parent() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
