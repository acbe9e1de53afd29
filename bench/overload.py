"""Overload at 10x max_concurrency: rejecting must cost less than serving.

Two runtimes with the default max_concurrency: one serving the echo agent with a
queue deep enough for every call of the load, one with no queue and every slot
held by a run of the slow agent, so each call of the same load (naming no agent)
is rejected with RESOURCE_EXHAUSTED (counted by the server). Each serves one
agent, as a deployment usually does: such a server refuses over capacity before
it reads the request. Target: rejected calls/s >= served calls/s.
"""

from __future__ import annotations

from functools import partial

from . import contenders as c
from . import wire
from .background import HeldRuns
from .h2load import Load
from .harness import Bench, Contender, log
from .process import ServerProcess
from .report import Row, Section, ratio_target

SLOTS = 8  # ServerConfig's default max_concurrency
OVERLOAD = 10
SERVING, REJECTING = f"{c.RUNTIME} serving", f"{c.RUNTIME} rejecting"


def serving() -> Contender:
    """The runtime that serves every call: the echo agent, a queue for every call in flight."""
    return c.runtime("--agent", c.ECHO_AGENT, "--max-concurrency", str(SLOTS), "--max-queue", "1024",
                     label=SERVING)


def rejecting() -> Contender:
    """The runtime that refuses every call once `hold` has taken its slots: no queue."""
    return c.runtime("--agent", c.SLOW_AGENT, "--max-concurrency", str(SLOTS), "--max-queue", "0",
                     label=REJECTING)


def hold(bench: Bench, server: ServerProcess, core: int | None) -> HeldRuns:
    """Every slot of `rejecting()` held by an hour-long run of the slow agent."""
    body = bench.body("hold.grpc", wire.invoke_body("3600"))
    return HeldRuns(server, Load(f"http://{server.address}{wire.INVOKE_STREAM}", body, wire.GRPC_HEADERS),
                    count=SLOTS, connections=1, core=core)


def run(bench: Bench) -> Section:
    concurrency = SLOTS * OVERLOAD
    section = Section(f"Overload: {concurrency} calls in flight against max_concurrency {SLOTS}")
    served, refused = bench.start(serving()), bench.start(rejecting())
    echo = bench.body("echo.grpc", wire.invoke_body("hello"))
    held = hold(bench, refused, bench.client_core)
    try:
        runs = [
            (SERVING, partial(bench.measure, served, _load(served, echo), concurrency=concurrency,
                              latencies=True)),
            (REJECTING, partial(bench.measure, refused, _load(refused, echo), concurrency=concurrency,
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
                                        rates[REJECTING], rates[SERVING], 1.0))
    section.notes.append("Server-counted OK for the serving runtime, RESOURCE_EXHAUSTED for the rejecting one. "
                         "A server of several agents reads and checks the request before it refuses, "
                         "which makes each refusal dearer (see the instructions section).")
    return section


def _load(server: ServerProcess, body) -> Load:
    return Load(f"http://{server.address}{wire.INVOKE}", body, wire.GRPC_HEADERS)
