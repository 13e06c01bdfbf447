"""`azmlinfsrv`, the command Azure's scoring server (azureml-inference-server-http) is started with:
its flags, environment variables, config file and local defaults, turned into mlscore's settings.

Precedence is Azure's: flags over environment variables over the config file. The config file is
`--config_file`, else `AZUREML_CONFIG_FILE`, else a `config.json` in the app root or beside the
entry script. Defaults are Azure's where `mlscore serve` has its own: listen on 0.0.0.0, no
queue-wait deadline worth the name (the longest the server takes, one hour), a one-hour scoring
timeout, and `main.py` in the app root when no entry script is named.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlscore import __version__
from mlscore.server.settings import (
    MAX_QUEUE_WAIT_MS_LIMIT, SWITCH_ON, Settings, SettingsError, read_config_file,
)

AZURE_DEFAULTS: dict[str, Any] = {
    "host": "0.0.0.0",
    "max_queue_wait_ms": MAX_QUEUE_WAIT_MS_LIMIT,  # Azure has no queue-wait limit: requests wait their turn
    "scoring_timeout_ms": 3_600_000,  # SCORING_TIMEOUT_MS's default on Azure
}
FLAG_NAMES = {"entry_script": "--entry_script", "model_dir": "--model_dir", "workers": "--worker_count",
              "cors_origins": "--access_control_allow_origins", "health_port": "--health_port"}
DEFAULT_PORT = 5001
DEFAULT_HEALTH_PORT = 5000
DEFAULT_SCRIPT = "main.py"
CONFIG_NAME = "config.json"
APP_INSIGHTS_NOTE = (
    "Application Insights export is not built in: the instrumentation key is accepted and not used. Logs go to "
    "stderr as text; with MLSCORE_LOG_FORMAT=json they go to stdout as one JSON object per line, for a log "
    "collector (Azure Monitor's agent, Fluent Bit) to ship; metrics are at /metrics."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="azmlinfsrv", description="Start a scoring server the way Azure ML's azmlinfsrv does, on mlscore.",
        epilog="Environment variables and a config.json (keys: the variables' names) are read as Azure's server "
               "reads them; flags win over the environment, which wins over the config file.")
    parser.add_argument("--version", action="version", version=f"azmlinfsrv (mlscore {__version__})")
    parser.add_argument("--entry_script", help="the scoring script with init() and run() (env AZUREML_ENTRY_SCRIPT; "
                        f"default: {DEFAULT_SCRIPT} in the app root)")
    parser.add_argument("--model_dir", help="the model folder (env AZUREML_MODEL_DIR)")
    parser.add_argument("--port", default=str(DEFAULT_PORT), help=f"the scoring port (default {DEFAULT_PORT})")
    parser.add_argument("--worker_count", help="scoring worker processes, each scoring one request at a time "
                        "(env WORKER_COUNT; default 1)")
    parser.add_argument("--health_port", help=f"the health port with SEPERATE_HEALTH_ENDPOINT=true (env HEALTH_PORT; "
                        f"default {DEFAULT_HEALTH_PORT})")
    parser.add_argument("--config_file", help="a JSON file whose keys are the environment variables' names "
                        f"(env AZUREML_CONFIG_FILE; default: {CONFIG_NAME} in the app root or beside the script)")
    parser.add_argument("--access_control_allow_origins", help="comma-separated origins allowed by CORS "
                        "(env AML_CORS_ORIGINS)")
    parser.add_argument("--appinsights_instrumentation_key", help="accepted for compatibility; Application Insights "
                        "export is not built in (see the log line at start)")
    parser.add_argument("--rest", action="store_true", help=argparse.SUPPRESS)  # Azure's hidden flag; no effect
    return parser


def azure_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """mlscore's settings for an azmlinfsrv command line, and lines to log once logging is set up."""
    notes: list[str] = []
    app_root = Path(environ.get("AML_APP_ROOT") or Path.cwd()).expanduser().resolve()
    script = Path(args.entry_script).expanduser().resolve() if args.entry_script else None  # Azure: realpath
    config_path = _config_path(args.config_file, environ, app_root, script or environ.get("AZUREML_ENTRY_SCRIPT"))
    config = read_config_file(config_path, {})
    if config_path is not None:
        notes.append(f"config file: {config_path}")

    def first(flag_value: Any, name: str) -> Any:
        """A value by Azure's precedence: the flag, the environment, the config file."""
        if flag_value is not None:
            return flag_value
        return environ.get(name) or config.get(name)

    cli: dict[str, Any] = {
        "entry_script": script,
        "model_dir": args.model_dir,
        "port": args.port,  # Azure always sets the port from the flag (SERVER_PORT is ignored)
        "workers": args.worker_count,
        "cors_origins": args.access_control_allow_origins,
    }
    if str(first(None, "SEPERATE_HEALTH_ENDPOINT") or "").strip().lower() in SWITCH_ON:
        cli["health_port"] = first(args.health_port, "HEALTH_PORT") or DEFAULT_HEALTH_PORT
    if first(args.appinsights_instrumentation_key, "AML_APP_INSIGHTS_KEY") or \
            str(first(None, "AML_APP_INSIGHTS_ENABLED") or "").strip().lower() in SWITCH_ON:
        notes.append(APP_INSIGHTS_NOTE)
    defaults = dict(AZURE_DEFAULTS)
    if script is None and not first(None, "AZUREML_ENTRY_SCRIPT") and not first(None, "MLSCORE_MODEL"):
        default_script = app_root / DEFAULT_SCRIPT
        if not default_script.is_file():
            raise SettingsError(f"no score script: give --entry_script PATH (or AZUREML_ENTRY_SCRIPT, or a config "
                                f"file), or put {DEFAULT_SCRIPT} in the app root {app_root} (AML_APP_ROOT)")
        defaults["entry_script"] = default_script
    environ = {**environ, "AML_APP_ROOT": str(app_root)}
    return Settings.build(cli, environ=environ, config=config, defaults=defaults, flag_names=FLAG_NAMES), notes


def _config_path(flag: str | None, environ: Mapping[str, str], app_root: Path,
                 script: Path | str | None) -> Path | None:
    if flag:
        return Path(flag).expanduser().resolve()
    if environ.get("AZUREML_CONFIG_FILE"):
        return Path(environ["AZUREML_CONFIG_FILE"]).expanduser().resolve()
    folders = [app_root]
    if script:
        folders.append((app_root / Path(script).expanduser()).parent)
    return next((folder / CONFIG_NAME for folder in folders if (folder / CONFIG_NAME).is_file()), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlscore.server import runner  # here, so that --help stays instant

    try:
        settings, notes = azure_settings(args, os.environ)
    except SettingsError as error:
        print(f"azmlinfsrv: error: {error}", file=sys.stderr)
        return runner.EXIT_BAD_SETTINGS
    return runner.run(settings, notes)


if __name__ == "__main__":
    raise SystemExit(main())
