"""Build the example models from scikit-learn's bundled datasets (no downloads).

Writes examples/<example>/models/…, laid out the way each score.py asks for its model:
  diabetes  models/sklearn_regression_model.pkl          (a plain file)
  digits    models/digits/1/model.joblib                 (the registry layout, one version)
  powerbi   models/diabetes_table/1/model.joblib         (registry layout; version 2 is the newest)
            models/diabetes_table/2/model.joblib

Run: python examples/build_models.py [--force]. Existing models are kept unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

HERE = Path(__file__).resolve().parent


def build_diabetes(models: Path) -> list[Path]:
    data = load_diabetes()
    model = Ridge(alpha=0.1).fit(data.data, data.target)
    return [_save(model, models / "sklearn_regression_model.pkl")]


def build_digits(models: Path) -> list[Path]:
    data = load_digits()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(data.data, data.target)
    return [_save(model, models / "digits" / "1" / "model.joblib")]


def build_powerbi(models: Path) -> list[Path]:
    frame = diabetes_table()
    target = load_diabetes(scaled=False).target
    encode = ColumnTransformer(
        [("sex", OneHotEncoder(handle_unknown="ignore"), ["sex"])], remainder=StandardScaler()
    )
    first = make_pipeline(encode, Ridge(alpha=10.0)).fit(frame, target)
    newest = make_pipeline(encode, Ridge(alpha=1.0)).fit(frame, target)
    return [
        _save(first, models / "diabetes_table" / "1" / "model.joblib"),
        _save(newest, models / "diabetes_table" / "2" / "model.joblib"),
    ]


def diabetes_table() -> pd.DataFrame:
    """The unscaled diabetes features as a table of mixed column types."""
    data = load_diabetes(scaled=False, as_frame=True)
    frame = data.frame.drop(columns="target")
    frame["age"] = frame["age"].astype(np.int64)
    frame["sex"] = np.where(frame["sex"] == 1, "female", "male")
    return frame


def _save(model: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    joblib.dump(model, temporary)
    temporary.replace(path)  # never leave a half-written model behind
    return path


BUILDERS = {"diabetes": build_diabetes, "digits": build_digits, "powerbi": build_powerbi}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild models that exist already")
    args = parser.parse_args(argv)
    for name, build in BUILDERS.items():
        models = HERE / name / "models"
        if models.is_dir() and any(models.iterdir()) and not args.force:
            print(f"{name}: models present in {models}")
            continue
        for path in build(models):
            print(f"{name}: wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
