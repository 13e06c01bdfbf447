"""Every side-by-side benchmark in one command: throughput (wrk) and overload (open loop), repeated.

Two scenarios, one after the other, each with its own servers started once and its cells
alternated server by server (drift of the machine is spread over all servers) and repeated:

- ``throughput``: the floor, mlscore with ``processes`` (one worker), ``threads`` and
  ``processes`` with two workers and two slots, and azureml-inference-server-http with
  ``--peer-workers`` gunicorn workers, under wrk at each ``--concurrency``; cells, servers and
  parsing come from ``http_bench.py``.
- ``overload``: mlscore ``threads`` and ``processes`` and the peer, two slots each, offered 0.5-3x
  their capacity by the open-loop client of ``overload_bench.py``, then 3x for the main cell,
  checked against that bench's targets.

Each (server, concurrency or load) is reported as the median over the repeats with its min-max
spread; ratios against the floor and the peer pair each repeat with the other server's cell of the
same round (they ran back to back). Charts: ``compare-throughput.png`` (req/s and p99 bars, min-max
whiskers) and ``compare-overload.png`` (``overload_bench.plot_sweep`` over all repeats' requests),
in ``benchmarks/`` with ``--write-results`` (which also appends a dated section to ``RESULTS.md``),
else in ``benchmarks/.work/compare/``.

    .venv/bin/python benchmarks/compare.py --write-results     # about 15 minutes
    .venv/bin/python benchmarks/compare.py --quick             # about 3 minutes, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import shlex
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import http_bench  # run as a script, benchmarks/ is on sys.path
import overload_bench
from http_bench import BENCH, REPO, RESULTS_MD, VENV_PY, WORK, Row, Server
from overload_bench import Cell as OverloadCell

THROUGHPUT = "throughput"
OVERLOAD = "overload"
SCENARIOS = (THROUGHPUT, OVERLOAD)
# (label, extra `mlscore serve` flags); two workers only help with two slots.
MLSCORE_VARIANTS = (
    ("mlscore processes", "--executor processes"),
    ("mlscore threads", "--executor threads"),
    ("mlscore processes w=2", "--executor processes --workers 2 --max-concurrent-requests 2"),
)
THROUGHPUT_PNG = "compare-throughput.png"
OVERLOAD_PNG = "compare-overload.png"
PRINT_ONLY_CHARTS = WORK / "compare"  # without --write-results: leave the committed charts alone
KIND_ORDER = {"floor": 0, "mlscore": 1, "peer": 2}
MLSCORE_COLORS = ("tab:blue", "tab:green", "tab:cyan", "tab:purple", "tab:olive")


@dataclass(frozen=True)
class Lengths:
    """How long a run is: the settings that --quick shortens."""

    repeats: int
    duration: int  # wrk takes whole seconds
    warmup: int
    overload_duration: float
    sweep_duration: float
    sweep_loads: tuple[float, ...]


FULL = Lengths(repeats=3, duration=8, warmup=1, overload_duration=20.0, sweep_duration=5.0,
               sweep_loads=(0.5, 1.0, 1.5, 2.0, 3.0))
QUICK = Lengths(repeats=2, duration=2, warmup=1, overload_duration=4.0, sweep_duration=2.0,
                sweep_loads=(0.5, 1.5, 3.0))


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range; NaNs (nothing measured) are left out."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, math.nan)
        return cls(statistics.median(finite), min(finite), max(finite))

    @property
    def relative(self) -> float:
        """The range as a share of the median: how far apart the repeats were."""
        return (self.high - self.low) / self.median if self.median else math.nan

    def format(self, digits: int = 0) -> str:
        if math.isnan(self.median):
            return "–"
        if self.low == self.high:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} [{self.low:,.{digits}f}–{self.high:,.{digits}f}]"


def paired_ratios(row: Row, reference: Row | None, value: Callable[[http_bench.Cell], float]) -> Spread:
    """``value`` of each repeat of ``row`` over that of the same repeat of ``reference``.

    Cells alternate, so repeat i of two servers ran back to back: pairing them cancels the drift
    of the machine that the ratio of two medians would keep.
    """
    if reference is None:
        return Spread.of([])
    return Spread.of(value(a) / value(b) for a, b in zip(row.cells, reference.cells) if value(b) > 0)


def table_order(rows: list[Row]) -> list[Row]:
    """By concurrency, then the floor, the mlscore variants and the peer, each in run order."""
    index = {id(row): i for i, row in enumerate(rows)}
    return sorted(rows, key=lambda r: (r.concurrency, KIND_ORDER[r.kind], index[id(r)]))


def throughput_table(rows: list[Row]) -> str:
    """Medians with min–max over the repeats, and paired ratios against the floor and the best peer."""
    by_key = {(r.server, r.concurrency): r for r in rows}
    lines = [["server", "c", "req/s median [min–max]", "spread", "p50 ms", "p99 ms median [min–max]",
              "req/s ÷ floor", "req/s ÷ peer", "p99 ÷ floor", "errors"],
             ["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]]
    for row in table_order(rows):
        floor = by_key.get(("floor", row.concurrency))
        peer = http_bench.best_peer(rows, row.concurrency)
        rps = Spread.of(c.rps for c in row.cells)
        errors = row.non2xx + row.socket_errors
        lines.append([
            row.server, str(row.concurrency), rps.format(), f"{rps.relative:.0%}",
            Spread.of(c.p50_ms for c in row.cells).format(2), Spread.of(c.p99_ms for c in row.cells).format(2),
            "" if row is floor else paired_ratios(row, floor, lambda c: c.rps).format(2),
            "" if row is peer else paired_ratios(row, peer, lambda c: c.rps).format(2),
            "" if row is floor else paired_ratios(row, floor, lambda c: c.p99_ms).format(2),
            f"{errors}" if not errors else f"{row.non2xx} non-2xx, {row.socket_errors} socket",
        ])
    return http_bench.markdown_table(lines)


def overload_groups(cells: list[OverloadCell]) -> dict[tuple[str, float], list[OverloadCell]]:
    """The repeats of each (server, offered rate), in run order."""
    groups: dict[tuple[str, float], list[OverloadCell]] = {}
    for cell in cells:
        groups.setdefault((cell.server, cell.target_rps), []).append(cell)
    return groups


def overload_table(cells: list[OverloadCell]) -> str:
    """Per (server, offered load): shares and latencies as medians with min–max over the repeats."""
    lines = [["server", "load", "offered req/s", "200 %", "503 %", "errors", "200 p50 ms", "200 p99 ms",
              "503 late p99 ms", "RSS growth MiB", "send lateness p99 ms (worst)"],
             ["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]]
    groups = overload_groups(cells)
    for (server, rate), group in sorted(groups.items(), key=lambda item: item[0][1]):  # stable: run order
        lines.append([
            server, f"{group[0].load:g}x", f"{rate:.0f}",
            Spread.of(100 * c.share(c.accepted) for c in group).format(1),
            Spread.of(100 * c.share(c.rejected) for c in group).format(1),
            str(sum(sum(c.errors.values()) for c in group)),
            Spread.of(c.accepted_ms(50) for c in group).format(1),
            Spread.of(c.accepted_ms(99) for c in group).format(1),
            Spread.of(overload_bench.percentile(c.rejection_lateness_ms, 99) for c in group).format(2),
            Spread.of(c.rss_mib[2] - c.rss_mib[0] for c in group).format(1),
            overload_bench.fmt(max(overload_bench.percentile(c.send_lateness_ms, 99) for c in group), 2),
        ])
    return http_bench.markdown_table(lines)


def verdict_summary(main_cells: list[OverloadCell]) -> list[str]:
    """overload_bench's targets per server: PASS only when every repeat of the main cell passed."""
    lines: list[str] = []
    for group in overload_groups(main_cells).values():
        note = " (reference: no admission control)" if group[0].kind == "peer" else ""
        lines.append(f"{group[0].server}{note}:")
        for repeats in zip(*(overload_bench.verdicts(cell) for cell in group)):
            passed = sum(v.passed for v in repeats)
            details = " | ".join(v.detail for v in repeats)
            lines.append(f"  - {'PASS' if passed == len(repeats) else 'FAIL'} {repeats[0].target} "
                         f"({passed}/{len(repeats)}): {details}")
    return lines


