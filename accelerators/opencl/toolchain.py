"""Where the program is built and checked before this process touches it: in a child process with a
time limit (verify.py), so that an OpenCL compiler that crashes or hangs (pocl's LLVM, a vendor's
FPGA toolchain) costs an AcceleratorError naming the device, the signal or the timeout and the
compiler's last lines, never the server. The verified binary is cached per device, driver, kernel
source and checking code, and loaded from there.

The cache is a folder, MLSCORE_OPENCL_CACHE, by default $XDG_CACHE_HOME/mlscore/opencl (else
~/.cache/mlscore/opencl, else a folder of this user's in the temporary directory when that cannot be
written). `<key>.bin` holds a verified binary; `<key>.failed` remembers a build that crashed (delete
it to try again); `<key>.lock` makes the processes that start together (a server's workers) build
once. A child's time limit is MLSCORE_OPENCL_BUILD_TIMEOUT seconds (default 300).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mlscore.accelerators.base import AcceleratorError
from mlscore.accelerators.opencl.device import all_devices, device_type
from mlscore.accelerators.opencl.kernels import Tuning, kernel_source

logger = logging.getLogger("mlscore.accelerators")

CACHE_ENV = "MLSCORE_OPENCL_CACHE"
TIMEOUT_ENV = "MLSCORE_OPENCL_BUILD_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
_RESULT_ERROR = 2  # verify.RESULT_ERROR, without importing numpy and the checks here
_LAST_LINES = 4  # of the child's output, in an error: the compiler's last words, what it was checking
# The code whose behaviour a verified binary vouches for: a change to any of them verifies anew.
_CHECKED_CODE = ("kernels.py", "ops.py", "plan.py", "session.py", "verify.py")
# Signals that say the process was stopped from outside rather than crashed: not remembered.
_STOPPED = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT}


class CompilerFailed(AcceleratorError):
    """The device's compiler crashed or hung building (or loading) the program, in the child that
    ran it. `lasting`: it would do so again (a crash, not a time limit or a kill from outside), so
    the cache remembers it."""

    def __init__(self, message: str, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True)
class Origin:
    """What to verify: our source compiled with `tuning`, or a prebuilt `binary` (`name`: its path)."""

    tuning: Tuning | None = None
    binary: bytes = b""
    name: str = ""

    def digest(self) -> str:
        if self.tuning is not None:
            return "source " + hashlib.sha256(kernel_source(self.tuning).encode()).hexdigest()
        return "binary " + hashlib.sha256(self.binary).hexdigest()

    def doing(self) -> str:
        return "building mlscore's kernels" if self.tuning is not None else f"loading opencl_binary {self.name}"


def verified_binary(device: Any, origin: Origin) -> bytes:
    """The binary of `origin` for `device` once a child process has built it and checked every
    kernel's answers at every work shape: from the cache, else verified now. Raises CompilerFailed
    when the child crashed or ran out of time, AcceleratorError for what it refused (a compiler
    error, a binary of other kernels, wrong answers)."""
    folder = cache_folder()
    key = cache_key(device, origin)
    entry, failure = folder / f"{key}.bin", folder / f"{key}.failed"
    with _locked(folder / f"{key}.lock"):
        if entry.exists():
            return entry.read_bytes()
        if failure.exists():
            message = json.loads(failure.read_text())["message"]
            raise CompilerFailed(f"{message} (remembered from an earlier attempt: delete {failure} to try again)")
        try:
            binary = _verify_in_child(device, origin, folder)
        except CompilerFailed as error:
            if error.lasting:
                _write_atomically(failure, json.dumps({"message": str(error)}).encode())
            raise
        _write_atomically(entry, binary)
    # The verified binary itself, given back as opencl_binary= (save_binary, build_binary), needs no second check.
    alias = folder / f"{cache_key(device, Origin(binary=binary))}.bin"
    if not alias.exists():
        _link_atomically(entry, alias)
    return binary


def verification_problem(device: Any, tuning: Tuning) -> str | None:
    """Why `device` cannot run mlscore's kernels built with `tuning` (verifying them if no one has
    yet), or None when it can."""
    try:
        verified_binary(device, Origin(tuning=tuning))
    except AcceleratorError as error:
        return str(error)
    except OSError as error:  # the cache folder: a verdict that cannot be kept is no verdict
        return f"cannot keep verified OpenCL programs: {error}"
    return None


def cache_folder() -> Path:
    """MLSCORE_OPENCL_CACHE, else the user's cache folder, else one in the temporary directory."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        folder = Path(configured)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for folder in (base / "mlscore" / "opencl", Path(tempfile.gettempdir()) / f"mlscore-opencl-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise AcceleratorError(f"no folder to keep verified OpenCL programs in: set {CACHE_ENV} to a writable one")


