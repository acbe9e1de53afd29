"""Unary echo at concurrency 1, 16 and 256: every contender, side by side.

Targets: (b) >= 90% of (a), (b+m) >= 85%, (c) >= 70%, (b) >= 10x (d), and the
latency (b) adds over (a) at concurrency 1 (p50 <= 0.1 ms, p99 <= 1 ms).

Each throughput ratio is measured twice: in alternating rounds, each server with
the core to itself (what the targets ask), and with the runtime and (a) loaded
together on the one core, where the ratio of their CPU time per call is what the
throughput ratio of a server that keeps its core busy comes to, without the
machine's interference that moves alternating rounds by about 10 %.
"""

from __future__ import annotations

from functools import partial

from . import contenders as c
from . import wire
from .h2load import Load
from .harness import Bench, Contender, log
from .otlp import OtlpReceiver
from .process import ServerProcess
from .report import Row, Section, Target, ratio_target
from .stats import median

MESSAGE = "hello"
THROUGHPUT_TARGETS = ((c.RUNTIME, 0.90), (c.METRICS, 0.85), (c.TRACED, 0.70))
NAT_FACTOR = 10.0
SPANS_PER_CALL = 2  # the RPC's server span and the run's invoke_agent span


def _contenders(bench: Bench) -> tuple[list[Contender], OtlpReceiver | None]:
    chosen = [c.bare(), c.unary_runtime()]
    receiver = None
    if c.observability_available():
        chosen.append(c.unary_runtime(c.METRICS, metrics=True))
        receiver = OtlpReceiver.start(bench)
        chosen.append(c.unary_runtime(c.TRACED, metrics=True, env=c.tracing_env(receiver.address)))
    if bench.settings.nat:
        from .deps import nat_python

        config = bench.body("nat.yml", b"workflow:\n  _type: test_echo\n")
        chosen.append(c.nat(nat_python(), config))
    return chosen, receiver


def run(bench: Bench) -> Section:
    section = Section("Unary echo")
    chosen, receiver = _contenders(bench)
    grpc_body = bench.body("invoke.grpc", wire.invoke_body(MESSAGE))
    json_body = bench.body("generate.json", wire.json_body(MESSAGE))
    loads: dict[str, tuple] = {}
    for contender in chosen:
        server = bench.start(contender)
        if contender.h1:
            load = Load(f"http://{server.address}/generate", json_body, wire.JSON_HEADERS, h1=True)
        else:
            load = Load(f"http://{server.address}{wire.INVOKE}", grpc_body, wire.GRPC_HEADERS)
        loads[contender.label] = (server, load)
    together: list[str] = []
    for concurrency in bench.settings.unary_concurrency:
        workload = f"unary c={concurrency}"
        log(f"{workload}:")
        runs = [(label, partial(bench.measure, server, load, concurrency=concurrency,
                                latencies=concurrency == 1))
                for label, (server, load) in loads.items()]
        results = bench.alternate(runs)
        rates = {label: [m.rate for m in ms] for label, ms in results.items()}
        for label, measured in results.items():
            section.rows.append(Row(
                workload, label, "calls/s", rates[label],
                p50_ms=[m.result.latency(50) for m in measured] if concurrency == 1 else [],
                p99_ms=[m.result.latency(99) for m in measured] if concurrency == 1 else [],
                cpu_us=[m.cpu_us_per_call for m in measured], confirmed=sum(m.confirmed for m in measured)))
        floor = rates[c.BARE]
        for label, limit in THROUGHPUT_TARGETS:
            if label in rates:
                section.targets.append(ratio_target(f"{workload}: {label} / {c.BARE}", rates[label], floor, limit))
        if c.NAT in rates:  # a round where nat serve completed nothing counts as an infinite ratio
            factors = [b / d if d else float("inf") for b, d in zip(rates[c.RUNTIME], rates[c.NAT])]
            section.targets.append(Target(f"{workload}: {c.RUNTIME} / {c.NAT}", median(factors), NAT_FACTOR, "x"))
            idle = sum(1 for rate in rates[c.NAT] if not rate)
            if idle:
                section.notes.append(f"At {workload}, {c.NAT} completed no call within the "
                                     f"{bench.settings.duration:g} s run in {idle} of {len(rates[c.NAT])} "
                                     "rounds, so the ratio to it is infinite there.")
        if concurrency == 1:
            section.targets += _added_latency(results[c.RUNTIME], results[c.BARE])
        together += _together(bench, loads, concurrency, section)
    section.notes += _together_notes(bench, together)
    if receiver is not None:
        section.targets.append(_spans_exported(bench, loads[c.TRACED][0], receiver, section))
    return section


