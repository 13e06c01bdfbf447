"""get_model_path: plain files and folders, the registry layout, and errors that say where it looked."""

from __future__ import annotations

import pytest

from mlscore.scoring.model_path import ModelNotFoundError, get_model_path


def test_plain_file_resolves_to_itself(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"x")
    assert get_model_path("model.pkl", root=tmp_path) == str(tmp_path / "model.pkl")


def test_plain_folder_resolves_to_itself(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text("{}")
    assert get_model_path("bert", root=tmp_path) == str(tmp_path / "bert")


def test_registry_layout_picks_the_newest_version_numerically(tmp_path):
    for version in ("1", "2", "10"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "model.onnx").write_bytes(version.encode())
    assert get_model_path("m", root=tmp_path) == str(tmp_path / "m" / "10" / "model.onnx")
    assert get_model_path("m", version=2, root=tmp_path) == str(tmp_path / "m" / "2" / "model.onnx")


def test_registry_version_with_several_files_resolves_to_the_folder(tmp_path):
    (tmp_path / "m" / "3").mkdir(parents=True)
    (tmp_path / "m" / "3" / "a.bin").write_bytes(b"a")
    (tmp_path / "m" / "3" / "b.bin").write_bytes(b"b")
    assert get_model_path("m", root=tmp_path) == str(tmp_path / "m" / "3")


def test_missing_name_says_where_it_looked_and_what_exists(tmp_path):
    (tmp_path / "present.pkl").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError) as error:
        get_model_path("absent.pkl", root=tmp_path)
    assert str(tmp_path) in str(error.value) and "present.pkl" in str(error.value)


def test_missing_version_lists_the_versions_there(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "f").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="versions there: 1"):
        get_model_path("m", version=7, root=tmp_path)


def test_unset_model_dir_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    with pytest.raises(ModelNotFoundError, match="AZUREML_MODEL_DIR"):
        get_model_path("m")


def test_azureml_model_class_uses_the_model_dir(monkeypatch, tmp_path):
    from mlscore.scoring import compat

    compat.install()
    from azureml.core.model import Model

    (tmp_path / "x.pkl").write_bytes(b"x")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    assert Model.get_model_path("x.pkl") == str(tmp_path / "x.pkl")


def test_model_dir_set_to_the_single_models_version_folder_resolves_that_model(tmp_path):
    version_dir = tmp_path / "azureml-models" / "sklearn_regression_model.pkl" / "3"
    version_dir.mkdir(parents=True)
    (version_dir / "sklearn_regression_model.pkl").write_bytes(b"x")
    (version_dir.parent / "4").mkdir()  # another version beside it is not taken by default
    (version_dir.parent / "4" / "sklearn_regression_model.pkl").write_bytes(b"y")

    assert get_model_path("sklearn_regression_model.pkl", root=version_dir) == str(
        version_dir / "sklearn_regression_model.pkl")
    assert get_model_path("sklearn_regression_model.pkl", version=4, root=version_dir).endswith("/4/sklearn_regression_model.pkl")
    with pytest.raises(ModelNotFoundError, match="other"):
        get_model_path("other", root=version_dir)
