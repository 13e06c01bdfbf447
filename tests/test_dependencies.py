"""What an image installs for its entry script: conda specs as pip requirements, the import scan (names
that differ from their distribution, the standard library, the app's own modules, relative and optional
imports), what mlscore's image provides, and `mlscore deploy`'s warning and `--strict` refusal."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from mlscore.deploy import dependencies, image, kubernetes, service
from mlscore.deploy.configs import InferenceConfig, load_deployment_config, load_inference_config
from mlscore.deploy.dependencies import (
    Check,
    MissingImport,
    app_imports,
    conda_requirements,
    imported_modules,
    installs_with,
    pip_requirement,
    requirement_name,
)
from mlscore.deploy.registry import Registry
from mlscore.server.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_app(folder: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(textwrap.dedent(text))
    return folder


def config(tmp_path: Path, files: dict[str, str], conda: str | None = None, **fields: str) -> InferenceConfig:
    write_app(tmp_path / "src", files)
    if conda is not None:
        (tmp_path / "env.yml").write_text(textwrap.dedent(conda))
        fields["condaFile"] = "env.yml"
    return load_inference_config({"entryScript": "score.py", "sourceDirectory": "src", **fields}, base_dir=tmp_path)


def missing(inference: InferenceConfig) -> list[tuple[str, str]]:
    return [(item.module, item.distribution) for item in dependencies.check(inference).missing]


# --- conda specs as pip requirements -------------------------------------------------------------------


@pytest.mark.parametrize("spec, requirement", [
    ("numpy", "numpy"),
    ("numpy=1.26", "numpy==1.26.*"),  # conda's `=` is any 1.26.x
    ("numpy==1.26.4", "numpy==1.26.4"),
    ("numpy>=1.24,<2", "numpy>=1.24,<2"),
    ("numpy 1.26.4 py311_0", "numpy==1.26.4"),  # version and build string: the build goes
    ("conda-forge::joblib 1.3.2 pyhd8ed1ab_0", "joblib==1.3.2"),
    ("Scikit-Learn=1.3", "scikit-learn==1.3.*"),
    ("pytorch>=2.0", "torch>=2.0"),  # conda's name for what PyPI calls torch
    ("py-xgboost", "xgboost"),
    ("python-graphviz", "graphviz"),
])
def test_conda_spec_becomes_the_pip_requirement_of_the_same_package(spec, requirement):
    assert pip_requirement(spec)[1] == requirement


def test_conda_file_gives_pip_its_list_and_the_mapped_packages_and_skips_python_pip_and_azure_server(tmp_path):
    (tmp_path / "env.yml").write_text(textwrap.dedent("""\
        channels: [conda-forge]
        dependencies:
          - python=3.11
          - pip
          - numpy=1.26
          - pip:
            - azureml-defaults==1.40.0
            - joblib>=1.3
            - inference-schema[numpy-support]
        """))
    requirements = conda_requirements(tmp_path / "env.yml")
    assert requirements.pip == ("numpy==1.26.*", "joblib>=1.3", "inference-schema[numpy-support]")
    assert [spec for spec, _ in requirements.skipped] == ["python=3.11", "pip", "azureml-defaults==1.40.0"]
    assert requirements.channels == ("conda-forge",) and requirements.conda_only == ()


def test_conda_only_packages_are_not_given_to_pip_and_are_named(tmp_path):
    (tmp_path / "env.yml").write_text("dependencies:\n  - libgcc-ng\n  - r-base=4.3\n  - openssl\n  - pandas\n")
    requirements = conda_requirements(tmp_path / "env.yml")
    assert requirements.pip == ("pandas",)
    assert requirements.conda_only == ("libgcc-ng", "r-base=4.3", "openssl")
    line = Check((), requirements.conda_only, True).conda_only_line()
    assert line == ("the condaFile's libgcc-ng, r-base=4.3, openssl: conda-only, not installed (the image is made "
                    "with pip); add them with extraDockerFileSteps")


@pytest.mark.parametrize("line, name", [
    ("Scikit_Learn>=1.3", "scikit-learn"),
    ("uvicorn[standard]>=0.45", "uvicorn"),
    ("torch @ https://download.example/torch.whl", "torch"),
    ("PyYAML; python_version >= '3.8'", "pyyaml"),
    ("git+https://github.com/example/pkg.git", None),
    ("https://download.example/pkg-1.0.tar.gz", None),
    ("-r requirements.txt", None),
    ("--extra-index-url https://mirror.example/simple", None),
    ("./wheels/pkg-1.0-py3-none-any.whl", None),
])
def test_requirement_name_is_the_normalized_distribution_or_none_when_it_cannot_be_told(line, name):
    assert requirement_name(line) == name


# --- the import scan -------------------------------------------------------------------------------------


def test_dotted_and_from_imports_need_their_top_level_module():
    assert imported_modules("import a.b.c\nfrom d.e import f\nimport g as h, i\n") == {"a", "d", "g", "i"}


def test_relative_and_future_imports_are_not_packages():
    assert imported_modules("from __future__ import annotations\nfrom . import x\nfrom .y import z\n") == set()


def test_import_inside_a_function_is_needed():
    assert imported_modules("def init():\n    import torch\n") == {"torch"}


@pytest.mark.parametrize("caught", ["ImportError", "ModuleNotFoundError", "(ValueError, ImportError)",
                                    "Exception", "builtins.ImportError", ""])
def test_import_guarded_by_an_except_that_catches_import_error_is_optional(caught):
    source = f"try:\n    import ujson\nexcept {caught}:\n    ujson = None\n"
    assert imported_modules(source) == set()


def test_import_guarded_by_an_except_that_cannot_catch_import_error_is_needed():
    assert imported_modules("try:\n    import ujson\nexcept ValueError:\n    pass\n") == {"ujson"}


def test_the_fallback_import_in_the_handler_and_the_else_branch_are_needed():
    source = ("try:\n    from sklearn.externals import joblib\nexcept ImportError:\n    import joblib\n"
              "else:\n    import numpy\n")
    assert imported_modules(source) == {"joblib", "numpy"}


def test_imports_only_for_type_checkers_are_not_needed_at_run_time():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\nelse:\n    import numpy\n"
              "if typing.TYPE_CHECKING:\n    import pandas\n")
    assert imported_modules(source) == {"typing", "numpy"}


def test_the_scan_follows_the_apps_own_modules_and_packages_and_leaves_out_the_standard_library(tmp_path):
    app = write_app(tmp_path, {
        "score.py": "import os, json\nimport helpers\nfrom features import scale\nimport joblib\n",
        "helpers.py": "import requests\n",
        "features/__init__.py": "from .scaling import scale\n",
        "features/scaling.py": "import scipy.stats\nfrom . import other\n",
        "train.py": "import matplotlib\n",  # in the folder, never imported by the entry script
    })
    needed = app_imports(app / "score.py", [app])
    assert {module: {path.name for path in files} for module, files in needed.items()} == {
        "joblib": {"score.py"}, "requests": {"helpers.py"}, "scipy": {"scaling.py"}}


def test_a_file_that_does_not_parse_is_left_to_the_server_to_report(tmp_path):
    app = write_app(tmp_path, {"score.py": "import broken\nimport joblib\n", "broken.py": "def (:\n"})
    assert set(app_imports(app / "score.py", [app])) == {"joblib"}


# --- what the image provides -------------------------------------------------------------------------------


def test_mlscore_brings_its_dependencies_and_theirs_but_not_its_optional_extras():
    provided = installs_with(["mlscore"])
    assert {"numpy", "pandas", "inference-schema", "pyyaml", "starlette", "anyio"} <= provided
    assert not {"scikit-learn", "joblib", "matplotlib", "pytest"} & provided


def test_an_extra_asked_for_brings_its_requirements_too():
    pytest.importorskip("uvloop")
    assert "uvloop" in installs_with(["uvicorn[standard]"]) and "uvloop" not in installs_with(["uvicorn"])


def test_an_import_name_that_differs_from_its_distribution_is_matched_through_it(tmp_path):
    inference = config(tmp_path, {"score.py": "import sklearn\nimport skimage\nimport cv2\nimport PIL\n"},
                       conda="dependencies:\n  - scikit-learn\n  - pip:\n    - scikit-image\n    - pillow\n")
    assert missing(inference) == [("cv2", "opencv-python")]  # not installed here: named from the table


def test_any_distribution_the_table_knows_for_an_import_covers_it(tmp_path):
    inference = config(tmp_path, {"score.py": "import cv2\n"},
                       conda="dependencies:\n  - pip:\n    - opencv-python-headless\n")
    assert missing(inference) == []


def test_an_import_installed_here_is_named_by_the_distribution_that_installed_it(tmp_path):
    pytest.importorskip("markdown_it")  # installed by markdown-it-py: in no table
    assert missing(config(tmp_path, {"score.py": "import markdown_it\n"})) == [("markdown_it", "markdown-it-py")]
    covered = config(tmp_path, {"score.py": "import markdown_it\n"},
                     conda="dependencies:\n  - pip:\n    - markdown-it-py>=3\n")
    assert missing(covered) == []


def test_the_standard_library_mlscore_its_dependencies_and_azure_aliases_are_never_reported(tmp_path):
    inference = config(tmp_path, {"score.py": """\
        import json, logging, sqlite3
        import numpy, pandas, yaml, onnxruntime
        from inference_schema.schema_decorators import input_schema
        from azureml.core.model import Model
        from azureml_inference_server_http.api.aml_response import AMLResponse
        import mlscore
    """})
    assert missing(inference) == []


def test_what_the_condas_packages_install_in_turn_is_provided(tmp_path):
    # scikit-learn requires scipy and joblib: the image has them without naming them.
    inference = config(tmp_path, {"score.py": "import scipy\nimport joblib\nimport sklearn\n"},
                       conda="dependencies:\n  - scikit-learn\n")
    assert missing(inference) == []


def test_pip_installs_in_extra_docker_steps_count_as_provided(tmp_path):
    (tmp_path / "steps.dockerfile").write_text("RUN pip install --no-cache-dir -i https://mirror.example/simple "
                                               "lightgbm==4.3 \\\n    'catboost>=1.2' && true\n")
    inference = config(tmp_path, {"score.py": "import lightgbm\nimport catboost\nimport xgboost\n"},
                       extraDockerFileSteps="steps.dockerfile")
    assert missing(inference) == [("xgboost", "xgboost")]


def test_missing_imports_name_the_files_that_import_them_and_the_fix(tmp_path):
    inference = config(tmp_path, {"score.py": "import joblib\nimport sklearn\nimport helpers\n",
                                  "helpers.py": "import joblib\n"},
                       conda="dependencies:\n  - python=3.11\n")
    found = dependencies.check(inference)
    assert found.missing == (MissingImport("joblib", "joblib", ("helpers.py", "score.py")),
                             MissingImport("sklearn", "scikit-learn", ("score.py",)))
    assert found.missing_line() == ("helpers.py, score.py import joblib, sklearn, which neither the condaFile nor "
                                    "mlscore's dependencies provide: add joblib, scikit-learn to the condaFile's "
                                    "pip dependencies")


def test_without_a_conda_file_the_fix_is_to_give_one(tmp_path):
    line = dependencies.check(config(tmp_path, {"score.py": "import joblib\n"})).missing_line()
    assert line == ("score.py imports joblib, which mlscore's dependencies do not provide and the inference config "
                    "gives no condaFile: add joblib to a condaFile's pip dependencies and name it as condaFile")


def test_the_diabetes_examples_environment_covers_what_its_script_imports():
    inference = load_inference_config(ROOT / "examples" / "diabetes" / "inferenceconfig.json")
    assert inference.conda_file_path == ROOT / "examples" / "diabetes" / "environment.yml"
    assert dependencies.check(inference) == Check((), (), True)
    requirements = conda_requirements(inference.conda_file_path)
    assert {requirement_name(line) for line in requirements.pip} >= {"joblib", "scikit-learn"}


# --- mlscore deploy -------------------------------------------------------------------------------------


@pytest.fixture
def deploy_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`mlscore deploy` with no container engine or cluster: the context is written, nothing is built."""
    (tmp_path / "model.txt").write_text("weights")
    Registry(tmp_path / "registry").register("m", tmp_path / "model.txt")
    wheel = tmp_path / "mlscore-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    monkeypatch.setattr(image, "build_mlscore_wheel", lambda into: wheel)
    monkeypatch.setattr(image, "find_engine", lambda: None)
    monkeypatch.setattr(kubernetes, "cluster_available", lambda: False)
    write_app(tmp_path / "app", {"score.py": "import joblib\nimport sklearn\n\ndef run(data):\n    return data\n"})

    def deploy(compute_type: str, *flags: str, inference: dict | None = None) -> int:
        (tmp_path / "ic.json").write_text(json.dumps(inference or {"entryScript": "app/score.py"}))
        (tmp_path / "dc.json").write_text(json.dumps({"computeType": compute_type}))
        return main(["deploy", "--registry", str(tmp_path / "registry"), "-n", "svc", "-m", "m:1",
                     "--ic", str(tmp_path / "ic.json"), "--dc", str(tmp_path / "dc.json"),
                     "--output", str(tmp_path / "out"), *flags])

    return deploy