def _together(bench: Bench, loads: dict[str, tuple], concurrency: int, section: Section) -> list[str]:
    """Each runtime contender loaded at once with (a), both on the server core: per round,
    (a)'s CPU time per call over the runtime's, a target each. Both meet the same
    interference from the rest of the machine at the same moments, so it cancels out of
    the ratio. Returns the rows of the table of these figures."""
    workload = f"unary c={concurrency}"
    rows = []
    for label, limit in THROUGHPUT_TARGETS:
        if label not in loads:
            continue
        log(f"{workload}, {label} together with {c.BARE}:")
        rounds = [bench.together(loads[c.BARE], loads[label], concurrency=concurrency)
                  for _ in range(bench.settings.together_rounds)]
        bare_us = [bare.cpu_us_per_call for bare, _ in rounds]
        runtime_us = [runtime.cpu_us_per_call for _, runtime in rounds]
        target = ratio_target(f"{workload}: {label} / {c.BARE}, CPU per call measured together",
                              bare_us, runtime_us, limit)
        section.targets.append(target)
        share = median([runtime.cpu_seconds / (bare.cpu_seconds + runtime.cpu_seconds) for bare, runtime in rounds])
        rows.append(f"| {workload} | {label} | {median(bare_us):.1f} us | {median(runtime_us):.1f} us | "
                    f"{target.text()[0]} | {share * 100:.0f} % |")
    return rows


def _together_notes(bench: Bench, rows: list[str]) -> list[str]:
    return [f"Measured together: {bench.settings.together_rounds} rounds of {bench.settings.duration:g} s "
            "in which (a) and one runtime contender are loaded at once, each by its own h2load, sharing "
            "the server core. Per round, (a)'s CPU time per call over the runtime's is the throughput "
            "ratio of the two when each has the core to itself and keeps it busy (as every server here "
            "does under these loads), with the machine's interference cancelled: it meets both at the "
            "same moments. How the scheduler shares the core between the two is no figure of cost.", "",
            "| workload | with (a) grpc.aio | (a) CPU/call | its CPU/call | (a) / it | its share of the core |",
            "|---|---|---:|---:|---:|---:|", *rows, ""]


def _spans_exported(bench: Bench, traced: ServerProcess, receiver: OtlpReceiver, section: Section) -> Target:
    """Every span of (c) reached the receiver: a server span and an `invoke_agent` span
    per call, counted after the server stopped (its shutdown flushes the exporter)."""
    served = traced.stats().get("OK", 0)
    bench.stop(traced)
    spans = receiver.spans(settle=3.0)
    section.notes.append(f"The OTLP receiver got {spans:,} spans from {c.TRACED} for the {served:,} calls "
                         f"it served (warm-ups included), over OTLP/HTTP (http/protobuf); over OTLP/gRPC the "
                         "export costs the server about 90 µs of CPU more per call (docs/observability.md).")
    return Target(f"spans exported per call by {c.TRACED}", spans / max(served, 1), SPANS_PER_CALL, "spans/call")


def _added_latency(runtime: list, bare: list) -> list[Target]:
    targets = []
    for q, limit in ((50, 0.1), (99, 1.0)):
        added = [r.result.latency(q) - b.result.latency(q) for r, b in zip(runtime, bare)]
        targets.append(Target(f"unary c=1: p{q} latency {c.RUNTIME} adds over {c.BARE}", median(added),
                              limit, "ms", at_least=False))
    return targets

