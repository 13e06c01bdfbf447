"""The README is executable documentation: its command blocks run as written, in order, so they cannot
drift from what the code does.

The convention (README.md, Tests): a fenced block tagged `sh` is run by bash, one tagged `python` by the
`python` the README's own `. .venv/bin/activate` put on the PATH, all in one shell (`set -euo
pipefail`), in order, from the repository's root; a block right after `<!-- not run: why -->` is
skipped; blocks with other tags (`text`, `json`) are samples, never commands. Every fence names its
tag, so a new block has to choose.

The shell runs in a copy of the working tree (the tracked files and the untracked ones git does not
ignore, with the built example models copied and `.venv` linked, so nothing is installed: `make`
finds `.venv` up to date), after `make serve`'s set-up, with HOME, TMPDIR and MLSCORE_HOME in a
temporary folder. curl gets `--fail-with-body` from a `.curlrc` there, so an HTTP error fails its block
instead of being printed. Where unprivileged namespaces work, the shell gets its own network and PID
namespaces: the README's ports cannot collide with servers on this machine, and every process it
started (the detached host of a local service too) dies with it. Elsewhere those ports must be free
(else the test is skipped), and the shell's process group and any service host left are killed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, dies_with_tests

README = ROOT / "README.md"
RUNNABLE = ("sh", "python")
RUN_TIMEOUT = 480  # seconds for the whole README; it takes about a minute
FENCE = re.compile(r"^(?P<indent> *)```(?P<tag>[^`\s]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not run: (?P<why>.*?) -->\s*$")
MARK = "@@ README block "
PORT = re.compile(r"127\.0\.0\.1:(\d+)|--port[ =](\d+)|\"port\": (\d+)")
ISOLATED = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--kill-child", "--mount-proc"]


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    tag: str
    text: str
    not_run: str | None  # the reason given in `<!-- not run: … -->`, if any

    @property
    def runs(self) -> bool:
        return self.tag in RUNNABLE and self.not_run is None


def read_blocks(markdown: str) -> list[Block]:
    """The fenced blocks, in order (indented ones in list items too)."""
    lines, blocks, index = markdown.splitlines(), [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, start = len(opening["indent"]), index
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        assert index < len(lines), f"README.md:{start + 1}: the block is never closed"
        body = "\n".join(line[indent:] for line in lines[start + 1:index])
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        reason = NOT_RUN.match(before)
        blocks.append(Block(start + 1, opening["tag"], body, reason["why"] if reason else None))
        index += 1
    return blocks


def shell_script(blocks: list[Block], root: Path) -> str:
    """One bash script: each runnable block after a marker line naming its index."""
    parts = ["set -euo pipefail", f"cd '{root}'"]
    for index, block in enumerate(blocks):
        if not block.runs:
            continue
        parts.append(f"printf '\\n{MARK}%d\\n' {index}")
        parts.append(f"python - <<'README_PYTHON_EOF'\n{block.text}\nREADME_PYTHON_EOF"
                     if block.tag == "python" else block.text)
    parts.append(f"printf '\\n{MARK}done\\n'")
    return "\n".join(parts) + "\n"


def copy_working_tree(clone: Path) -> None:
    """The files a fresh clone would hold, as they are now, plus what `make serve` set up."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # not one deleted in the working tree
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name, follow_symlinks=False)  # mtimes kept: make compares them
    for models in ROOT.glob("examples/*/models"):
        shutil.copytree(models, clone / models.relative_to(ROOT), symlinks=True)
    (clone / ".venv").symlink_to(ROOT / ".venv")


def environment(home: Path) -> dict[str, str]:
    """This process's environment without the virtual environment or mlscore's settings: the README
    must activate `.venv` itself. HOME, TMPDIR and MLSCORE_HOME are temporary."""
    venv_bin = (ROOT / ".venv" / "bin").resolve()
    path = [entry for entry in os.environ.get("PATH", "").split(os.pathsep)
            if entry and Path(entry).resolve() != venv_bin]
    kept = {name: value for name, value in os.environ.items()
            if name not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CURL_HOME", "XDG_CONFIG_HOME")
            and not name.startswith(("MLSCORE_", "AZUREML_", "AML_"))}
    (home / "tmp").mkdir(parents=True)
    (home / ".curlrc").write_text("fail-with-body\nno-progress-meter\n")
    return {**kept, "PATH": os.pathsep.join(path), "HOME": str(home), "CURL_HOME": str(home),
            "TMPDIR": str(home / "tmp"), "MLSCORE_HOME": str(home / ".mlscore")}


