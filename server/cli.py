"""The `mlscore` command line: `mlscore serve …` and `mlscore --version`."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from mlscore import __version__
from mlscore.deploy.model_cli import add_model_commands, run_model_command
from mlscore.deploy.profile import add_profile_command, run_profile_command
from mlscore.deploy.service_cli import add_service_commands, run_service_command
from mlscore.loadtest.cli import add_loadtest_command, run_loadtest_command  # locust itself runs in a child
from mlscore.server.settings import EXECUTORS, LOG_LEVELS, Settings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlscore", description="Serve Azure-ML-style entry scripts (init()/run()).")
    parser.add_argument("--version", action="version", version=f"mlscore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve an entry script over HTTP",
                                description="Serve an entry script's run() on /score.")
    serve.add_argument("--entry-script", dest="entry_script", help="the script with init() and run() "
                       "(env AZUREML_ENTRY_SCRIPT; relative paths are taken against --app-root)")
    serve.add_argument("--model", help="an ONNX model to serve without an entry script: /score and the "
                       "KServe V2 routes take its inputs by name (env MLSCORE_MODEL)")
    serve.add_argument("--model-name", dest="model_name", help="the model's name in /v2/models/NAME (default: "
                       "the file's stem)")
    serve.add_argument("--model-dir", dest="model_dir", help="the model folder (env AZUREML_MODEL_DIR)")
    serve.add_argument("--app-root", dest="app_root", help="the app folder (env AML_APP_ROOT; default: cwd)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 5001)")
    serve.add_argument("--health-fd", dest="health_fd", action="append", default=[], help="serve the health "
                       "routes only on an inherited listening socket, by its file descriptor (as --health-port)")
    serve.add_argument("--accept-after-init", dest="accept_after_init", action="store_const", const=True,
                       help="accept connections on the scoring socket only once init() and the warm-up are done "
                       "(a health listener answers meanwhile): a server started beside another on a shared "
                       "--fd socket then takes no request it would have to refuse (env MLSCORE_ACCEPT_AFTER_INIT)")
    serve.add_argument("--fd", action="append", default=[], help="serve an inherited listening socket by its "
                       "file descriptor, in place of --host and --port (repeatable; env MLSCORE_LISTEN_FDS)")
    serve.add_argument("--health-port", dest="health_port", help="also answer the health routes (/, /health/live, "
                       "/health/ready) on this port, with connections of their own (env MLSCORE_HEALTH_PORT)")
    serve.add_argument("--config", type=Path, help="JSON file whose keys are the environment variables' names")
    serve.add_argument("--inference-config", dest="inference_config", type=Path,
                       help="inference-config JSON (entryScript, sourceDirectory, enableGpu)")
    serve.add_argument("--deploy-config", dest="deploy_config", type=Path,
                       help="deployment-config JSON (maxConcurrentRequestsPerContainer, maxQueueWaitMs, scoringTimeoutMs)")
    serve.add_argument("--log-level", dest="log_level", help=f"one of {', '.join(LOG_LEVELS)} (default info)")
    serve.add_argument("--graceful-timeout", dest="graceful_timeout",
                       help="seconds a stop (SIGTERM, SIGINT) waits for accepted requests to finish (default 30)")
    commands.add_parser("devices", help="list the devices models can run on here (cpu, gpu, opencl)",
                        description="List the devices accelerators.load() can use on this machine.")
    add_model_commands(commands)
    add_service_commands(commands)
    add_profile_command(commands)
    add_loadtest_command(commands)
    admission = serve.add_argument_group("admission")
    admission.add_argument("--max-concurrent-requests", dest="max_concurrent_requests",
                           help="requests in run() at once per replica (default 1)")
    admission.add_argument("--max-queue-wait-ms", dest="max_queue_wait_ms",
                           help="longest wait for a scoring slot before a 503 (default 500)")
    admission.add_argument("--scoring-timeout-ms", dest="scoring_timeout_ms",
                           help="longest run() before a 504 (default 60000)")
    admission.add_argument("--max-queue-size", dest="max_queue_size", help="requests that may wait (default 1024)")
    admission.add_argument("--executor", help=f"one of {', '.join(EXECUTORS)} (default processes; inline: run() "
                           "on the event loop, fastest for sub-millisecond run()s, no scoring timeout)")
    admission.add_argument("--workers", help="scoring processes (env WORKER_COUNT; default: the concurrency limit)")
    admission.add_argument("--max-batch-size", dest="max_batch_size", help="a scoring process (or thread) that "
                           "becomes free takes up to this many queued requests in one model call, for a --model with "
                           "a dynamic first dimension or a run() marked @batched (env MLSCORE_MAX_BATCH_SIZE; "
                           "default 1: no batching)")
    admission.add_argument("--max-batch-delay-ms", dest="max_batch_delay_ms", help="how long a batch may wait for more "
                           "requests to fill it (env MLSCORE_MAX_BATCH_DELAY_MS; default 0: it takes what is queued, "
                           "so a lone request waits for nothing)")
    admission.add_argument("--worker-max-rss-mb", dest="worker_max_rss_mb", help="replace a scoring process "
                           "whose resident memory passed this many MiB, after its request; its replacement runs "
                           "init() first, so no request waits (default: none; images: from memoryInGB)")
    admission.add_argument("--worker-max-requests", dest="worker_max_requests", help="replace a scoring process "
                           "after this many requests, plus a random 0 to --worker-max-requests-jitter (default: none)")
    admission.add_argument("--worker-max-requests-jitter", dest="worker_max_requests_jitter", help="spreads the "
                           "replacements of processes started together (default: a tenth of --worker-max-requests)")
    admission.add_argument("--busy-poll-us", dest="busy_poll_us", help="the front's event loop polls this many "
                           "microseconds after each read before it sleeps, while it is busy: faster answers on "
                           "virtual machines, where waking a sleeping process is slow (env "
                           "MLSCORE_BUSY_POLL_US; default 1000 with more usable cores than scoring processes, else 0: off)")
    devices = serve.add_argument_group("devices")
    devices.add_argument("--device", help="where accelerators.load() runs models: auto (the GPU when a CUDA "
                         "provider works, else the CPU), cpu, gpu or opencl (env MLSCORE_DEVICE; the inference "
                         "config's enableGpu)")
    devices.add_argument("--opencl-binary", dest="opencl_binary", help="a prebuilt OpenCL program binary for the "
                         "opencl device (FPGA boards), in place of building it from source")
    devices.add_argument("--opencl-device", dest="opencl_device", help="which OpenCL device, by index or name "
                         "substring (default: the first GPU or accelerator, else the first device)")
    devices.add_argument("--cpu-threads", dest="cpu_threads", help="onnxruntime's threads per model on the CPU "
                         "(default 0: the cores this process may use, divided among the scoring processes)")
    logs = serve.add_argument_group("logs and data collection")
    logs.add_argument("--log-format", dest="log_format", help="text (default; to stderr) or json (one object per "
                      "line, to stdout, for a log collector)")
    logs.add_argument("--access-log", dest="access_log", help="on or off: a line per request with its id, status "
                      "and timings (default: on with --log-format json, else off)")
    logs.add_argument("--collect-data", dest="collect_data", metavar="DIR", help="write each scored request's "
                      "input and output to JSON-lines files in DIR (env MLSCORE_COLLECT_DATA)")
    logs.add_argument("--collect-rotate-bytes", dest="collect_rotate_bytes", help="start a new data file past "
                      "this size (default 64M)")
    logs.add_argument("--collect-rotate-seconds", dest="collect_rotate_seconds", help="... or this age (default 3600)")
    logs.add_argument("--collect-buffer", dest="collect_buffer", help="records waiting to be written; more are "
                      "dropped and counted in /metrics (default 10000)")
    security = serve.add_argument_group("security and limits")
    security.add_argument("--auth-key", dest="auth_key", action="append", default=[],
                          help="require 'Authorization: Bearer KEY' on /score (give once or twice)")
    security.add_argument("--auth-key-file", dest="auth_key_file", help="a file with the key(s), one per line "
                          "(primary, secondary), re-read when it changes; in place of --auth-key (env "
                          "MLSCORE_AUTH_KEY_FILE)")
    security.add_argument("--metrics-auth", dest="metrics_auth", action="store_const", const=True,
                          help="require the key on /metrics too (env MLSCORE_METRICS_AUTH=on; default: open)")
    security.add_argument("--ssl-cert", dest="ssl_cert", help="serve HTTPS with this PEM certificate (chain) "
                          "(env MLSCORE_SSL_CERT; an encrypted key's password: MLSCORE_SSL_KEY_PASSWORD)")
    security.add_argument("--ssl-key", dest="ssl_key", help="the certificate's PEM private key (env MLSCORE_SSL_KEY)")
    security.add_argument("--cors-origins", dest="cors_origins", help="comma-separated origins or * (env AML_CORS_ORIGINS)")
    security.add_argument("--max-body-bytes", dest="max_body_bytes", help="largest request body (default 100 MiB)")
    security.add_argument("--max-json-depth", dest="max_json_depth", help="deepest nesting of request JSON "
                          "(default 64)")
    security.add_argument("--max-header-bytes", dest="max_header_bytes", help="largest request line and headers "
                          "together, else 431 (default 65536)")
    security.add_argument("--header-timeout", dest="header_timeout", help="seconds from a request's first byte to "
                          "the end of its headers, else 408 (default 10)")
    security.add_argument("--body-timeout", dest="body_timeout", help="longest pause in seconds while a body "
                          "arrives before the connection is closed (default 30)")
    security.add_argument("--body-min-rate", dest="body_min_rate", help="bytes per second a request body must "
                          "average: it has --body-timeout seconds plus one more per this many bytes, else 408 "
                          "(default 500; 0: no bound)")
    security.add_argument("--keep-alive-timeout", dest="keep_alive_timeout", help="seconds an idle connection "
                          "stays open (default 75)")
    security.add_argument("--max-connections", dest="max_connections", help="open connections; more are "
                          "answered 503 (default 10000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse hands a subcommand's unknown flags up to the top-level parser, whose usage would
        # not list the subcommand's flags: the subcommand's parser says it instead.
        _unrecognized(_given_command(parser, args), unknown)
    if args.command == "devices":
        return _list_devices()
    if args.command == "model":
        return run_model_command(args)
    if args.command in ("deploy", "service"):
        return run_service_command(args)
    if args.command == "profile":
        return run_profile_command(args)
    if args.command == "loadtest":
        return run_loadtest_command(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    from mlscore.server import runner  # imported here so `--version` and `--help` stay instant

    files = ("command", "config", "deploy_config", "inference_config")
    cli = {key: value for key, value in vars(args).items() if key not in files}
    try:
        settings = Settings.build(cli, config_file=args.config, deploy_config=args.deploy_config,
                                  inference_config=args.inference_config)
    except SettingsError as error:
        print(f"mlscore: error: {error}", file=sys.stderr)
        return runner.EXIT_BAD_SETTINGS
    return runner.run(settings)


def _given_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command the arguments chose, however deep (argparse offers no public way
    to its subparsers)."""
    while True:
        commands = next((action for action in parser._actions if isinstance(action, argparse._SubParsersAction)), None)
        chosen = getattr(args, commands.dest, None) if commands is not None else None
        if commands is None or chosen not in commands.choices:
            return parser
        parser = commands.choices[chosen]


def _unrecognized(parser: argparse.ArgumentParser, unknown: list[str]) -> NoReturn:
    """Exit 2 with the command's usage and the unknown arguments, naming the flag meant when one is close."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    guesses: list[str] = []
    for given in unknown:
        if given.startswith("--"):
            guesses += difflib.get_close_matches(given.split("=", 1)[0], flags, n=1, cutoff=0.75)
    hint = f" (did you mean {' or '.join(dict.fromkeys(guesses))}?)" if guesses else ""
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _list_devices() -> int:
    from mlscore.accelerators import available_devices

    for device in available_devices():
        details = ", ".join(f"{key}: {value}" for key, value in device.details.items())
        print(f"{device.kind:<7} {device.name}" + (f"  ({details})" if details else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
