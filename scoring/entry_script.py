"""Loading a user's entry script from its file and running its `init()`.

Every way a script can be unusable (missing file, syntax error, no `run`, a bad `run` signature,
an `init()` that raises) becomes one `EntryScriptError` naming the script and the cause, with the
traceback of the user's own code when the cause is in it.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from mlscore.scoring import compat

MODULE_NAME = "_mlscore_entry_script"


class EntryScriptError(Exception):
    """The entry script cannot serve; `str()` is the one line that says which script and why."""

    def __init__(self, script: Path | str, cause: str, user_traceback: str = "") -> None:
        super().__init__(f"entry script {script}: {cause}")
        self.script = script
        self.cause = cause
        self._user_traceback = user_traceback  # given when the error comes from another process

    @property
    def user_traceback(self) -> str:
        """The traceback of the user's code that caused this, without mlscore's frames; "" when the
        cause is not in their code (a missing file, no run(), a device that is not there)."""
        if self._user_traceback or self.__cause__ is None:
            return self._user_traceback
        return format_user_traceback(self.__cause__)


@dataclass(slots=True)
class EntryScript:
    path: Path
    module: ModuleType
    run: Callable[..., Any]
    init: Callable[[], Any] | None

    def call_init(self) -> None:
        """Run `init()` once; any exception becomes an EntryScriptError (the original is chained)."""
        if self.init is None:
            return
        try:
            self.init()
        except BaseException as error:  # SystemExit from a script must not end the server silently
            raise EntryScriptError(self.path, f"init() raised {_describe(error)}") from error


def resolve_script_path(entry_script: str | os.PathLike[str], app_root: str | os.PathLike[str] | None) -> Path:
    """An absolute path: a relative entry script is taken against the app root (default: cwd)."""
    path = Path(entry_script).expanduser()
    if path.is_absolute():
        return path
    return (Path(app_root).expanduser() if app_root else Path.cwd()).resolve() / path


def load_entry_script(path: Path, source_directory: Path | None = None) -> EntryScript:
    """Import the script from its file under a private module name, after putting its folder
    (and the source directory) on `sys.path` so its own imports resolve."""
    if not path.is_file():
        raise EntryScriptError(path, "file not found" if not path.exists() else "not a file")
    compat.install()
    for folder in (source_directory, path.parent):
        if folder is not None and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module = _import_from_file(path)
    run = getattr(module, "run", None)
    if run is None:
        raise EntryScriptError(path, "defines no run() function")
    if not callable(run):
        raise EntryScriptError(path, f"run is a {type(run).__name__}, not a function")
    init = getattr(module, "init", None)
    if init is not None and not callable(init):
        raise EntryScriptError(path, f"init is a {type(init).__name__}, not a function")
    return EntryScript(path=path, module=module, run=run, init=init)


def innermost(func: Callable[..., Any]) -> Callable[..., Any]:
    """The user's own function beneath decorators (inference-schema's wrapt wrappers included)."""
    seen = 0
    while hasattr(func, "__wrapped__") and seen < 100:
        func = func.__wrapped__
        seen += 1
    return func


def run_parameters(path: Path, run: Callable[..., Any]) -> list[inspect.Parameter]:
    """run()'s parameters, checked against what the server can pass: named ones only."""
    try:
        parameters = list(inspect.signature(innermost(run)).parameters.values())
    except (TypeError, ValueError) as error:
        raise EntryScriptError(path, f"the signature of run() cannot be read: {error}") from error
    for parameter in parameters:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise EntryScriptError(path, f"run() may not take *args or **kwargs (found {parameter})")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise EntryScriptError(path, f"run() may not take positional-only parameters (found {parameter.name})")
    if not [p for p in parameters if p.name != "request_headers"]:
        raise EntryScriptError(path, "run() must take at least one parameter for the request data")
    return parameters


def _import_from_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise EntryScriptError(path, "cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    _forget_schemas(MODULE_NAME)
    # Registered before executing, so pickling and dataclasses inside the script see their module.
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        sys.modules.pop(MODULE_NAME, None)
        where = f" (line {error.lineno})" if error.lineno else ""
        raise EntryScriptError(path, f"{type(error).__name__}: {error.msg}{where}") from error
    except BaseException as error:
        sys.modules.pop(MODULE_NAME, None)
        raise EntryScriptError(path, f"importing it raised {_describe(error)}") from error
    return module


def format_user_traceback(error: BaseException) -> str:
    """`error`'s traceback as Python prints it, less the frames of mlscore's modules and of the import
    machinery: what is left is the user's code and the libraries it called. Frames are told apart
    by module, not by folder: in a checkout the scripts of tests/ and examples/ sit inside the
    package's folder. "" when nothing of theirs is left (every frame was ours)."""
    ours = {os.path.realpath(module.__file__) for name, module in list(sys.modules.items())
            if (name == "mlscore" or name.startswith("mlscore.")) and getattr(module, "__file__", None)}
    report = traceback.TracebackException.from_exception(error)
    kept = 0
    for part in _chain(report):
        frames = [frame for frame in part.stack
                  if not frame.filename.startswith("<frozen ") and os.path.realpath(frame.filename) not in ours]
        part.stack = traceback.StackSummary.from_list(frames)
        kept += len(frames)
    if not kept and not isinstance(error, SyntaxError):  # a SyntaxError names the user's line itself
        return ""
    return "".join(report.format()).rstrip("\n")


def _chain(report: traceback.TracebackException) -> list[traceback.TracebackException]:
    """The report and the exceptions it was raised from or while handling."""
    parts: dict[int, traceback.TracebackException] = {}
    pending = [report]
    while pending:
        part = pending.pop()
        if id(part) not in parts:
            parts[id(part)] = part
            pending.extend(linked for linked in (part.__cause__, part.__context__) if linked is not None)
    return list(parts.values())


def _forget_schemas(module_name: str) -> None:
    """Drop inference-schema's registrations from an earlier script loaded under the same module
    name: the library keys them by module and function name and refuses a second output schema."""
    from inference_schema import schema_util

    for registry in (schema_util.__functions_schema__, schema_util.__versions__):
        for key in [key for key in registry if key.startswith(module_name + ".")]:
            del registry[key]


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