def namespaces_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run([*ISOLATED, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
    return probe.returncode == 0


def busy_ports(script: str) -> list[int]:
    ports = sorted({int(next(filter(None, match))) for match in PORT.findall(script)})
    busy = []
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def stop_everything(process: subprocess.Popen, tree: Path | None) -> None:
    """The shell's process group (in namespaces, unshare takes every process in them along), and
    without namespaces the local-service hosts under `tree` (each leads a session of its own) that a
    failed walkthrough left behind; in a PID namespace their recorded pids mean nothing out here."""
    hosts = [int(pid.read_text()) for pid in tree.rglob("host.pid")] if tree else []
    for leader in [process.pid, *hosts]:
        try:
            os.killpg(leader, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def failure(blocks: list[Block], output: str, how: str) -> str:
    """The block that was running when the shell stopped, and what it printed."""
    started = re.findall(rf"^{re.escape(MARK)}(\d+)$", output, re.MULTILINE)
    if not started:
        return f"the README's shell {how} before its first block:\n{output[-6000:]}"
    block = blocks[int(started[-1])]
    printed = output.rsplit(f"{MARK}{started[-1]}\n", 1)[-1]
    return (f"the README's block at README.md:{block.line} {how}.\n--- the block ---\n{block.text}\n"
            f"--- what it printed (the end) ---\n{printed[-6000:]}")


def test_every_readme_block_says_whether_it_runs() -> None:
    blocks = read_blocks(README.read_text(encoding="utf-8"))
    untagged = [block.line for block in blocks if not block.tag]
    assert not untagged, f"fences without a tag (sh, python, text, json …) at README.md lines {untagged}"
    for block in blocks:
        if block.not_run is not None:
            assert block.tag in RUNNABLE, f"README.md:{block.line}: `not run` before a {block.tag} block"
            assert block.not_run.strip(), f"README.md:{block.line}: `not run` needs a reason"
    assert sum(block.runs for block in blocks) >= 5


def test_read_blocks_takes_indented_blocks_and_the_not_run_reason() -> None:
    markdown = "a\n\n```sh\necho 1\n```\n- item\n\n  ```json\n  {}\n  ```\n<!-- not run: needs X -->\n```sh\nx\n```\n"
    assert read_blocks(markdown) == [Block(3, "sh", "echo 1", None), Block(8, "json", "{}", None),
                                     Block(12, "sh", "x", "needs X")]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    clone, home = tmp_path / "mlscore", tmp_path / "home"
    copy_working_tree(clone)
    stale = subprocess.run(["make", "--question", ".venv/.installed-stamp"], cwd=clone, capture_output=True)
    if stale.returncode != 0:  # make would reinstall into the shared .venv, pointed at this copy
        pytest.fail(".venv is older than pyproject.toml: run `make models` first")
    blocks = read_blocks((clone / "README.md").read_text(encoding="utf-8"))
    script = shell_script(blocks, clone)
    (tmp_path / "readme.sh").write_text(script)
    env = environment(home)
    isolated = namespaces_work()
    if isolated:
        # loopback starts down in a network namespace of its own
        command = [*ISOLATED, "bash", "-c", 'ip link set lo up && exec bash "$0"', str(tmp_path / "readme.sh")]
    else:
        if busy := busy_ports(script):
            pytest.skip(f"the README's ports {busy} are in use here (and no network namespace to run it in)")
        command = ["bash", str(tmp_path / "readme.sh")]
    log = tmp_path / "readme.log"
    with open(log, "wb") as output:  # a file, not a pipe: background servers must not hold the test up
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   cwd=clone, env=env, start_new_session=True, preexec_fn=dies_with_tests())
        try:
            status = process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            stop_everything(process, tmp_path if not isolated else None)
            process.wait()
    printed = log.read_text(errors="replace")
    if status == 0 and f"\n{MARK}done\n" in printed:
        return
    how = f"did not finish within {RUN_TIMEOUT} s" if status is None else f"failed (exit status {status})"
    report = failure(blocks, printed, how)
    serve_log = clone / "serve.log"  # where the README sends make serve's output
    if serve_log.exists():
        report += f"\n--- serve.log (the end) ---\n{serve_log.read_text(errors='replace')[-3000:]}"
    pytest.fail(report)
