"""What an image must install for its entry script: the condaFile's packages as pip requirements, and
the app's imports that neither those nor the image itself (mlscore and its dependencies) provide.

Everything goes into the one virtual environment mlscore runs in, with pip: conda packages are mapped
to their PyPI names and pip's version syntax; conda-only packages (libraries that are not Python
packages on PyPI) are not installed, and a deploy says so.

The import check reads the app's code with `ast`, never runs it. It starts at the entry script and
follows the imports of the app's own modules; an import inside `try:` whose `except` catches
ImportError (also ModuleNotFoundError, Exception, BaseException or a bare `except:`) is optional, and
so is one under `if TYPE_CHECKING:`; relative imports, the standard library and the app's own modules
are never reported. Imports made by name at run time (`importlib.import_module`) are not seen.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from mlscore.deploy.configs import InferenceConfig
from mlscore.scoring.compat import ALIASES

# Conda packages that are not Python packages, or that the image provides itself.
_CONDA_SKIPPED = {
    "python": "the image's own Python runs mlscore",
    "pip": "the virtual environment has its own",
    "cudatoolkit": "CUDA comes with the base image",
    "cudnn": "cuDNN comes with the base image",
}
# Conda names that PyPI spells otherwise.
_CONDA_TO_PIP = {
    "pytorch": "torch", "pytorch-cpu": "torch", "py-xgboost": "xgboost", "py-opencv": "opencv-python",
    "opencv": "opencv-python", "python-graphviz": "graphviz", "msgpack-python": "msgpack", "pytables": "tables",
    "matplotlib-base": "matplotlib",
}
# Conda packages with no Python package of that name on PyPI: system libraries and tools, R. Names
# starting with `lib`, `r-` or `_` are taken to be such too.
_CONDA_ONLY = frozenset({
    "blas", "bzip2", "ca-certificates", "ffmpeg", "gcc", "gfortran", "git", "graphviz", "gxx", "icu", "make",
    "nccl", "ncurses", "nodejs", "openblas", "openjdk", "openssl", "readline", "sqlite", "tk", "xz", "zlib", "zstd",
})
_CONDA_ONLY_PREFIXES = ("lib", "r-", "_")
CONDA_ONLY_WHY = "conda-only (no PyPI package of that name): not installed; add it with extraDockerFileSteps"
# Azure's own serving stack, which mlscore replaces (its `azureml.*` imports are aliased).
_PIP_SKIPPED = {
    "azureml-defaults": "the server is mlscore",
    "azureml-inference-server-http": "the server is mlscore",
}
_CONDA_SPEC = re.compile(r"(?:[^:\s]+::)?([A-Za-z0-9_.\-]+)\s*(.*)")
_PIP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
_REQUIREMENT_HEAD = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._\-]*)\s*(?:\[([^\]]*)\])?")  # name[extras]
_EXTRA_MARKER = re.compile(r"""\bextra\s*==\s*['"]([^'"]+)['"]""")
# pip install in extraDockerFileSteps: the options whose next word is theirs, not a requirement.
_PIP_INSTALL = re.compile(r"\bpip3?\s+install\b([^\n;&|]*)")
_PIP_OPTIONS_WITH_VALUE = frozenset({"-r", "--requirement", "-c", "--constraint", "-i", "--index-url",
                                     "--extra-index-url", "-f", "--find-links", "-t", "--target", "--trusted-host"})

# Import names whose distribution is named otherwise, for packages not installed here to ask
# (`importlib.metadata.packages_distributions` answers for those that are). The first is suggested.
KNOWN_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "sklearn": ("scikit-learn",),
    "skimage": ("scikit-image",),
    "yaml": ("PyYAML",),
    "cv2": ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
    "PIL": ("Pillow",),
    "bs4": ("beautifulsoup4",),
    "dateutil": ("python-dateutil",),
    "dotenv": ("python-dotenv",),
    "attr": ("attrs",),
    "jwt": ("PyJWT",),
    "Crypto": ("pycryptodome",),
    "OpenSSL": ("pyOpenSSL",),
    "serial": ("pyserial",),
    "zmq": ("pyzmq",),
    "fitz": ("PyMuPDF",),
    "umap": ("umap-learn",),
    "faiss": ("faiss-cpu", "faiss-gpu"),
    "docx": ("python-docx",),
    "pptx": ("python-pptx",),
    "magic": ("python-magic",),
    "mpl_toolkits": ("matplotlib",),
    "pkg_resources": ("setuptools",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "psycopg2": ("psycopg2-binary", "psycopg2"),
    "MySQLdb": ("mysqlclient",),
    "websocket": ("websocket-client",),
    "Bio": ("biopython",),
}
# Import names the image has without a distribution for them: mlscore's stand-ins for Azure's modules.
_MLSCORE_MODULES = frozenset({"mlscore", *(name.partition(".")[0] for name in ALIASES)})
_JUNK_FOLDERS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".pytest_cache", ".mypy_cache",
                           ".ipynb_checkpoints"})
_CATCHES_IMPORT_ERROR = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


# --- the condaFile as pip requirements ------------------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """What a conda file asks for, as pip requirements, and what became of each conda package."""

    pip: tuple[str, ...] = ()
    mapped: tuple[tuple[str, str], ...] = ()  # (conda spec, pip requirement)
    skipped: tuple[tuple[str, str], ...] = ()  # (spec, why)
    channels: tuple[str, ...] = ()

    @property
    def conda_only(self) -> tuple[str, ...]:
        """The conda packages that are not installed because PyPI has no such package."""
        return tuple(spec for spec, why in self.skipped if why == CONDA_ONLY_WHY)


def conda_requirements(conda_file: Path | None) -> Requirements:
    """The conda file's `dependencies`, conda packages mapped to pip's names and version syntax, and its
    `pip:` list as written. Everything is installed with pip into the one virtual environment mlscore
    runs in: no conda environment is made, whatever the base image holds."""
    if conda_file is None:
        return Requirements()
    try:
        data = yaml.safe_load(conda_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{conda_file}: not a conda environment file: {error}") from None
    dependencies = data.get("dependencies", []) if isinstance(data, dict) else None
    if not isinstance(dependencies, list):
        raise ValueError(f"{conda_file}: `dependencies` must be a list")
    pip: list[str] = []
    mapped: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for item in dependencies:
        if isinstance(item, dict) and isinstance(item.get("pip"), list):
            for line in map(str, item["pip"]):
                why = _PIP_SKIPPED.get(requirement_name(line) or "")
                if why:
                    skipped.append((line, why))
                else:
                    pip.append(line)
            continue
        spec = str(item)
        name, requirement = pip_requirement(spec)
        why = _CONDA_SKIPPED.get(name) or (CONDA_ONLY_WHY if _conda_only(name) else None)
        if why:
            skipped.append((spec, why))
            continue
        mapped.append((spec, requirement))
        pip.append(requirement)
    channels = tuple(map(str, data.get("channels") or ()))
    return Requirements(tuple(pip), tuple(mapped), tuple(skipped), channels)


def pip_requirement(spec: str) -> tuple[str, str]:
    """(conda name, pip requirement) of a conda spec. `numpy=1.26` is conda's any 1.26.x, `numpy 1.26.4 py311_0`
    that version exactly (the build string dropped), `numpy>=1.24` as pip reads it; a `channel::` prefix goes."""
    match = _CONDA_SPEC.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"cannot read the conda dependency {spec!r}")
    name, constraint = match.group(1).lower(), match.group(2).strip()
    pip_name = _CONDA_TO_PIP.get(name, name)
    if not constraint:
        return name, pip_name
    if constraint.startswith(("==", ">=", "<=", "!=", "~=", ">", "<")):
        return name, pip_name + constraint.replace(" ", "")
    fuzzy = constraint.startswith("=")
    version = constraint.lstrip("=").split("=")[0].split()[0]
    if fuzzy and not version.endswith("*"):
        version += ".*"
    return name, f"{pip_name}=={version}"


def _conda_only(name: str) -> bool:
    return name in _CONDA_ONLY or name.startswith(_CONDA_ONLY_PREFIXES)


def requirement_name(line: str) -> str | None:
    """The normalized distribution name a pip requirement line installs (`Scikit_Learn>=1.3` → scikit-learn);
    None for options, paths and URLs, whose name cannot be told without fetching them."""
    line = line.strip()
    if not line or line.startswith(("-", ".", "/", "#")) or "://" in line.split("@")[0]:
        return None
    match = _PIP_NAME.match(line)
    return normalized(match.group(0)) if match else None


def normalized(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- what the app imports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MissingImport:
    """A top-level module the app imports that the image would not have, and the distribution to add."""

    module: str
    distribution: str
    files: tuple[str, ...]  # the app's files that import it, relative to the app's folder


def imported_modules(source: str, filename: str = "<script>") -> set[str]:
    """The top-level modules one file needs (`import a.b` and `from a.b import c` need `a`), leaving out
    relative imports and optional ones (see the module's docstring). Raises SyntaxError."""
    finder = _ImportFinder()
    finder.visit(ast.parse(source, filename))
    return finder.required


class _ImportFinder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.required: set[str] = set()
        self._optional = 0  # how many enclosing `try:` bodies catch ImportError

    def visit_Import(self, node: ast.Import) -> None:
        if not self._optional:
            self.required.update(alias.name.partition(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if not self._optional and node.level == 0 and node.module and node.module != "__future__":
            self.required.add(node.module.partition(".")[0])

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_catches_import_error(handler.type) for handler in node.handlers)
        self._optional += guarded
        for statement in node.body:
            self.visit(statement)
        self._optional -= guarded
        # A fallback in the handler is what runs when the first import fails: it is needed.
        for statement in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(statement)

    visit_TryStar = visit_Try

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.visit(node.test)
            for statement in node.body:
                self.visit(statement)
        for statement in node.orelse:
            self.visit(statement)


def _catches_import_error(caught: ast.expr | None) -> bool:
    if caught is None:
        return True
    if isinstance(caught, ast.Tuple):
        return any(_catches_import_error(element) for element in caught.elts)
    name = caught.id if isinstance(caught, ast.Name) else caught.attr if isinstance(caught, ast.Attribute) else None
    return name in _CATCHES_IMPORT_ERROR


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def app_imports(entry_script: Path, folders: Iterable[Path]) -> dict[str, set[Path]]:
    """Every third-party top-level module the entry script needs, directly or through the app's own
    modules (files and packages in `folders`, the ones on sys.path when it runs), and the files that
    import it. Standard-library modules are left out; files that do not parse are skipped (serving
    reports them)."""
    roots = [folder for folder in dict.fromkeys(folders) if folder.is_dir()]
    needed: dict[str, set[Path]] = {}
    pending, seen = [entry_script], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            modules = imported_modules(path.read_text(encoding="utf-8"), str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        for module in modules:
            local = _local_files(module, roots)
            if local is not None:
                pending.extend(local)
            elif module not in sys.stdlib_module_names:
                needed.setdefault(module, set()).add(path)
    return needed


def _local_files(module: str, roots: list[Path]) -> list[Path] | None:
    """The app's files that make up `module` when it is one of the app's own, else None."""
    for root in roots:
        if (root / f"{module}.py").is_file():
            return [root / f"{module}.py"]
        package = root / module
        if package.is_dir() and module not in _JUNK_FOLDERS:
            return [path for path in package.rglob("*.py") if not _JUNK_FOLDERS.intersection(path.parts)]
        if any(root.glob(f"{module}.*.so")) or any(root.glob(f"{module}.*.pyd")):
            return []
    return None


# --- what the image provides ------------------------------------------------------------------------------


def missing_imports(inference: InferenceConfig, requirements: Requirements) -> list[MissingImport]:
    """The app's imports that neither `requirements` (the condaFile's, with what they install in turn),
    pip installs in extraDockerFileSteps, nor mlscore and its dependencies provide; sorted by module."""
    script = inference.entry_script_path
    if script is None:
        raise ValueError("the inference config's paths are unresolved: load it from a file, or give base_dir")
    app = inference.source_directory_path or script.parent
    needed = app_imports(script, [app, script.parent])
    if not needed:
        return []
    installed = metadata.packages_distributions()
    wanted = [*requirements.pip, *_pip_installs(inference.extra_docker_file_steps_path)]
    provided = installs_with(["mlscore", "pip", *wanted])
    missing: list[MissingImport] = []
    for module in sorted(needed, key=str.lower):
        if module in _MLSCORE_MODULES:
            continue
        candidates = [*installed.get(module, ()), *KNOWN_DISTRIBUTIONS.get(module, ()), module]
        if provided.intersection(map(normalized, candidates)):
            continue
        files = tuple(sorted(_shown(path, app) for path in needed[module]))
        missing.append(MissingImport(module, candidates[0], files))
    return missing


def installs_with(requirements: Iterable[str]) -> set[str]:
    """The normalized names of what installing `requirements` puts in an environment: each with what it
    requires in turn (its extras' requirements too when asked for), as far as the distributions are
    installed here to tell."""
    found: set[str] = set()
    pending = [parsed for line in requirements if (parsed := _name_and_extras(line)) is not None]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        found.add(name)
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        for line in _requires(name):
            requirement, _, marker = line.partition(";")
            extra = _EXTRA_MARKER.search(marker)
            if extra is not None and normalized(extra.group(1)) not in extras:
                continue
            parsed = _name_and_extras(requirement)
            if parsed is not None:
                pending.append(parsed)
    return found


def _requires(name: str) -> list[str]:
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []


def _name_and_extras(line: str) -> tuple[str, frozenset[str]] | None:
    if requirement_name(line) is None:
        return None
    head = _REQUIREMENT_HEAD.match(line)
    extras = frozenset(normalized(extra.strip()) for extra in (head.group(2) or "").split(",") if extra.strip())
    return normalized(head.group(1)), extras


def _pip_installs(steps: Path | None) -> Iterator[str]:
    """The requirements named on `pip install` lines of an extraDockerFileSteps file."""
    if steps is None:
        return
    text = steps.read_text(encoding="utf-8").replace("\\\n", " ")
    for match in _PIP_INSTALL.finditer(text):
        words = match.group(1).split()
        for word, before in zip(words, ["", *words]):
            if not word.startswith("-") and before not in _PIP_OPTIONS_WITH_VALUE:
                yield word.strip("'\"")


def _shown(path: Path, app: Path) -> str:
    try:
        return path.relative_to(app).as_posix()
    except ValueError:
        return path.name


# --- what a deploy says ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """What a deploy says about an image's packages before it builds."""

    missing: tuple[MissingImport, ...]
    conda_only: tuple[str, ...]
    has_conda_file: bool

    def missing_line(self) -> str | None:
        """One line naming the imports the image would lack and the fix; None when there are none."""
        if not self.missing:
            return None
        files = sorted({file for item in self.missing for file in item.files})
        modules = ", ".join(item.module for item in self.missing)
        distributions = ", ".join(dict.fromkeys(item.distribution for item in self.missing))
        imports = f"{', '.join(files)} import{'s' if len(files) == 1 else ''} {modules}"
        if self.has_conda_file:
            return (f"{imports}, which neither the condaFile nor mlscore's dependencies provide: add {distributions} "
                    "to the condaFile's pip dependencies")
        return (f"{imports}, which mlscore's dependencies do not provide and the inference config gives no "
                f"condaFile: add {distributions} to a condaFile's pip dependencies and name it as condaFile")

    def conda_only_line(self) -> str | None:
        """One line naming the condaFile's packages that pip cannot install; None when there are none."""
        if not self.conda_only:
            return None
        return (f"the condaFile's {', '.join(self.conda_only)}: conda-only, not installed (the image is made "
                "with pip); add them with extraDockerFileSteps")


def check(inference: InferenceConfig) -> Check:
    """The import check and the conda-only packages of an inference config's image."""
    requirements = conda_requirements(inference.conda_file_path)
    return Check(tuple(missing_imports(inference, requirements)), requirements.conda_only,
                 inference.conda_file is not None)