def pooled(group: list[OverloadCell]) -> OverloadCell:
    """One cell holding every request of the repeats: its percentiles are over all of them."""
    first = group[0]
    return OverloadCell(first.server, first.kind, first.target_rps, sum(c.duration_s for c in group),
                        [o for c in group for o in c.outcomes], [s for c in group for s in c.rss],
                        sum(c.client_cpu_s for c in group))


# --------------------------------------------------------------------------- charts


def server_colors(rows: list[Row]) -> dict[str, str]:
    variants = iter(MLSCORE_COLORS * 2)
    colors = {}
    for row in table_order(rows):
        if row.server not in colors:
            colors[row.server] = {"floor": "tab:gray", "peer": "tab:red"}.get(row.kind) or next(variants)
    return colors


def plot_throughput(rows: list[Row], path: Path) -> None:
    """Req/s and p99 per server and concurrency: bars at the median, whiskers over min–max."""
    import matplotlib  # only the charts need it, and Agg must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    colors = server_colors(rows)
    servers = list(colors)
    levels = sorted({r.concurrency for r in rows})
    by_key = {(r.server, r.concurrency): r for r in rows}
    repeats = max(len(r.cells) for r in rows)
    width = 0.8 / len(servers)
    figure, panels = plt.subplots(1, 2, figsize=(13, 5))
    metrics = ((panels[0], "requests/s", lambda c: c.rps, "%.0f"),
               (panels[1], "p99 latency, ms", lambda c: c.p99_ms, "%.1f"))
    for axes, label, value, number in metrics:
        for index, server in enumerate(servers):
            spreads = [Spread.of(value(c) for c in by_key[(server, level)].cells) if (server, level) in by_key
                       else Spread.of([]) for level in levels]
            offsets = [j + (index - (len(servers) - 1) / 2) * width for j in range(len(levels))]
            heights = [s.median for s in spreads]
            whiskers = [[s.median - s.low for s in spreads], [s.high - s.median for s in spreads]]
            bars = axes.bar(offsets, heights, width, yerr=whiskers, capsize=3, color=colors[server], label=server)
            axes.bar_label(bars, fmt=number, label_type="center", rotation=90, fontsize=7, color="white")
        axes.set_xticks(range(len(levels)), [f"c={level}" for level in levels])
        axes.set_ylabel(label)
        axes.set_title(f"{label}: median of {repeats}, whiskers min–max")
        axes.grid(True, axis="y", alpha=0.3)
    panels[1].set_yscale("log")  # the peer's p99 is 10-30x the floor's
    panels[1].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    panels[1].yaxis.set_major_formatter(ScalarFormatter())
    panels[1].yaxis.set_minor_formatter(NullFormatter())
    panels[0].legend(fontsize=8)
    figure.suptitle("POST /score, examples/diabetes, wrk on 127.0.0.1 (cells alternated between servers)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_overload(sweep_cells: list[OverloadCell], path: Path) -> None:
    overload_bench.plot_sweep([pooled(group) for group in overload_groups(sweep_cells).values()], path)


# --------------------------------------------------------------------------- arguments


def scenario_list(text: str) -> list[str]:
    """The scenarios named, in the order they run."""
    names = http_bench.name_list(SCENARIOS, "scenarios")(text)
    return [name for name in SCENARIOS if name in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="mlscore, the floor and azureml-inference-server-http side by side: throughput and overload.")
    parser.add_argument("--scenarios", type=scenario_list, default=list(SCENARIOS),
                        help="comma list among throughput,overload (default both)")
    parser.add_argument("--quick", action="store_true",
                        help="short cells for a quick look; the options below still override it")
    parser.add_argument("--repeats", type=int,
                        help=f"cells per server and concurrency or load (default {FULL.repeats}; "
                             f"quick {QUICK.repeats})")
    parser.add_argument("--duration", type=int,
                        help=f"whole seconds per throughput cell (default {FULL.duration}; quick {QUICK.duration})")
    parser.add_argument("--warmup", type=int,
                        help=f"whole seconds of discarded wrk load before each throughput cell (default "
                             f"{FULL.warmup}; quick {QUICK.warmup}; 0: none)")
    parser.add_argument("--concurrency", type=http_bench.int_list, default=[8, 64],
                        help="throughput: wrk connections, comma list (default 8,64)")
    parser.add_argument("--peer-workers", type=http_bench.int_list, default=[2],
                        help="throughput: the peer's WORKER_COUNT values, one server each (default 2, its best "
                             "on 2 cores in every earlier run)")
    parser.add_argument("--overload-duration", type=float,
                        help=f"seconds of the overload main cell at {overload_bench.MAIN_LOAD:g}x capacity "
                             f"(default {FULL.overload_duration:g}; quick {QUICK.overload_duration:g})")
    parser.add_argument("--sweep-duration", type=float,
                        help=f"seconds per overload sweep cell (default {FULL.sweep_duration:g}; "
                             f"quick {QUICK.sweep_duration:g})")
    parser.add_argument("--sweep-loads", type=overload_bench.float_list,
                        help="overload sweep, times capacity (default " + ",".join(f"{x:g}" for x in FULL.sweep_loads)
                             + "; quick " + ",".join(f"{x:g}" for x in QUICK.sweep_loads) + ")")
    parser.add_argument("--write-results", action="store_true",
                        help=f"append a dated section to {RESULTS_MD.name} and write the charts to benchmarks/ "
                             f"(else they go to {PRINT_ONLY_CHARTS.relative_to(REPO)}/)")
    args = parser.parse_args(argv)
    lengths = QUICK if args.quick else FULL
    for setting in dataclasses.fields(Lengths):
        if getattr(args, setting.name) is None:
            setattr(args, setting.name, getattr(lengths, setting.name))
    if args.repeats < 1 or min(args.duration, args.overload_duration, args.sweep_duration) <= 0 or args.warmup < 0:
        parser.error("--repeats must be >= 1, the durations > 0 and --warmup >= 0")
    return args


def throughput_bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """http_bench's own arguments for this run, so that its defaults (entry script, wrk) apply."""
    bench_args = http_bench.parse_args([
        "--servers", "mlscore,floor,peer", "--repeats", str(args.repeats), "--duration", str(args.duration),
        "--warmup", str(args.warmup), "--concurrency", ",".join(map(str, args.concurrency)),
        "--peer-workers", ",".join(map(str, args.peer_workers)),
    ])
    bench_args.variant = list(MLSCORE_VARIANTS)  # "w=2" in a label is more than --variant's NAME=FLAGS can say
    return bench_args


def overload_bench_args(args: argparse.Namespace) -> argparse.Namespace:
    return overload_bench.parse_args([
        "--duration", f"{args.overload_duration:g}", "--sweep-duration", f"{args.sweep_duration:g}",
        "--sweep-loads", ",".join(f"{x:g}" for x in args.sweep_loads),
    ])


# --------------------------------------------------------------------------- the runs


@dataclass
class ScenarioReport:
    """One scenario's results: the settings line and body for RESULTS.md, and its servers' start-up."""

    settings: str
    ready_s: dict[str, float]
    lines: list[str]


def run_throughput(wrk: str, args: argparse.Namespace, chart_dir: Path) -> ScenarioReport:
    bench_args = throughput_bench_args(args)
    http_bench.ensure_models(bench_args.entry_script, bench_args.model_dir)
    servers: list[Server] = []
    try:
        ready_s = http_bench.start_all(http_bench.build_specs(bench_args), servers)
        for server in servers:
            http_bench.wait_idle(server, deadline_s=5.0)
        rows = http_bench.measure(wrk, servers, bench_args)
    finally:
        http_bench.stop_servers(servers)
    chart = chart_dir / THROUGHPUT_PNG
    plot_throughput(rows, chart)
    flags = ", ".join(f"{name.removeprefix('mlscore ')} `{extra}`" for name, extra in MLSCORE_VARIANTS)
    settings = (f"- throughput: wrk -t 1, POST /score of `{bench_args.entry_script.relative_to(REPO)}`, "
                f"c={','.join(map(str, args.concurrency))}, {args.duration} s cells after a {args.warmup} s "
                f"warm-up, {args.repeats} repeats, servers alternated cell by cell; mlscore flags: {flags}")
    lines = ["### Throughput", "", throughput_table(rows), "",
             "Medians over the repeats with [min–max]; spread = (max − min) / median of req/s. The ratios pair "
             "each repeat with the other server's cell of the same round (they ran back to back); "
             "÷ peer is against the peer's best worker count at that concurrency. Errors are summed.", "",
             f"Chart: `{display(chart)}`", ""]
    return ScenarioReport(settings, ready_s, lines)


def run_overload(args: argparse.Namespace, chart_dir: Path) -> ScenarioReport:
    bench_args = overload_bench_args(args)
    overload_bench.MODEL_DIR.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    sweep_cells: list[OverloadCell] = []
    main_cells: list[OverloadCell] = []
    try:
        ready_s = http_bench.start_all(overload_bench.build_specs(bench_args.servers), servers)
        for repeat in range(args.repeats):
            print(f"overload: repeat {repeat + 1} of {args.repeats}", flush=True)
            sweep, main = overload_bench.measure(servers, bench_args)
            sweep_cells += sweep
            main_cells += main
    finally:
        http_bench.stop_servers(servers)
    chart = chart_dir / OVERLOAD_PNG
    plot_overload(sweep_cells, chart)
    generator = overload_bench.generator_verdict(sweep_cells + main_cells)
    capacity = overload_bench.CAPACITY_RPS
    settings = (f"- overload: `benchmarks/overload_score.py` (run() sleeps {overload_bench.RUN_MS:g} ms), "
                f"{overload_bench.CONCURRENCY} slots per server (capacity ≈ {capacity:.0f} req/s), maxQueueWaitMs "
                f"{overload_bench.MAX_QUEUE_WAIT_MS}; open-loop client of `overload_bench.py`; sweep "
                f"{','.join(f'{x:g}' for x in args.sweep_loads)}x for {args.sweep_duration:g} s each, then "
                f"{overload_bench.MAIN_LOAD:g}x for {args.overload_duration:g} s; {args.repeats} repeats, servers "
                "alternated cell by cell")
    lines = ["### Overload", "",
             f"Main cell: {overload_bench.MAIN_LOAD:g}x capacity ({overload_bench.MAIN_LOAD * capacity:.0f} req/s) "
             f"for {args.overload_duration:g} s.", "", overload_table(main_cells), "",
             "Targets (PASS when every repeat passed):", "", *verdict_summary(main_cells), "",
             f"Load generator: {'PASS' if generator.passed else 'FAIL'} {generator.target}: {generator.detail}", "",
             "Sweep:", "", overload_table(sweep_cells), "",
             "Medians over the repeats with [min–max]; errors are summed. The chart pools every repeat's "
             "requests at each load.", "", f"Chart: `{display(chart)}`", ""]
    return ScenarioReport(settings, ready_s, lines)


def display(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


# --------------------------------------------------------------------------- results file


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return math.nan


def machine_lines(args: argparse.Namespace, busy_before: float) -> list[str]:
    """http_bench's machine, Python and package lines, plus memory and the chart library."""
    if THROUGHPUT in args.scenarios:
        lines = http_bench.machine_lines(busy_before)  # names wrk's version too
    else:
        lines = [*http_bench.environment_lines(busy_before), f"- mlscore revision: {http_bench.git_revision()}"]
    versions = http_bench.package_versions(VENV_PY, ["mlscore", "matplotlib"])
    lines.append(f"- memory {memory_gib():.1f} GiB; mlscore {versions.get('mlscore', '?')}; "
                 f"charts: matplotlib {versions.get('matplotlib', 'not installed')}")
    return lines


def write_results(args: argparse.Namespace, reports: list[ScenarioReport], busy_before: float) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    ready = {name: secs for report in reports for name, secs in report.ready_s.items()}
    section = [
        f"## {stamp}: comparison (`benchmarks/compare.py`)", "",
        *machine_lines(args, busy_before),
        *[report.settings for report in reports],
        "- start-up to ready: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in ready.items()),
        "", "```", command, "```", "",
        *[line for report in reports for line in report.lines], "",
    ]
    http_bench.append_results(section)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = http_bench.require_wrk() if THROUGHPUT in args.scenarios else ""
    http_bench.ensure_peer_venv()
    chart_dir = BENCH if args.write_results else PRINT_ONLY_CHARTS
    chart_dir.mkdir(parents=True, exist_ok=True)
    busy_before = http_bench.cpu_busy_share()
    if busy_before > http_bench.BUSY_SHARE:
        print(f"warning: the CPUs are {busy_before:.0%} busy before the run: figures will be noisy", flush=True)
    signal.signal(signal.SIGTERM, http_bench._raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    reports = []
    try:
        if THROUGHPUT in args.scenarios:
            reports.append(run_throughput(wrk, args, chart_dir))
        if OVERLOAD in args.scenarios:
            reports.append(run_overload(args, chart_dir))
    except KeyboardInterrupt:
        print("\ninterrupted; the servers were stopped", file=sys.stderr)
        raise
    print()
    print("\n".join(line for report in reports for line in report.lines))
    if args.write_results:
        write_results(args, reports, busy_before)
    return 0


if __name__ == "__main__":
    http_bench.run_script(main)