@pytest.mark.parametrize("compute_type", ["aci", "aks"])
def test_deploy_warns_in_one_line_before_building_and_goes_on(deploy_cli, capsys, compute_type):
    assert deploy_cli(compute_type) == 0
    out = capsys.readouterr().out.splitlines()
    warnings = [line for line in out if line.startswith("warning:")]
    assert warnings == ["warning: service svc: score.py imports joblib, sklearn, which mlscore's dependencies do "
                        "not provide and the inference config gives no condaFile: add joblib, scikit-learn to a "
                        "condaFile's pip dependencies and name it as condaFile"]
    assert out.index(warnings[0]) < next(index for index, line in enumerate(out) if "build context" in line)


def test_deploy_strict_refuses_with_exit_2_in_one_line_and_writes_nothing(deploy_cli, capsys, tmp_path):
    assert deploy_cli("aci", "--strict") == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "mlscore: error: service svc: score.py imports joblib, sklearn, which mlscore's dependencies do not provide "
        "and the inference config gives no condaFile: add joblib, scikit-learn to a condaFile's pip dependencies "
        "and name it as condaFile (strict: no image is built without them)"]
    assert not (tmp_path / "out").exists()
    assert main(["service", "list", "--registry", str(tmp_path / "registry")]) == 0
    assert "no services" in capsys.readouterr().out


def test_deploy_strict_builds_when_the_condafile_provides_the_imports(deploy_cli, capsys, tmp_path):
    (tmp_path / "env.yml").write_text("dependencies:\n  - scikit-learn>=1.3\n  - pip:\n    - joblib\n")
    inference = {"entryScript": "app/score.py", "condaFile": "env.yml"}
    assert deploy_cli("aci", "--strict", inference=inference) == 0
    assert "warning" not in capsys.readouterr().out
    assert (tmp_path / "out" / "requirements.txt").read_text() == "scikit-learn>=1.3\njoblib\n"


def test_a_local_service_is_not_checked_it_runs_in_this_environment(monkeypatch):
    said: list[str] = []
    monkeypatch.setattr(dependencies, "check", lambda inference: pytest.fail("a local service was checked"))
    service.check_packages("svc", load_inference_config({"entryScript": "s.py"}),
                           load_deployment_config({"computeType": "local"}), said.append, strict=True)
    assert said == []
