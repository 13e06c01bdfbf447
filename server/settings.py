"""All settings of a scoring server, gathered and validated once before anything starts.

Sources, highest first: CLI flags, environment variables, the `--config` JSON file (keys are the
environment variables' names, as Azure's `AZUREML_CONFIG_FILE`), the deployment-config JSON and
the inference-config JSON (Azure's field names), defaults. A bad value stops the start with one
line naming the setting.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from mlscore.scoring.json_limits import DEFAULT_MAX_DEPTH
from mlscore.server.auth import MAX_KEYS, KeyFileError, read_key_file

EXECUTORS = ("processes", "threads", "inline")
# The highest admission settings the server takes (the deployment config's validation quotes them).
MAX_CONCURRENT_REQUESTS_LIMIT = 1000
MAX_QUEUE_WAIT_MS_LIMIT = 3_600_000  # 1 h
SCORING_TIMEOUT_MS_LIMIT = 86_400_000  # 24 h
DEVICES = ("auto", "cpu", "gpu", "opencl")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
SWITCH_ON, SWITCH_OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


class SettingsError(ValueError):
    """A setting with a value that cannot be used; the message names the setting and what is allowed."""


@dataclass(frozen=True, slots=True)
class Setting:
    """How one setting is read: its CLI flag, environment variables, deployment-config field, parser."""

    name: str
    flag: str | None
    env: tuple[str, ...]
    deploy_key: str | None
    parse: Callable[[str, Any], Any]
    default: Any = None
    inference_key: str | None = None  # its field in the inference config


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def parse(label: str, value: Any) -> int:
        if isinstance(value, bool):
            raise SettingsError(f"{label}={value!r}: must be an integer")
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise SettingsError(f"{label}={value!r}: must be an integer") from None
        if number < minimum or (maximum is not None and number > maximum):
            allowed = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise SettingsError(f"{label}={number}: must be {allowed}")
        return number

    return parse


def _seconds(maximum: float) -> Callable[[str, Any], float]:
    def parse(label: str, value: Any) -> float:
        if isinstance(value, bool):
            raise SettingsError(f"{label}={value!r}: must be a number of seconds")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise SettingsError(f"{label}={value!r}: must be a number of seconds") from None
        if not 0 < number <= maximum:  # also refuses NaN
            raise SettingsError(f"{label}={number:g}: must be more than 0 and at most {maximum:g} seconds")
        return number

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(label: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise SettingsError(f"{label}={value!r}: must be one of {', '.join(choices)}")
        return text

    return parse


def _device(label: str, value: Any) -> str:
    if isinstance(value, bool):  # the inference config's enableGpu
        return "gpu" if value else "cpu"
    return _choice(DEVICES)(label, value)


def _text(label: str, value: Any) -> str:
    return str(value)


def _path(label: str, value: Any) -> Path:
    text = str(value).strip()
    if not text:
        raise SettingsError(f"{label}: must not be empty")
    return Path(text).expanduser()


def _items(value: Any) -> list[str]:
    """A list's items (repeated flags, JSON), or a comma-separated value's, stripped."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(item).strip() for item in items]


def _keys(label: str, value: Any) -> tuple[str, ...]:
    """The auth keys given. A blank one is refused rather than skipped: `--auth-key ""` (an unset
    variable in a script) would otherwise start the server with authentication silently off."""
    keys = tuple(_items(value))
    if not all(keys):
        raise SettingsError(f"{label}: a key is empty or blank, which would turn authentication off; give the "
                            "key, or leave the setting out to serve without keys")
    if len(keys) > MAX_KEYS:
        raise SettingsError(f"{label}: at most two keys (primary, secondary), got {len(keys)}")
    return keys


def _fds(label: str, value: Any) -> tuple[int, ...]:
    fds = []
    for text in _items(value):
        if not text.isdigit():
            raise SettingsError(f"{label}: a file descriptor number, got {text!r}")
        fds.append(int(text))
    return tuple(fds)


