"""The cost of observability: `agent-runtime serve` with it off, with Prometheus
metrics on, and with metrics and tracing on (every span exported over OTLP/gRPC to a
local receiver), measured side by side in one run with rounds in rotating order.

Prints calls/s and server CPU per call of each, the throughput ratio of each to
"off" (paired round by round), and the CPU each adds per call. Usage:
`python -m bench.observability [--rounds N] [--duration S] [--concurrency C]`;
`measure()` returns the same figures for the full suite.
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
from .stats import median

OFF = c.RUNTIME


@dataclass(frozen=True)
class Cost:
    label: str
    rate: float  # calls/s, median over rounds
    cpu_us: float  # server CPU per call, median over rounds
    ratio: float  # throughput / "off", median of per-round ratios
    added_cpu_us: float  # CPU per call over "off", median of per-round differences


def measure(settings: Settings, concurrency: int = 16) -> list[Cost]:
    bench = Bench(settings)
    try:
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
    finally:
        bench.close()
    return [_cost(label, measured, results[OFF]) for label, measured in results.items()]


def _cost(label: str, measured: list[Measured], off: list[Measured]) -> Cost:
    return Cost(label, median([m.rate for m in measured]), median([m.cpu_us_per_call for m in measured]),
                median([m.rate / o.rate for m, o in zip(measured, off)]),
                median([m.cpu_us_per_call - o.cpu_us_per_call for m, o in zip(measured, off)]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per round and server")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    costs = measure(Settings(rounds=args.rounds, duration=args.duration, warmup=1.0), args.concurrency)
    print(f"unary echo, h2load concurrency {args.concurrency}, {args.rounds} rounds of {args.duration:g}s")
    print(f"{'server':<30} {'calls/s':>9} {'CPU us/call':>12} {'vs off':>7} {'added us/call':>14}")
    for cost in costs:
        print(f"{cost.label:<30} {cost.rate:>9.0f} {cost.cpu_us:>12.1f} {cost.ratio:>6.0%} {cost.added_cpu_us:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
