"""The cost of observability: `agent-runtime serve` with it off, with Prometheus
metrics on, and with metrics and tracing on (every span exported over OTLP/gRPC to a
local receiver), measured side by side in one run with rounds in rotating order.

Prints calls/s and server CPU per call of each, the throughput ratio of each to
"off" (paired round by round), and the CPU each adds per call. Usage:
`python -m bench.observability [--rounds N] [--duration S] [--concurrency C]`;
`run(bench)` is the same as a section of the full suite (`python -m bench`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Sequence

from . import contenders as c
from . import wire
from .h2load import Load
from .harness import Bench, Measured, Settings
from .otlp import OtlpReceiver
from .report import Row, Section, ratio_target
from .stats import median

OFF = c.RUNTIME
CONCURRENCY = 16
METRICS_TARGET = 0.85  # throughput with metrics on, as a share of off


@dataclass(frozen=True)
class Cost:
    label: str
    measured: list[Measured]
    ratios: list[float]  # throughput / "off", per round
    added_cpu_us: float  # CPU per call over "off", median of per-round differences

    @property
    def rate(self) -> float:
        return median([m.rate for m in self.measured])

    @property
    def cpu_us(self) -> float:
        return median([m.cpu_us_per_call for m in self.measured])


def measure(bench: Bench, concurrency: int = CONCURRENCY) -> list[Cost]:
    """Off, metrics, metrics+tracing under the same unary load, rounds alternating."""
    receiver = OtlpReceiver.start(bench)
    chosen = [c.unary_runtime(), c.unary_runtime(c.METRICS, metrics=True),
              c.unary_runtime(c.TRACED, metrics=True, env=c.tracing_env(receiver.address))]
    body = bench.body("invoke.grpc", wire.invoke_body("hello"))
    runs = []
    for contender in chosen:
        server = bench.start(contender)
        load = Load(f"http://{server.address}{wire.INVOKE}", body, wire.GRPC_HEADERS)
        runs.append((contender.label, partial(bench.measure, server, load, concurrency=concurrency)))
    results = bench.alternate(runs)
    off = results[OFF]
    return [Cost(label, measured, [m.rate / o.rate for m, o in zip(measured, off)],
                 median([m.cpu_us_per_call - o.cpu_us_per_call for m, o in zip(measured, off)]))
            for label, measured in results.items()]


def run(bench: Bench) -> Section:
    """The bench suite's section: rows per server, the metrics target, CPU added per call."""
    section = Section("Observability cost")
    workload = f"unary c={CONCURRENCY}"
    costs = measure(bench)
    by_label = {cost.label: cost for cost in costs}
    for cost in costs:
        section.rows.append(Row(workload, cost.label, "calls/s", [m.rate for m in cost.measured],
                                confirmed=sum(m.confirmed for m in cost.measured)))
    off_rates = [m.rate for m in by_label[OFF].measured]
    section.targets.append(ratio_target(f"{workload}: {c.METRICS} / {OFF}",
                                        [m.rate for m in by_label[c.METRICS].measured], off_rates,
                                        METRICS_TARGET))
    section.notes += [f"{cost.label}: {cost.cpu_us:.1f} us server CPU per call, {cost.added_cpu_us:+.1f} us "
                      f"over observability off" for cost in costs]
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=Settings.rounds)
    parser.add_argument("--duration", type=float, default=Settings.duration, help="seconds of load per round and server")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    bench = Bench(Settings(rounds=args.rounds, duration=args.duration))
    try:
        costs = measure(bench, args.concurrency)
    finally:
        bench.close()
    print(f"unary echo, h2load concurrency {args.concurrency}, {args.rounds} rounds of {args.duration:g}s")
    print(f"{'server':<30} {'calls/s':>9} {'CPU us/call':>12} {'vs off':>7} {'added us/call':>14}")
    for cost in costs:
        print(f"{cost.label:<30} {cost.rate:>9.0f} {cost.cpu_us:>12.1f} {median(cost.ratios):>6.0%} "
              f"{cost.added_cpu_us:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
