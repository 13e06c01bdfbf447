"""A load test's results: the per-second timeline the locust users report while they run, the
summary read from locust's JSON file (exact totals) with failures by kind, the `--fail-on`
thresholds that gate a release, and the table, CSV and PNG they are written as. No locust import:
importing locust monkey-patches the process with gevent, and this module runs in `mlscore`'s."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PROGRESS_MARK = "@mlscore-loadtest "  # a line the locust process prints for `mlscore loadtest` to read
PERCENTILES = (50, 95, 99)


def percentile(histogram: Mapping[float, int], fraction: float) -> float | None:
    """The response time at `fraction` of a locust histogram ({rounded ms: count}), computed as
    locust computes its own reports, so the figures match its CSV and web UI."""
    total = sum(histogram.values())
    if not total:
        return None
    below = int(total * fraction)
    counted = 0
    for response_time in sorted(histogram, reverse=True):
        counted += histogram[response_time]
        if total - counted <= below:
            return response_time
    return min(histogram)


@dataclass(frozen=True)
class Sample:
    """One interval of the run, as the locust process saw it: figures for the interval, totals so far."""

    t_s: float  # seconds since the test started, at the interval's end
    users: int
    requests: int
    failures: int
    requests_per_s: float
    failures_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    total_requests: int
    total_failures: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        return cls(**{item.name: data.get(item.name) for item in fields(cls)})


@dataclass(frozen=True)
class Summary:
    """The whole run: exact totals from locust's JSON file, failures by their kind."""

    requests: int
    failures: int
    duration_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    failures_by_kind: dict[str, int]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_locust_json(cls, path: Path, failures_by_kind: Mapping[str, int]) -> Summary:
        """Every request entry in the file (`--json-file`) merged; requests/s over the span from the
        test's start to its last request, as locust's own total."""
        entries = json.loads(path.read_text(encoding="utf-8"))
        histogram: dict[float, int] = {}
        for entry in entries:
            for response_time, count in entry["response_times"].items():
                key = float(response_time)
                histogram[key] = histogram.get(key, 0) + count
        starts = [entry["start_time"] for entry in entries if entry.get("start_time")]
        lasts = [entry["last_request_timestamp"] for entry in entries if entry.get("last_request_timestamp")]
        maxima = [entry["max_response_time"] for entry in entries if entry.get("max_response_time") is not None]
        return cls(
            requests=sum(entry["num_requests"] for entry in entries),
            failures=sum(entry["num_failures"] for entry in entries),
            duration_s=max(lasts) - min(starts) if starts and lasts else 0.0,
            p50_ms=percentile(histogram, 0.50),
            p95_ms=percentile(histogram, 0.95),
            p99_ms=percentile(histogram, 0.99),
            max_ms=max(maxima) if maxima else None,
            failures_by_kind=dict(sorted(failures_by_kind.items(), key=lambda item: -item[1])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requests_per_s": self.requests_per_s, "error_ratio": self.error_ratio}


def read_failures_csv(path: Path) -> dict[str, int]:
    """Failures by kind from locust's `_failures.csv`: the fallback when the locust process did not
    report them itself (that file is written once a second, so it can miss the last one)."""
    counts: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                counts[row["Error"]] = counts.get(row["Error"], 0) + int(row["Occurrences"])
    except (OSError, KeyError, ValueError):
        return {}
    return counts


# --- thresholds ----------------------------------------------------------------------------------

THRESHOLDS = {
    "error_ratio": "failures / requests above this fails the run (0.01 = 1 %)",
    "p50_ms": "median latency above this, in ms",
    "p95_ms": "95th percentile latency above this, in ms",
    "p99_ms": "99th percentile latency above this, in ms",
    "min_rps": "requests/s below this",
}


class ThresholdError(ValueError):
    """A `--fail-on` that cannot be read; the message names the allowed thresholds."""


@dataclass(frozen=True)
class Threshold:
    name: str
    limit: float

    def crossed(self, summary: Summary) -> str | None:
        """How the run crossed this threshold, or None when it stayed within it."""
        if self.name == "min_rps":
            value = summary.requests_per_s
            return f"requests/s {value:.1f} below {self.name}={self.limit:g}" if value < self.limit else None
        if self.name == "error_ratio":
            value = summary.error_ratio
            return f"error ratio {value:.4f} above {self.name}={self.limit:g}" if value > self.limit else None
        value = getattr(summary, self.name)
        if value is None or value <= self.limit:
            return None
        return f"{self.name.removesuffix('_ms')} {_ms(value)} ms above {self.name}={self.limit:g}"


def parse_fail_on(texts: Iterable[str]) -> list[Threshold]:
    """`error_ratio=0.01,p99_ms=500` (the flag may also repeat) as thresholds."""
    thresholds = []
    for text in texts:
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in THRESHOLDS:
                raise ThresholdError(f"--fail-on: unknown threshold {name!r}; use NAME=VALUE with NAME one of "
                                     f"{', '.join(THRESHOLDS)}")
            try:
                limit = float(value)
            except ValueError:
                raise ThresholdError(f"--fail-on: {item!r} needs a number after '='") from None
            if not math.isfinite(limit) or limit < 0:
                raise ThresholdError(f"--fail-on: {item!r} needs a number of 0 or more")
            thresholds.append(Threshold(name, limit))
    return thresholds


# --- output ---------------------------------------------------------------------------------------


def format_sample(sample: Sample) -> str:
    """One progress line."""
    latency = "  ".join(f"p{p} {_ms(getattr(sample, f'p{p}_ms'))} ms" for p in (50, 99))
    return (f"{sample.t_s:6.1f} s  users {sample.users:>4}  {sample.requests_per_s:8.1f} req/s  {latency}  "
            f"requests {sample.total_requests}  failures {sample.total_failures}")


def format_summary(summary: Summary) -> str:
    """The table printed at the end of a run."""
    columns = ["requests", "failures", "requests/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    values = [str(summary.requests), f"{summary.failures} ({summary.error_ratio:.1%})", f"{summary.requests_per_s:.1f}",
              *(_ms(getattr(summary, f"p{p}_ms")) for p in PERCENTILES), _ms(summary.max_ms)]
    widths = [max(len(column), len(value)) for column, value in zip(columns, values)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths)),
             "  ".join(value.rjust(width) for value, width in zip(values, widths))]
    if summary.failures_by_kind:
        lines.append("failures by kind:")
        width = max(len(kind) for kind in summary.failures_by_kind)
        for kind, count in summary.failures_by_kind.items():
            share = count / summary.requests if summary.requests else 0.0
            lines.append(f"  {kind.ljust(width)}  {count:>8}  {share:6.1%}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{round(value, 1 if value < 10 else None):g}"  # locust's histogram is in whole ms


def write_timeline(samples: Sequence[Sample], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([item.name for item in fields(Sample)])
        for sample in samples:
            writer.writerow(["" if value is None else value for value in asdict(sample).values()])


def write_plot(samples: Sequence[Sample], path: Path, title: str) -> bool:
    """Requests/s and failures/s (users on a second axis) above, p50/p95/p99 below, against time.
    False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to load
    import matplotlib.pyplot as plt

    times = [sample.t_s for sample in samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(times, [sample.requests_per_s for sample in samples], "-", color="tab:blue", label="requests/s")
    top.plot(times, [sample.failures_per_s for sample in samples], "-", color="tab:red", label="failures/s")
    top.set_ylabel("per second")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left")
    users = top.twinx()
    users.step(times, [sample.users for sample in samples], where="pre", color="grey", linestyle=":",
               label="users")
    users.set_ylabel("users", color="grey")
    users.set_ylim(bottom=0)
    for percent, style in zip(PERCENTILES, ("-", "--", ":")):
        values = [getattr(sample, f"p{percent}_ms") for sample in samples]
        bottom.plot(times, [math.nan if value is None else value for value in values], style, label=f"p{percent}")
    bottom.set_ylabel("latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
    top.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
