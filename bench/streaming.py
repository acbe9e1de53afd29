"""Streaming runs of 100 chunks: chunks/s of the runtime against bare grpc.aio streaming.

Target: (b) >= 80% of (a).
"""

from __future__ import annotations

from functools import partial

from . import contenders as c
from . import wire
from .h2load import Load
from .harness import Bench, log
from .report import Row, Section, ratio_target

LIMIT = 0.80


def run(bench: Bench) -> Section:
    settings = bench.settings
    chunks = settings.stream_chunks
    section = Section(f"Streaming runs of {chunks} chunks")
    body = bench.body("stream.grpc", wire.invoke_body(" ".join(f"w{i}" for i in range(chunks))))
    runs = []
    for contender in (c.bare(), c.unary_runtime()):
        server = bench.start(contender)
        load = Load(f"http://{server.address}{wire.INVOKE_STREAM}", body, wire.GRPC_HEADERS)
        runs.append((contender.label, partial(bench.measure, server, load,
                                              concurrency=settings.stream_concurrency)))
    workload = f"stream c={settings.stream_concurrency}"
    log(f"{workload} ({chunks} chunks a run):")
    results = bench.alternate(runs)
    rates = {label: [m.rate * chunks for m in ms] for label, ms in results.items()}
    for label, measured in results.items():
        section.rows.append(Row(workload, label, "chunks/s", rates[label],
                                cpu_us=[m.cpu_us_per_call / chunks for m in measured],
                                confirmed=sum(m.confirmed for m in measured)))
    section.targets.append(ratio_target(f"{workload}: chunks/s {c.RUNTIME} / {c.BARE}",
                                        rates[c.RUNTIME], rates[c.BARE], LIMIT))
    section.notes.append(f"The runtime's stream also carries its `started` and `ended` events "
                         f"({chunks + 2} messages a run against the bare server's {chunks}); "
                         "server CPU is per chunk here.")
    return section