def cache_key(device: Any, origin: Origin) -> str:
    """What a verified binary depends on: the device and its driver, the CPU's instruction sets for
    CPU devices (pocl picks its kernel library by them), pocl's settings, our checking code, and
    the origin."""
    parts = [device.platform.name, device.platform.version, device.name, device.vendor, device.version,
             device.driver_version, device.opencl_c_version, _cpu_flags() if device_type(device) == "CPU" else "",
             *(f"{name}={value}" for name, value in sorted(os.environ.items())
               if name.startswith("POCL_") and name not in ("POCL_CACHE_DIR", "POCL_DEBUG")),
             *(_code_digest(name) for name in _CHECKED_CODE), origin.digest()]
    return hashlib.sha256("\n".join(part.strip() for part in parts).encode()).hexdigest()[:40]


def describe_device(device: Any) -> str:
    return (f"OpenCL device {device.name.strip()!r} ({device.platform.name.strip()}, "
            f"driver {device.driver_version.strip()})")


def _verify_in_child(device: Any, origin: Origin, folder: Path) -> bytes:
    timeout = _timeout()
    logger.info("%s for %s and checking them, in a child process (once per device, driver and source: the result "
                "is kept in %s)", origin.doing(), describe_device(device), folder)
    with tempfile.TemporaryDirectory(prefix="verify-", dir=folder) as scratch:
        work = Path(scratch)
        out, result, log = work / "program.bin", work / "result.json", work / "compiler.log"
        command = child_command(device, origin, work, out, result)
        # A pocl cache of the child's own: a crash half-way through leaves nothing that a later build reads back.
        env = {**os.environ, "POCL_CACHE_DIR": str(work / "pocl"), "PYOPENCL_NO_CACHE": "1"}
        with open(log, "wb") as stream:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
            try:
                status = child.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(child)
                raise CompilerFailed(f"{origin.doing()} for {describe_device(device)} did not finish within "
                                     f"{timeout:g} s ({TIMEOUT_ENV}); the compiler's last lines: "
                                     f"{_last_lines(log)}") from None
            except BaseException:  # this thread interrupted: the compiler goes too
                _kill_group(child)
                raise
        _kill_group(child)  # anything the compiler left running
        if status == 0:
            return out.read_bytes()
        if status == _RESULT_ERROR and result.exists():
            raise AcceleratorError(json.loads(result.read_text())["error"])
        raise CompilerFailed(f"the OpenCL compiler {_how_it_ended(status)} {origin.doing()} for "
                             f"{describe_device(device)}: {_last_lines(log)}",
                             lasting=status > 0 or -status not in _STOPPED)


def _how_it_ended(status: int) -> str:
    if status > 0:
        return f"exited with status {status}"
    try:
        return f"crashed ({signal.Signals(-status).name})"
    except ValueError:
        return f"was killed by signal {-status}"


def child_command(device: Any, origin: Origin, work: Path, out: Path, result: Path) -> list[str]:
    """The verifying child's command line (verify.py's main)."""
    index = next(index for index, found in enumerate(all_devices()) if found == device)
    command = [sys.executable, "-m", "mlscore.accelerators.opencl.verify", "--device", str(index),
               "--expect", f"{device.platform.name.strip()} {device.name.strip()}", "--parent", str(os.getpid()),
               "--out", str(out), "--result", str(result)]
    if origin.tuning is not None:
        return [*command, "--tuning", json.dumps(dataclasses.asdict(origin.tuning))]
    given = work / "given.bin"
    given.write_bytes(origin.binary)
    return [*command, "--binary", str(given), "--origin", origin.name]


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _last_lines(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-_LAST_LINES:])[-800:] or "(no output)"


def _timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise AcceleratorError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {value!r}")
    return seconds


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return ""


def _code_digest(name: str) -> str:
    return hashlib.sha256((Path(__file__).parent / name).read_bytes()).hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, path)


def _link_atomically(existing: Path, path: Path) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        os.link(existing, partial)
    except OSError:  # a file system without hard links
        partial.write_bytes(existing.read_bytes())
    os.replace(partial, path)