def _switch(label: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in SWITCH_ON or text in SWITCH_OFF:
        return text in SWITCH_ON
    raise SettingsError(f"{label}={value!r}: must be on or off (also true/false, yes/no, 1/0)")


def _byte_size(minimum: int) -> Callable[[str, Any], int]:
    """A number of bytes, or of KiB, MiB, GiB with a K, M or G suffix (64M)."""
    def parse(label: str, value: Any) -> int:
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if scale > 1 else text
        if isinstance(value, bool) or not digits.strip().isdigit():
            raise SettingsError(f"{label}={value!r}: must be a number of bytes, or of KiB, MiB, GiB with a K, M "
                                "or G suffix (64M)")
        number = int(digits) * scale
        if number < minimum:
            raise SettingsError(f"{label}={value!r}: must be at least {minimum} bytes")
        return number

    return parse


def _origins(label: str, value: Any) -> tuple[str, ...]:
    return tuple(item for item in _items(value) if item)


SETTINGS: tuple[Setting, ...] = (
    Setting("entry_script", "entry_script", ("AZUREML_ENTRY_SCRIPT",), None, _path, inference_key="entryScript"),
    Setting("model", "model", ("MLSCORE_MODEL",), None, _path),
    Setting("model_name", "model_name", ("MLSCORE_MODEL_NAME",), None, _text),
    Setting("device", "device", ("MLSCORE_DEVICE",), None, _device, "auto", inference_key="enableGpu"),
    Setting("opencl_binary", "opencl_binary", ("MLSCORE_OPENCL_BINARY",), None, _path),
    Setting("opencl_device", "opencl_device", ("MLSCORE_OPENCL_DEVICE",), None, _text),
    Setting("cpu_threads", "cpu_threads", ("MLSCORE_CPU_THREADS",), None, _integer(0, 1024), 0),
    Setting("model_dir", "model_dir", ("AZUREML_MODEL_DIR",), None, _path),
    Setting("app_root", "app_root", ("AML_APP_ROOT",), None, _path),
    Setting("source_directory", None, ("AZUREML_SOURCE_DIRECTORY",), None, _path, inference_key="sourceDirectory"),
    Setting("host", "host", ("MLSCORE_HOST",), None, _text, "127.0.0.1"),
    Setting("port", "port", ("MLSCORE_PORT",), "port", _integer(0, 65535), 5001),
    Setting("listen_fds", "fd", ("MLSCORE_LISTEN_FDS",), None, _fds, ()),
    Setting("health_port", "health_port", ("MLSCORE_HEALTH_PORT",), None, _integer(0, 65535)),
    Setting("health_fds", "health_fd", ("MLSCORE_HEALTH_FDS",), None, _fds, ()),
    Setting("accept_after_init", "accept_after_init", ("MLSCORE_ACCEPT_AFTER_INIT",), None, _switch, False),
    Setting("log_level", "log_level", ("MLSCORE_LOG_LEVEL", "AZUREML_LOG_LEVEL"), None, _choice(LOG_LEVELS), "info"),
    Setting("log_format", "log_format", ("MLSCORE_LOG_FORMAT",), None, _choice(LOG_FORMATS), "text"),
    Setting("access_log", "access_log", ("MLSCORE_ACCESS_LOG",), None, _switch),  # None: on with json logs
    Setting("collect_data", "collect_data", ("MLSCORE_COLLECT_DATA",), None, _path),
    Setting("collect_rotate_bytes", "collect_rotate_bytes", ("MLSCORE_COLLECT_ROTATE_BYTES",), None,
            _byte_size(1024), 64 << 20),
    Setting("collect_rotate_seconds", "collect_rotate_seconds", ("MLSCORE_COLLECT_ROTATE_SECONDS",), None,
            _seconds(7 * 86_400), 3600.0),
    Setting("collect_buffer", "collect_buffer", ("MLSCORE_COLLECT_BUFFER",), None, _integer(1, 10_000_000), 10_000),
    Setting("max_concurrent_requests", "max_concurrent_requests", ("MLSCORE_MAX_CONCURRENT_REQUESTS",),
            "maxConcurrentRequestsPerContainer", _integer(1, MAX_CONCURRENT_REQUESTS_LIMIT), 1),
    Setting("max_queue_wait_ms", "max_queue_wait_ms", ("MLSCORE_MAX_QUEUE_WAIT_MS",), "maxQueueWaitMs",
            _integer(0, MAX_QUEUE_WAIT_MS_LIMIT), 500),
    Setting("scoring_timeout_ms", "scoring_timeout_ms", ("MLSCORE_SCORING_TIMEOUT_MS", "SCORING_TIMEOUT_MS"),
            "scoringTimeoutMs", _integer(1, SCORING_TIMEOUT_MS_LIMIT), 60_000),
    Setting("max_queue_size", "max_queue_size", ("MLSCORE_MAX_QUEUE_SIZE",), None, _integer(0, 1_000_000), 1024),
    Setting("executor", "executor", ("MLSCORE_EXECUTOR",), None, _choice(EXECUTORS), "processes"),
    Setting("workers", "workers", ("WORKER_COUNT",), None, _integer(1, 256)),
    Setting("max_batch_size", "max_batch_size", ("MLSCORE_MAX_BATCH_SIZE",), "maxBatchSize", _integer(1, 1024), 1),
    Setting("max_batch_delay_ms", "max_batch_delay_ms", ("MLSCORE_MAX_BATCH_DELAY_MS",), "maxBatchDelayMs",
            _integer(0, 10_000), 0),
    Setting("busy_poll_us", "busy_poll_us", ("MLSCORE_BUSY_POLL_US",), None, _integer(0, 1_000_000)),
    Setting("worker_max_rss_mb", "worker_max_rss_mb", ("MLSCORE_WORKER_MAX_RSS_MB",), None, _integer(1, 1 << 30)),
    Setting("worker_max_requests", "worker_max_requests", ("MLSCORE_WORKER_MAX_REQUESTS",), None,
            _integer(1, 1 << 62)),
    Setting("worker_max_requests_jitter", "worker_max_requests_jitter", ("MLSCORE_WORKER_MAX_REQUESTS_JITTER",),
            None, _integer(0, 1 << 62)),
    Setting("graceful_timeout", "graceful_timeout", ("MLSCORE_GRACEFUL_TIMEOUT",), None, _seconds(86_400), 30.0),
    Setting("auth_keys", "auth_key", ("MLSCORE_AUTH_KEYS",), None, _keys, ()),
    Setting("auth_key_file", "auth_key_file", ("MLSCORE_AUTH_KEY_FILE",), None, _path),
    Setting("metrics_auth", "metrics_auth", ("MLSCORE_METRICS_AUTH",), None, _switch, False),
    Setting("ssl_cert", "ssl_cert", ("MLSCORE_SSL_CERT",), None, _path),
    Setting("ssl_key", "ssl_key", ("MLSCORE_SSL_KEY",), None, _path),
    Setting("ssl_key_password", None, ("MLSCORE_SSL_KEY_PASSWORD",), None, _text),
    Setting("cors_origins", "cors_origins", ("AML_CORS_ORIGINS",), None, _origins, ()),
    Setting("max_body_bytes", "max_body_bytes", ("MLSCORE_MAX_BODY_BYTES",), None, _integer(1), 100 * 1024 * 1024),
    Setting("max_json_depth", "max_json_depth", ("MLSCORE_MAX_JSON_DEPTH",), None, _integer(1, 1024),
            DEFAULT_MAX_DEPTH),
    Setting("max_header_bytes", "max_header_bytes", ("MLSCORE_MAX_HEADER_BYTES",), None,
            _integer(1024, 1024 * 1024), 64 * 1024),
    Setting("header_timeout", "header_timeout", ("MLSCORE_HEADER_TIMEOUT",), None, _seconds(3600), 10.0),
    Setting("body_timeout", "body_timeout", ("MLSCORE_BODY_TIMEOUT",), None, _seconds(3600), 30.0),
    Setting("body_min_rate", "body_min_rate", ("MLSCORE_BODY_MIN_RATE",), None, _integer(0, 1 << 40), 500),
    Setting("keep_alive_timeout", "keep_alive_timeout", ("MLSCORE_KEEP_ALIVE_TIMEOUT",), None, _seconds(3600), 75.0),
    Setting("max_connections", "max_connections", ("MLSCORE_MAX_CONNECTIONS",), None, _integer(1, 1_000_000), 10_000),
    Setting("service_name", None, ("SERVICE_NAME",), None, _text, "ML service"),
    Setting("service_version", None, ("SERVICE_VERSION",), None, _text, "1.0"),
    Setting("path_prefix", None, ("SERVICE_PATH_PREFIX",), None, _text, ""),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings; built by `Settings.build`, whose SETTINGS table holds the defaults."""

    entry_script: Path | None
    model: Path | None  # an ONNX model served without a script
    model_name: str | None
    device: str
    opencl_binary: Path | None
    opencl_device: str | None  # an index or a name substring, when there are several
    cpu_threads: int  # onnxruntime's threads per session; 0: its default
    model_dir: Path | None
    app_root: Path
    source_directory: Path | None
    host: str
    port: int
    listen_fds: tuple[int, ...]  # inherited listening sockets, served in place of host and port
    health_port: int | None  # a second listener, on the same host, that answers only the health routes
    health_fds: tuple[int, ...]  # inherited listening sockets for that listener
    accept_after_init: bool  # the scoring sockets accept only once init() and the warm-up are done
    log_level: str
    log_format: str  # text (people) or json (collectors: one object per line)
    access_log: bool  # a line per request, whatever the log level
    collect_data: Path | None  # model data collection: the folder of its JSON-lines files
    collect_rotate_bytes: int  # a data file is closed past this size
    collect_rotate_seconds: float  # ... or this age
    collect_buffer: int  # records waiting for the writer; more are dropped and counted
    max_concurrent_requests: int
    max_queue_wait_ms: int
    scoring_timeout_ms: int
    max_queue_size: int
    executor: str
    workers: int
    max_batch_size: int  # queued requests one model call may take (1: no batching)
    max_batch_delay_ms: int  # how long a batch may wait to fill (0: it takes what is queued)
    busy_poll_us: int | None  # how long the front polls after a read (None: 1000 with 2+ cores, else 0)
    worker_max_rss_mb: int | None  # a worker past this resident memory is replaced after its request
    worker_max_requests: int | None  # ... or past this many requests (plus up to the jitter)
    worker_max_requests_jitter: int  # up to this many more requests, at random (default: a tenth of the bound)
    graceful_timeout: float  # seconds a stop waits for accepted requests
    auth_keys: tuple[str, ...]  # from --auth-key, MLSCORE_AUTH_KEYS or, as read at start, the key file
    auth_key_file: Path | None  # re-read while serving when it changes
    metrics_auth: bool  # /metrics needs a key too
    ssl_cert: Path | None
    ssl_key: Path | None
    ssl_key_password: str | None
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    max_json_depth: int  # nesting of request JSON the server decodes
    max_header_bytes: int  # request line and headers together
    header_timeout: float  # seconds from a request's first byte to the end of its headers
    body_timeout: float  # longest pause, in seconds, while a request body arrives
    body_min_rate: int  # bytes per second a body must average after its first body_timeout seconds; 0: no bound
    keep_alive_timeout: float  # seconds an idle connection stays open
    max_connections: int  # open connections; more are answered 503 and closed
    service_name: str
    service_version: str
    path_prefix: str
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # setting → where its value came from

    @classmethod
    def build(
        cls,
        cli: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        deploy_config: Path | None = None,
        inference_config: Path | None = None,
        defaults: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        flag_names: Mapping[str, str] | None = None,
    ) -> "Settings":
        """The settings from every source; raises SettingsError on the first unusable value.
        `defaults` replaces the table's defaults of some settings (azmlinfsrv has Azure's); `config`
        is the config file's content when the caller has read it already; `flag_names` the flags as
        another command spells them (`{"workers": "--worker_count"}`), for error messages."""
        cli = {key: value for key, value in (cli or {}).items() if value is not None and value != []}
        environ = os.environ if environ is None else environ
        defaults = defaults or {}
        if config is None:
            config = read_config_file(config_file, environ)
        deploy = _read_json(deploy_config, "--deploy-config") if deploy_config else {}
        inference = _read_json(inference_config, "--inference-config") if inference_config else {}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for setting in SETTINGS:
            found = _lookup(setting, cli, environ, config, deploy, inference, flag_names or {})
            if found is None:
                values[setting.name] = defaults.get(setting.name, setting.default)
                sources[setting.name] = "default"
                continue
            label, raw = found
            values[setting.name] = setting.parse(label, raw)
            sources[setting.name] = label
        if values["model"] is not None and values["entry_script"] is not None:
            raise SettingsError(f"{sources['model']} and {sources['entry_script']}: serve an entry script or a "
                                "model, not both")
        if values["model_name"] is None and values["model"] is not None:
            values["model_name"] = values["model"].stem
        if values["model_name"] is not None and not MODEL_NAME.fullmatch(values["model_name"]):
            raise SettingsError(f"{sources['model_name'] if sources['model_name'] != 'default' else 'the model name'}"
                                f"={values['model_name']!r}: use letters, digits, '.', '_' and '-' (it is part of "
                                "the /v2/models/NAME routes); --model-name sets it")
        if values["health_port"] is not None and values["health_port"] == values["port"] != 0:
            raise SettingsError(f"{sources['health_port']}={values['health_port']}: the health port must differ from "
                                f"the scoring port ({sources['port']})")
        if values["access_log"] is None:
            values["access_log"] = values["log_format"] == "json"
        if values["workers"] is None:
            values["workers"] = values["max_concurrent_requests"]
        elif sources["max_concurrent_requests"] == "default":
            # As on Azure, each worker scores one request at a time: N workers, N requests in run().
            values["max_concurrent_requests"] = values["workers"]
        _check_recycling(values, sources)
        _check_busy_poll(values, sources)
        _check_security(values, sources)
        if values["app_root"] is None:
            values["app_root"] = Path.cwd()
        return cls(**values, sources=sources)

    def redacted(self) -> dict[str, Any]:
        """The effective settings for logs: secrets replaced by their count."""
        shown = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "sources"}
        shown["auth_keys"] = f"{len(self.auth_keys)} key(s)"
        shown["ssl_key_password"] = "set" if self.ssl_key_password else None
        return {key: str(value) if isinstance(value, Path) else value for key, value in shown.items()}

    def given(self) -> dict[str, Any]:
        """The redacted settings that a flag, a variable or a config file set: the others are defaults."""
        shown = self.redacted()
        return {name: shown[name] for name, source in self.sources.items() if source != "default"}

    def summary(self) -> str:
        """The start-up log's settings line: `name=value` for each setting given, with where it came
        from when that was not its flag (`executor=threads (MLSCORE_EXECUTOR)`)."""
        pairs = []
        for name, value in self.given().items():
            origin = _origin(self.sources[name])
            pairs.append(f"{name}={_shown(value)}" + (f" ({origin})" if origin else ""))
        return ", ".join(pairs) or "all defaults"


def _origin(label: str) -> str:
    """Where a setting's value came from, short: "" for a flag, the variable's name, or which file."""
    if label.startswith("-"):
        return ""
    name, _, file = label.partition(" (")
    return file.rstrip(")") if file else name


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    text = str(value)
    return repr(text) if not text or "," in text else text  # the line's pairs are comma-separated


def _lookup(
    setting: Setting, cli: Mapping[str, Any], environ: Mapping[str, str], config: Mapping[str, Any],
    deploy: Mapping[str, Any], inference: Mapping[str, Any], flag_names: Mapping[str, str],
) -> tuple[str, Any] | None:
    """(label naming the source, raw value) of the highest source that sets this setting."""
    if setting.flag and setting.flag in cli:
        return flag_names.get(setting.flag) or f"--{setting.flag.replace('_', '-')}", cli[setting.flag]
    for name in setting.env:
        if environ.get(name, "") != "":
            return name, environ[name]
    for name in setting.env:
        if name in config:
            return f"{name} (config file)", config[name]
    if setting.deploy_key and setting.deploy_key in deploy:
        return f"{setting.deploy_key} (deployment config)", deploy[setting.deploy_key]
    if setting.inference_key and setting.inference_key in inference:
        return f"{setting.inference_key} (inference config)", inference[setting.inference_key]
    return None


def _check_recycling(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """Worker recycling needs worker processes (images set a default bound from memoryInGB, whatever
    executor the inference config's variables choose). The jitter defaults to a tenth of the bound."""
    _processes_only(values, sources, ("worker_max_rss_mb", "worker_max_requests", "worker_max_requests_jitter"),
                    "replace scoring processes")
    if values["worker_max_requests_jitter"] is None:
        values["worker_max_requests_jitter"] = (values["worker_max_requests"] or 0) // 10


def _check_busy_poll(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """Busy polling waits for scoring processes' answers: the other executors score on the event
    loop's own process, where polling would hold the GIL that their scoring needs."""
    _processes_only(values, sources, ("busy_poll_us",), "polls for scoring processes' answers")


def _processes_only(values: dict[str, Any], sources: Mapping[str, str], names: tuple[str, ...], does: str) -> None:
    """Settings that only the processes executor has: with another executor, a flag giving one is an
    error (SettingsError saying that it `does` what the executor lacks), and the environment's values
    are left unused."""
    if values["executor"] == "processes":
        return
    given = [sources[name] for name in names if values[name] is not None and sources[name].startswith("--")]
    if given:
        raise SettingsError(f"{' and '.join(given)}: {does}, which executor {values['executor']!r} "
                            f"({sources['executor']}) does not have; use the processes executor")
    for name in names:
        values[name] = None


def _check_security(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """Keys read from the key file, and a TLS pair that loads; SettingsError otherwise."""
    if values["auth_key_file"] is not None:
        if values["auth_keys"]:
            raise SettingsError(f"{sources['auth_key_file']} and {sources['auth_keys']}: give the keys one way "
                                "(a key file, or keys)")
        try:
            values["auth_keys"] = read_key_file(values["auth_key_file"])
        except KeyFileError as error:
            raise SettingsError(f"{sources['auth_key_file']} {error}") from None
    if values["ssl_cert"] is None:
        if values["ssl_key"] is not None:
            raise SettingsError(f"{sources['ssl_key']}: needs a certificate too (--ssl-cert or MLSCORE_SSL_CERT)")
        return
    try:
        tls_context(values["ssl_cert"], values["ssl_key"], values["ssl_key_password"])
    except TlsError as error:
        named = " and ".join(sources[name] for name in ("ssl_cert", "ssl_key") if values[name] is not None)
        raise SettingsError(f"{named}: {error}") from None


class TlsError(ValueError):
    """A certificate and key that cannot serve TLS."""


def tls_context(cert: Path, key: Path | None, password: str | None) -> ssl.SSLContext:
    """A server TLS context from a PEM certificate (chain) and its key (or one file with both)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for path in (cert, key):
        if path is not None and not path.is_file():
            raise TlsError(f"{path}: file not found")
    try:
        # A callable, even for no password: with None, OpenSSL would prompt on the terminal for one.
        context.load_cert_chain(cert, key, lambda: password or "")
    except PermissionError as error:
        raise TlsError(f"{error.filename or cert}: cannot be read ({error.strerror})") from None
    except ssl.SSLError as error:
        raise TlsError(_unusable_pair(cert, key, password, getattr(error, "reason", None) or str(error))) from None
    except OSError as error:
        raise TlsError(f"cannot be read: {error}") from None
    return context


def _unusable_pair(cert: Path, key: Path | None, password: str | None, reason: str) -> str:
    """Why OpenSSL refused a certificate and key, in words: its own reason is often just "PEM lib"."""
    if reason == "KEY_VALUES_MISMATCH":
        return (f"the key does not belong to the certificate: {key} is not the key of {cert}" if key is not None
                else f"the key does not belong to the certificate: {cert} holds a key of another certificate")
    cert_text = _read(cert)
    key_text = cert_text if key is None else _read(key)
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        return f"{cert} holds no PEM certificate (a -----BEGIN CERTIFICATE----- block)"
    if b"PRIVATE KEY-----" not in key_text:
        if key is None:
            return (f"{cert} holds a certificate but no private key: give the key with --ssl-key (or "
                    "MLSCORE_SSL_KEY), or append it to that file")
        return f"{key} holds no PEM private key (a -----BEGIN PRIVATE KEY----- block)"
    if b"ENCRYPTED" in key_text:
        if password:
            return f"the key in {key or cert} is encrypted, and MLSCORE_SSL_KEY_PASSWORD does not open it"
        return f"the key in {key or cert} is encrypted: give its password in MLSCORE_SSL_KEY_PASSWORD"
    files = f"{cert} and {key}" if key is not None else str(cert)
    return f"{files}: not a usable PEM certificate and key ({reason})"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def read_config_file(path: Path | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The `--config` file (or `AZUREML_CONFIG_FILE`'s): keys are the environment variables' names."""
    path = path or (Path(environ["AZUREML_CONFIG_FILE"]) if environ.get("AZUREML_CONFIG_FILE") else None)
    return _read_json(path, "config file") if path else {}


def _read_json(path: Path, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{flag} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"{flag} {path}: cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise SettingsError(f"{flag} {path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{flag} {path}: must hold a JSON object")
    return data


def log_level_number(level: str) -> int:
    return logging.getLevelName(level.upper())
