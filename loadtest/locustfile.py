"""Locust users that load-test any scoring URL, mlscore's or another server's:

    locust -f mlscore/loadtest/locustfile.py --host http://127.0.0.1:5001/score [--payload FILE] [--key KEY]

`--host` may carry the scoring path (`/score`, `/v2/models/NAME/infer`; else `--scoring-path`,
else /score). Without `--payload` the body is the example in the service's Swagger document, or
zeros of the model's inputs for V2 infer (see `target.py`). Each user posts it in a closed loop;
503 and 504 answers are failures of their own kinds (see `outcomes.py`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.exception import CatchResponseError

from mlscore.loadtest.outcomes import failure_kind
from mlscore.loadtest.report import PERCENTILES, PROGRESS_MARK, percentile
from mlscore.loadtest.target import KEY_ENV, Target, TargetError, resolve

logger = logging.getLogger("mlscore.loadtest")


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("mlscore scoring target")
    group.add_argument("--scoring-path", default="", help="the path to post to, when --host has none "
                       "(default /score; also /v2/models/NAME/infer)")
    group.add_argument("--payload", default="", help="a file with the request body (default: the example in the "
                       "service's /swagger.json, or zeros of the V2 model's inputs)")
    group.add_argument("--content-type", default="", help="the payload's content type (default: what the file's "
                       "name implies, else application/json)")
    group.add_argument("--key", default="", env_var=KEY_ENV, help="send 'Authorization: Bearer KEY'")
    group.add_argument("--progress-json", type=float, default=0.0, help="print one JSON line of figures every this "
                       "many seconds, for mlscore loadtest (default 0: off)")


class ScoringUser(FastHttpUser):
    """Posts the target's request, then the next as soon as it is answered (a closed loop)."""

    wait_time = constant(0)
    target: Target | None = None  # resolved once per test run, before any user starts
    target_host: str | None = None  # the --host it was resolved for

    @task
    def score(self) -> None:
        target = self.target
        assert target is not None, "the scoring target is resolved when the test starts"
        with self.client.request("POST", target.url, name=target.path, data=target.body, headers=target.headers,
                                 catch_response=True) as response:
            kind = failure_kind(response.status_code, getattr(response, "error", None))
            if kind is None:
                response.success()
            else:
                response.failure(kind)


@events.init.add_listener
def _resolve_at_init(environment: Environment, **_: Any) -> None:
    # A headless run knows its host now; failing here stops locust before any user starts.
    if environment.parsed_options is not None and environment.host:
        try:
            _resolve(environment)
        except TargetError as error:
            logger.error("%s", error)
            raise SystemExit(2) from None
    # gevent's clock is the loop's cached time, stale by however long the imports and this took;
    # locust times --run-time from it next, so without this a 5 s run lasts 4.6 s.
    gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _resolve_at_start(environment: Environment, **_: Any) -> None:
    # The web UI may set or change the host only when a test starts.
    if ScoringUser.target is not None and ScoringUser.target_host == environment.host:
        return
    try:
        _resolve(environment)
    except TargetError as error:
        logger.error("%s", error)
        if environment.runner is not None:
            environment.runner.quit()


def _resolve(environment: Environment) -> None:
    options = environment.parsed_options
    if not environment.host:
        raise TargetError("no host: give --host with the scoring URL, e.g. http://127.0.0.1:5001/score")
    target = resolve(environment.host, path=options.scoring_path or None,
                     payload=Path(options.payload) if options.payload else None,
                     content_type=options.content_type or None, key=options.key or None)
    logger.info("posting %d bytes (%s, %s) to %s", len(target.body), target.content_type, target.source, target.url)
    ScoringUser.target, ScoringUser.target_host = target, environment.host


# --- progress for `mlscore loadtest` ---------------------------------------------------------------


class _Progress:
    """Every `interval` seconds, the figures of the interval just ended (from the difference of
    locust's cumulative histogram), printed as one marked JSON line; the failures by kind at the end."""

    def __init__(self, environment: Environment, interval: float) -> None:
        self.environment = environment
        self.interval = interval
        self.started = time.monotonic()
        self.users = 0
        self.last = self._snapshot()
        self.greenlet = gevent.spawn(self._loop)

    def _snapshot(self) -> tuple[float, int, int, dict[float, int]]:
        total = self.environment.stats.total
        return time.monotonic(), total.num_requests, total.num_failures, dict(total.response_times)

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.emit()

    def emit(self, users: int | None = None) -> None:
        """Print the interval since the last emit; `users` is the count during it (default: now)."""
        now, requests, failures, histogram = snapshot = self._snapshot()
        then, requests_before, failures_before, histogram_before = self.last
        self.last = snapshot
        window = {key: count - histogram_before.get(key, 0) for key, count in histogram.items()
                  if count > histogram_before.get(key, 0)}
        elapsed = max(now - then, 1e-9)
        if users is None:
            users = self.environment.runner.user_count if self.environment.runner else 0
        self.users = users
        _print({
            "t_s": round(now - self.started, 3), "users": users,
            "requests": requests - requests_before, "failures": failures - failures_before,
            "requests_per_s": round((requests - requests_before) / elapsed, 2),
            "failures_per_s": round((failures - failures_before) / elapsed, 2),
            **{f"p{p}_ms": percentile(window, p / 100) for p in PERCENTILES},
            "total_requests": requests, "total_failures": failures,
        })

    def finish(self) -> None:
        self.greenlet.kill(block=False)
        if self.environment.stats.total.num_requests > self.last[1]:  # the tail since the last full interval
            self.emit(users=self.users)  # ... whose users have stopped by now
        _print({"failures_by_kind": failures_by_kind(self.environment)})


def failures_by_kind(environment: Environment) -> dict[str, int]:
    """{failure kind: occurrences}: locust's error table keyed by the message given to failure()."""
    counts: dict[str, int] = {}
    for entry in environment.stats.errors.values():
        error = entry.error
        kind = error.args[0] if isinstance(error, CatchResponseError) and error.args else str(error)
        counts[kind] = counts.get(kind, 0) + entry.occurrences
    return counts


def _print(record: dict[str, Any]) -> None:
    print(PROGRESS_MARK + json.dumps(record), flush=True)


_progress: list[_Progress] = []


@events.test_start.add_listener
def _start_progress(environment: Environment, **_: Any) -> None:
    interval = getattr(environment.parsed_options, "progress_json", 0.0)
    if interval > 0:
        _progress.append(_Progress(environment, interval))


@events.test_stop.add_listener
def _finish_progress(environment: Environment, **_: Any) -> None:
    while _progress:
        _progress.pop().finish()
