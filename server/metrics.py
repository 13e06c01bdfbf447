"""Prometheus metrics, owned by the front process and served on `GET /metrics`.

Each server gets its own registry, so that several apps in one process (tests) never share counts.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from mlscore.server import logs

if TYPE_CHECKING:
    from mlscore.server.app import ServerState

# Why a scoring worker was replaced (the processes executor's `restarts`).
RESTART_REASONS = ("scoring_timeout", "crash", "max_rss", "max_requests")
REJECTION_REASONS = ("queue_full", "queue_timeout", "scoring_timeout", "client_disconnect", "worker_died", "not_ready")
# Latency buckets from 0.5 ms to 60 s: scoring spans sub-millisecond linear models to minute-long ones.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Requests per model call (batching).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


class Metrics:
    """The front's metrics. What every request updates is kept as plain counts, written only by the
    event loop's thread and read when scraped (`_Counts`): prometheus-client's Counter and Histogram
    take a lock per update, seven per scored request, a few per cent of a small model's front."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests: dict[tuple[str, int], int] = {}
        self._rejections = dict.fromkeys(REJECTION_REASONS, 0)  # present at 0 from the start, so rates work
        self._latency = _Histogram()
        self._queue = _Histogram()
        self._run = _Histogram()
        self._batch_size = _Histogram(BATCH_BUCKETS)
        self._batch_wait = _Histogram()
        self.init_seconds = Gauge("mlscore_init_duration_seconds", "How long init() (and the first workers' "
                                  "start) took.", registry=self.registry)
        self.registry.register(_Counts(self))

    def watch(self, state: "ServerState") -> None:
        """Gauges read when scraped, from the admission queue and the executor."""
        Gauge("mlscore_in_flight", "Requests holding a scoring slot.", registry=self.registry).set_function(
            lambda: state.admission.in_use)
        Gauge("mlscore_queue_depth", "Requests waiting for a scoring slot.", registry=self.registry).set_function(
            lambda: state.admission.queued)
        self.registry.register(_Tallies(state))

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        self._requests[key] = self._requests.get(key, 0) + 1

    def scored(self, total: float, queue: float, run_ms: float | None) -> None:
        self._latency.observe(total)
        self._queue.observe(queue)
        if run_ms is not None:
            self._run.observe(run_ms / 1000.0)

    def batched(self, requests: int) -> None:
        """A model call that took `requests` requests."""
        self._batch_size.observe(requests)

    def batch_waited(self, seconds: float) -> None:
        """A batch that started with more than one request, or after waiting for more."""
        self._batch_wait.observe(seconds)

    def rejected(self, reason: str) -> None:
        self._rejections[reason] = self._rejections.get(reason, 0) + 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Histogram:
    """Observations counted per bucket of BUCKETS (the last one +Inf), and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value: le is inclusive
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative = list(itertools.accumulate(self.counts))
        return HistogramMetricFamily(name, documentation, sum_value=self.sum, buckets=[
            (floatToGoString(bound), count) for bound, count in zip((*self.bounds, math.inf), cumulative)])


class _Counts:
    """The per-request counts of a Metrics, in Prometheus form when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        metrics = self._metrics
        requests = CounterMetricFamily("mlscore_requests", "Requests answered, by route and status.",
                                       labels=["route", "status"])
        for (route, status), count in list(metrics._requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        yield metrics._latency.family("mlscore_request_duration_seconds", "End-to-end time of /score requests.")
        yield metrics._queue.family("mlscore_queue_wait_seconds", "Time /score requests waited for a scoring slot.")
        yield metrics._run.family("mlscore_run_duration_seconds", "Time spent in run(), as the pipeline measured it.")
        yield metrics._batch_size.family("mlscore_batch_size", "Requests per model call, with batching on "
                                         "(--max-batch-size above 1 and a pipeline that batches).")
        yield metrics._batch_wait.family("mlscore_batch_wait_seconds", "How long a batch of several requests "
                                         "(or one that waited for more) waited to fill (--max-batch-delay-ms).")
        rejections = CounterMetricFamily("mlscore_rejections", "Requests refused or cut short, by reason.",
                                         labels=["reason"])
        for reason, count in list(metrics._rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections


class _Tallies:
    """Counters their owners keep as plain numbers, off the hot path's locks, read when scraped: data
    collection's written and dropped records, worker replacements, the front's busy polling, and log
    records dropped because the log writer fell behind."""

    def __init__(self, state: "ServerState") -> None:
        self._state = state

    def collect(self) -> Iterator[CounterMetricFamily]:
        collector = self._state.collector
        dropped = CounterMetricFamily("mlscore_data_collection_dropped", "Data-collection records not written: "
                                      "the buffer was full, or the file could not be written.", labels=["reason"])
        dropped.add_metric(["buffer_full"], collector.dropped_full if collector else 0)
        dropped.add_metric(["write_error"], collector.dropped_error if collector else 0)
        yield dropped
        yield CounterMetricFamily("mlscore_data_collection_written", "Data-collection records written.",
                                  value=collector.written if collector else 0)
        restarts = CounterMetricFamily("mlscore_worker_restarts", "Scoring workers replaced, by reason: past the "
                                       "scoring timeout, died, past --worker-max-rss-mb or --worker-max-requests.",
                                       labels=["reason"])
        counts = getattr(self._state.executor, "restarts", {})
        for reason in RESTART_REASONS:
            restarts.add_metric([reason], counts.get(reason, 0))
        yield restarts
        yield CounterMetricFamily("mlscore_busy_poll_seconds", "Time the front's event loop spent polling for its "
                                  "next read instead of sleeping (--busy-poll-us).", value=self._state.busy_poll.spent)
        yield CounterMetricFamily("mlscore_log_records_dropped", "Log records dropped because the log writer fell "
                                  "behind (the front's and its workers').", value=logs.dropped())
