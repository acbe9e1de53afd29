"""Memory and liveness: idle RSS after many calls; 10,000 open streaming runs.

Targets: RSS < 100 MB idle after 10,000 calls; with 10,000 streaming runs of a
slow agent open in one process, RSS < 1 GiB and health Check p99 < 50 ms.
"""

from __future__ import annotations

import time

from . import contenders as c
from . import h2load, wire
from .background import HeldRuns, wait_for
from .h2load import Load
from .harness import Bench, VerificationError, log, verify
from .report import Row, Section, Target

MB = 1024 * 1024
STREAMS_PER_CONNECTION = 100


def run(bench: Bench) -> Section:
    section = Section("Memory and liveness")
    _idle_rss(bench, section)
    _open_streams(bench, section)
    return section


def _idle_rss(bench: Bench, section: Section) -> None:
    calls = bench.settings.idle_calls
    server = bench.start(c.unary_runtime())
    try:
        fresh = server.rss_bytes()
        load = Load(f"http://{server.address}{wire.INVOKE}", bench.body("idle.grpc", wire.invoke_body("hello")),
                    wire.GRPC_HEADERS)
        before = server.stats()
        result = h2load.run(load, concurrency=16, core=bench.client_core, requests=calls)
        verify(server.name, before, server.stats(), result, "OK", 16)
        time.sleep(1.0)
        idle = server.rss_bytes()
    finally:
        bench.stop(server)
    log(f"idle RSS: {fresh / MB:.1f} MB fresh, {idle / MB:.1f} MB after {calls:,} calls")
    section.targets.append(Target(f"idle RSS after {calls:,} calls", idle / MB, 100, "MB", at_least=False))
    section.notes.append(f"{c.RUNTIME}: RSS {fresh / MB:.1f} MB fresh, {idle / MB:.1f} MB idle after "
                         f"{calls:,} calls.")


def _open_streams(bench: Bench, section: Section) -> None:
    count = bench.settings.open_streams
    args = ["--agent", c.SLOW_AGENT, "--max-concurrency", str(count), "--max-queue", "0"]
    if c.has_setting("max_concurrent_streams"):
        args += ["--max-concurrent-streams", str(STREAMS_PER_CONNECTION)]
    server = bench.start(c.runtime(*args))
    hold = bench.body("hold.grpc", wire.invoke_body("3600"))
    connections = -(-count // STREAMS_PER_CONNECTION)
    before = server.stats()
    held = HeldRuns(server, Load(f"http://{server.address}{wire.INVOKE_STREAM}", hold, wire.GRPC_HEADERS),
                    count=count, connections=connections, core=bench.client_core)
    took = held.seconds
    try:
        rss = server.rss_bytes()
        health = Load(f"http://{server.address}{wire.HEALTH_CHECK}", bench.body("health.grpc", wire.health_body()),
                      wire.GRPC_HEADERS)
        checks = h2load.run(health, concurrency=1, core=bench.client_core, duration=bench.settings.duration,
                            latencies=True)
        still_open = server.stats().get("in_use")
    finally:
        held.close()
    freed = wait_for(server, lambda s: s.get("in_use") == 0, 120, "every slot freed after the clients left")
    rss_after = server.rss_bytes()
    try:  # a call is counted when its handler has unwound, just after its slot is free
        wait_for(server, lambda s: s.get("CANCELLED", 0) - before.get("CANCELLED", 0) >= count, 10,
                 "every run counted as cancelled")
    except RuntimeError:
        pass  # reported below with the counts
    ended = server.stats()
    bench.stop(server)
    cancelled = ended.get("CANCELLED", 0) - before.get("CANCELLED", 0)
    others = {k: n - before.get(k, 0) for k, n in ended.items() if k.isupper() and k != "CANCELLED"
              and n != before.get(k, 0)}
    if cancelled != count or others:
        raise VerificationError(f"{count:,} open runs should all end CANCELLED when their clients leave; "
                                f"the server counted {cancelled:,} CANCELLED and {others}")
    log(f"{count:,} open runs: opened in {took:.1f}s, RSS {rss / MB:.0f} MB, health p99 "
        f"{checks.latency(99):.2f} ms, freed in {freed:.1f}s")
    if still_open != count:
        raise VerificationError(f"only {still_open} of {count} runs stayed open during the health checks")
    section.rows.append(Row(f"health Check, {count:,} runs open", c.RUNTIME, "calls/s", [checks.requests_per_s],
                            p50_ms=[checks.latency(50)], p99_ms=[checks.latency(99)], confirmed=checks.succeeded))
    section.targets.append(Target(f"RSS with {count:,} streaming runs open", rss / MB, 1024, "MB", at_least=False))
    section.targets.append(Target(f"health Check p99 with {count:,} runs open", checks.latency(99), 50, "ms",
                                  at_least=False))
    section.notes.append(f"{count:,} streaming runs opened in {took:.1f}s over {connections} connections; "
                         f"after the clients left every slot was free within {freed:.1f}s "
                         f"(RSS then {rss_after / MB:.0f} MB).")
