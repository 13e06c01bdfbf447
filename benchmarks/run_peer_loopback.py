"""Run azureml-inference-server-http (``azmlinfsrv``) bound to 127.0.0.1 instead of 0.0.0.0.

The peer's CLI has no host flag: ``amlserver.run()`` passes the module-level
``DEFAULT_HOST`` ("0.0.0.0", from ``azureml_inference_server_http.constants``, star-imported
into ``amlserver``) to ``amlserver_linux.run()``, which hands it to gunicorn as ``-b``.
This wrapper sets that one value to 127.0.0.1 in both modules before the CLI runs, refuses
to start if any other host would reach gunicorn, and then calls the console script's target
(``azureml_inference_server_http.amlserver:run``) with the arguments it was given.

Run it with the peer's own interpreter (the harness uses ``benchmarks/.work/peer-venv``)::

    benchmarks/.work/peer-venv/bin/python benchmarks/run_peer_loopback.py \
        --entry_script examples/diabetes/score.py --model_dir examples/diabetes/models --port 8021

``WORKER_COUNT`` in the environment sets the number of gunicorn worker processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

LOOPBACK = "127.0.0.1"


def _guard(run_server: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``amlserver_linux.run`` so that nothing but loopback is ever bound."""

    def guarded(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != LOOPBACK:
            raise SystemExit(f"run_peer_loopback: refusing to bind {host!r}; only {LOOPBACK} is allowed")
        return run_server(host, *args, **kwargs)

    return guarded


def patch_host() -> Callable[[], Any]:
    """Point the peer at 127.0.0.1 and return its CLI entry point."""
    from azureml_inference_server_http import constants

    constants.DEFAULT_HOST = LOOPBACK
    from azureml_inference_server_http import amlserver, amlserver_linux

    amlserver.DEFAULT_HOST = LOOPBACK
    amlserver_linux.DEFAULT_HOST = LOOPBACK
    amlserver_linux.run = _guard(amlserver_linux.run)
    return amlserver.run


def main() -> Any:
    if sys.platform == "win32":
        raise SystemExit("run_peer_loopback: Linux/macOS only (the Windows path uses waitress)")
    # A separate health listener would be a second bind; keep it to the one port.
    os.environ.pop("SEPERATE_HEALTH_ENDPOINT", None)
    cli = patch_host()
    sys.argv[0] = "azmlinfsrv"
    return cli()


if __name__ == "__main__":
    sys.exit(main())
