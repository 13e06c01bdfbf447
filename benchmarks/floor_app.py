"""The *floor*: the least a Python server can do to score one request with an entry script.

A bare Starlette app with a single ``POST /score`` route, served by uvicorn with the uvloop
event loop, the httptools parser and no access log. Per request it reads the body,
``orjson.loads`` it, turns each schema parameter into ``np.array(..., dtype=<sample dtype>)``,
calls the entry script's *undecorated* ``run()`` (the function under inference-schema's
decorators, found by following ``__wrapped__`` to the bottom) and answers ``orjson.dumps``.

There is no admission control, no request id, no error mapping, no metrics: it is the
reference point that mlscore is measured against (DESIGN.md, "Performance rules").
``run()`` is called on the event loop itself, which is the cheapest thing on one core.

Usage::

    .venv/bin/python benchmarks/floor_app.py \
        --entry-script examples/diabetes/score.py --model-dir examples/diabetes/models --port 8011
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HOST = "127.0.0.1"
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _exec_script(path: Path) -> ModuleType:
    """Import the entry script from its file as a fresh module named ``score``."""
    spec = importlib.util.spec_from_file_location("score", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"floor: cannot import entry script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["score"] = module
    spec.loader.exec_module(module)
    return module


def _install_azureml_aliases(missing: str) -> None:
    """Install mlscore's ``azureml.*`` aliases, or stop with a clear message."""
    try:
        compat = importlib.import_module("mlscore.scoring.compat")
    except ImportError as exc:
        raise SystemExit(
            f"floor: the entry script imports {missing!r}, which is not installed, and "
            f"mlscore.scoring.compat (which provides the azureml.* aliases) is not importable: {exc}"
        ) from exc
    install = getattr(compat, "install", None)
    if install is None:
        raise SystemExit(
            f"floor: the entry script imports {missing!r}; mlscore.scoring.compat exists "
            "but has no install() yet"
        )
    install()


def load_entry_script(path: Path) -> ModuleType:
    """Import the entry script, installing the azureml aliases if it needs them."""
    sys.path.insert(0, str(path.parent))
    try:
        return _exec_script(path)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("azureml"):
            raise
        _install_azureml_aliases(exc.name or "azureml")
        return _exec_script(path)


def unwrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """Follow ``__wrapped__`` to the undecorated function."""
    while hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    return func


def schema_dtypes(func: Callable[..., Any]) -> dict[str, np.dtype]:
    """Map each numpy input parameter of a schema-decorated ``run`` to its sample's dtype.

    inference-schema's ``input_schema`` wrapper keeps ``param_name`` and ``param_type`` in
    its closure; wrapt exposes that wrapper as ``_self_wrapper`` on each layer.
    """
    dtypes: dict[str, np.dtype] = {}
    layer: Any = func
    while hasattr(layer, "__wrapped__"):
        wrapper = getattr(layer, "_self_wrapper", None)
        if inspect.isfunction(wrapper):
            names = inspect.getclosurevars(wrapper).nonlocals
            sample = getattr(names.get("param_type"), "sample_input", None)
            if "param_name" in names and isinstance(sample, np.ndarray):
                dtypes[names["param_name"]] = sample.dtype
        layer = layer.__wrapped__
    return dtypes


def build_app(run: Callable[..., Any], dtypes: dict[str, np.dtype]) -> Starlette:
    """The one-route app. Without a numpy schema, ``run`` gets the raw JSON text."""
    json_response = "application/json"

    async def score_arrays(request: Request) -> Response:
        payload = orjson.loads(await request.body())
        kwargs = {name: np.array(payload[name], dtype=dtype) for name, dtype in dtypes.items()}
        return Response(orjson.dumps(run(**kwargs), option=ORJSON_OPTIONS), media_type=json_response)

    async def score_text(request: Request) -> Response:
        body = await request.body()
        orjson.loads(body)
        return Response(orjson.dumps(run(body.decode()), option=ORJSON_OPTIONS), media_type=json_response)

    endpoint = score_arrays if dtypes else score_text
    return Starlette(routes=[Route("/score", endpoint, methods=["POST"])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry-script", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["AZUREML_MODEL_DIR"] = str(args.model_dir.resolve())
    script = load_entry_script(args.entry_script.resolve())
    script.init()
    app = build_app(unwrap(script.run), schema_dtypes(script.run))
    uvicorn.run(
        app, host=HOST, port=args.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning",
    )


if __name__ == "__main__":
    main()
