"""Overload at 10x max_concurrency: rejecting must cost less than serving.

Two runtimes with the default max_concurrency: one with a queue deep enough to
serve every call of the load, one with no queue and every slot held by a slow
run, so each call of the same load is rejected with RESOURCE_EXHAUSTED (counted
by the server). Target: rejected calls/s >= served calls/s.
"""

from __future__ import annotations

from functools import partial

from . import contenders as c
from . import wire
from .background import HeldRuns
from .h2load import Load
from .harness import Bench, log
from .report import Row, Section, ratio_target

SLOTS = 8  # ServerConfig's default max_concurrency
OVERLOAD = 10


def run(bench: Bench) -> Section:
    concurrency = SLOTS * OVERLOAD
    section = Section(f"Overload: {concurrency} calls in flight against max_concurrency {SLOTS}")
    agents = ("--agent", c.ECHO_AGENT, "--agent", c.SLOW_AGENT, "--max-concurrency", str(SLOTS))
    served_label, rejected_label = f"{c.RUNTIME} serving", f"{c.RUNTIME} rejecting"
    serving = bench.start(c.runtime(*agents, "--max-queue", "1024", label=served_label))
    rejecting = bench.start(c.runtime(*agents, "--max-queue", "0", label=rejected_label))
    echo = bench.body("echo.grpc", wire.invoke_body("hello", agent="echo"))
    hold = bench.body("hold.grpc", wire.invoke_body("3600", agent="slow"))
    held = HeldRuns(rejecting, Load(f"http://{rejecting.address}{wire.INVOKE_STREAM}", hold, wire.GRPC_HEADERS),
                    count=SLOTS, connections=1, core=bench.client_core)
    try:
        runs = [
            (served_label, partial(bench.measure, serving, _load(serving, echo), concurrency=concurrency,
                                   latencies=True)),
            (rejected_label, partial(bench.measure, rejecting, _load(rejecting, echo), concurrency=concurrency,
                                     latencies=True, expect="RESOURCE_EXHAUSTED")),
        ]
        log(f"overload c={concurrency}:")
        results = bench.alternate(runs)
    finally:
        held.close()
    rates = {label: [m.rate for m in ms] for label, ms in results.items()}
    for label, measured in results.items():
        section.rows.append(Row(f"overload c={concurrency}", label, "calls/s", rates[label],
                                p50_ms=[m.result.latency(50) for m in measured],
                                p99_ms=[m.result.latency(99) for m in measured],
                                cpu_us=[m.cpu_us_per_call for m in measured],
                                confirmed=sum(m.confirmed for m in measured)))
    section.targets.append(ratio_target("overload: rejected calls/s / served calls/s",
                                        rates[rejected_label], rates[served_label], 1.0))
    section.notes.append("Server-counted OK for the serving runtime, RESOURCE_EXHAUSTED for the rejecting one.")
    return section


def _load(server, body) -> Load:
    return Load(f"http://{server.address}{wire.INVOKE}", body, wire.GRPC_HEADERS)
