"""Results and their presentation: the printed table, docs/benchmarks.md, the chart.

A section (one workload family) yields rows (one contender under one load,
with a value per round) and targets (a measured figure against a limit).
Every figure is the median over rounds, with its spread (half the range
across rounds, as a share of the median); a target's median comes with its 95 %
confidence interval.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .stats import median, median_interval, spread


@dataclass
class Row:
    workload: str
    contender: str
    unit: str
    rates: list[float]
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the server's CPU time per call
    confirmed: int = 0  # calls the server itself counted with the expected status

    @property
    def rate(self) -> float:
        return median(self.rates)


@dataclass
class Target:
    """A measured figure (a median over rounds) against a limit, with the median's 95 %
    confidence interval when it was measured in rounds (stats.median_interval)."""

    name: str
    measured: float
    limit: float
    unit: str  # "%", "ms", "MB"
    at_least: bool = True
    interval: tuple[float, float] | None = None

    @property
    def passed(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    @property
    def noisy(self) -> bool:
        """The confidence interval reaches past the limit: the rounds cannot tell whether
        the target holds, whichever side of it the median fell on."""
        if self.interval is None:
            return False
        low, high = self.interval
        return low < self.limit <= high if self.at_least else low <= self.limit < high

    def text(self) -> tuple[str, str, str]:
        op = ">=" if self.at_least else "<="
        scale = 100 if self.unit == "%" else 1
        fmt = {"ms": ".3f", "%": ".1f", "MB": ".1f"}.get(self.unit, ".2f")
        measured = f"{self.measured * scale:{fmt}} {self.unit}"
        if self.interval is not None:
            low, high = self.interval
            measured += f" (95 % CI {low * scale:{fmt}}-{high * scale:{fmt}})"
        verdict = "PASS" if self.passed else "FAIL"
        return measured, f"{op} {self.limit * scale:g} {self.unit}", verdict + (" (noisy)" if self.noisy else "")


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ratio_target(name: str, numerators: Sequence[float], denominators: Sequence[float],
                 limit: float) -> Target:
    """Per-round ratios (measured side by side), their median against `limit`."""
    ratios = [n / d for n, d in zip(numerators, denominators) if d]
    return Target(name, median(ratios), limit, "%", interval=median_interval(ratios))


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    return f"{median(values):.{digits}f}" if values else "-"


def rows_table(rows: Sequence[Row]) -> list[str]:
    lines = ["| workload | contender | rate (median) | spread | p50 ms | p99 ms | server CPU/call | "
             "server-counted OK |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.workload} | {row.contender} | {row.rate:,.0f} {row.unit} | "
                     f"+-{spread(row.rates) * 100:.1f}% | {_fmt(row.p50_ms)} | {_fmt(row.p99_ms)} | "
                     f"{_fmt(row.cpu_us, 0)} us | {row.confirmed:,} |")
    return lines


def targets_table(targets: Sequence[Target]) -> list[str]:
    lines = ["| target | measured | limit | result |", "|---|---:|---:|:---:|"]
    for target in targets:
        measured, limit, verdict = target.text()
        lines.append(f"| {target.name} | {measured} | {limit} | {verdict} |")
    return lines


def machine() -> list[str]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    import grpc

    return [f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- CPU: {cpu}, {len(__import__('os').sched_getaffinity(0))} usable cores; "
            f"load average at start {Path('/proc/loadavg').read_text().split()[0]}",
            f"- kernel: {platform.release()}; Python {platform.python_version()}; grpcio {grpc.__version__}",
            f"- load generator: {run('h2load', '--version')}"]


def markdown(sections: Sequence[Section], *, command: str, commands: dict[str, str],
             header: Sequence[str], chart: str | None) -> str:
    lines = ["# Benchmarks", "",
             "Generated by `python -m bench` (bench/); do not edit by hand. What a user choosing",
             "between agent-runtime, a hand-written grpc.aio server and NeMo Agent Toolkit's",
             "`nat serve` wants to know: what does the runtime cost?", "",
             "## Machine", "", *header, "",
             "## How it was measured", "",
             "Each server runs pinned to one core (taskset), h2load drives it from the other core.",
             "Contenders run in the same run, alternating, round after round in rotating order (each",
             "warmed up once, before its first round); every figure is the median over rounds with its",
             "spread (half the range across rounds). Every call is verified on the server side: each",
             "server counts its calls by final gRPC status (HTTP status for `nat serve`), and a run only",
             "counts when the calls the server finished with the expected status match what h2load saw",
             "complete.", "",
             "This machine shares its cores with other work, which slows whatever runs at that moment:",
             "a round's throughput moves by about 10 %, whether the round lasts one second or five.",
             "So rounds are many and short, ratios are taken round by round, and each target gives",
             "the median with its 95 % confidence interval (between two order statistics of the",
             "rounds; it assumes nothing of how they vary). A verdict whose interval reaches past",
             "the limit is marked (noisy): the rounds cannot tell on which side of it the truth lies.",
             "The unary throughput ratios are also measured with both servers loaded at once on the",
             "one core (\"measured together\"), where the ratio of their CPU time per call, which is",
             "what the throughput ratio of a busy server comes to, sees the same interference on",
             "both sides and holds within about 1 %.", "",
             f"Command: `{command}`", ""]
    if commands:
        lines += ["Servers and loads:", "", "```"]
        lines += [f"{name}: {cmd}" for name, cmd in commands.items()]
        lines += ["```", ""]
    all_targets = [t for s in sections for t in s.targets]
    if all_targets:
        lines += ["## Targets", "", *targets_table(all_targets), ""]
    if chart:
        lines += [f"![throughput and latency per contender]({chart})", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.rows:
            lines += [*rows_table(section.rows), ""]
        lines += [*(f"{note}" for note in section.notes), ""] if section.notes else []
    return "\n".join(lines).rstrip() + "\n"


def terminal(sections: Sequence[Section]) -> str:
    out: list[str] = []
    for section in sections:
        out += ["", f"== {section.title}"]
        for row in section.rows:
            out.append(f"{row.workload:<26} {row.contender:<30} {row.rate:>10,.0f} {row.unit:<9} "
                       f"+-{spread(row.rates) * 100:4.1f}%  p50 {_fmt(row.p50_ms)} ms  p99 {_fmt(row.p99_ms)} ms  "
                       f"CPU {_fmt(row.cpu_us, 0)} us/call")
        for target in section.targets:
            measured, limit, verdict = target.text()
            out.append(f"  [{verdict}] {target.name}: {measured} (target {limit})")
        out += [f"  {note}" for note in section.notes]
    return "\n".join(out)


def chart(sections: Sequence[Section], path: Path) -> None:
    """Bars of throughput per contender for each workload, and latency at concurrency 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for section in sections for row in section.rows]
    workloads = list(dict.fromkeys(row.workload for row in rows if row.unit == "calls/s"))
    contenders = list(dict.fromkeys(row.contender for row in rows if row.unit == "calls/s"))
    latency_rows = [row for row in rows if row.p50_ms and row.workload.endswith("c=1")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(len(contenders), 1)
    for i, contender in enumerate(contenders):
        heights = [next((r.rate for r in rows if r.workload == w and r.contender == contender), 0)
                   for w in workloads]
        left.bar([x + i * width for x in range(len(workloads))], heights, width, label=contender)
    left.set_xticks([x + width * (len(contenders) - 1) / 2 for x in range(len(workloads))], workloads,
                    rotation=15, fontsize=8)
    left.set_ylabel("calls/s (median over rounds)")
    left.set_title("Throughput per contender")
    if contenders:  # a run of some sections only may have no unary figures
        left.legend(fontsize=8)
    names = [r.contender for r in latency_rows]
    right.bar(range(len(names)), [median(r.p50_ms) for r in latency_rows], 0.4, label="p50")
    right.bar([x + 0.4 for x in range(len(names))], [median(r.p99_ms) for r in latency_rows], 0.4, label="p99")
    right.set_xticks([x + 0.2 for x in range(len(names))], names, rotation=20, fontsize=8)
    right.set_ylabel("ms")
    right.set_title("Unary latency at concurrency 1")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
