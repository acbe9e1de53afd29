"""Soak: minutes of a mixed load with faults; RSS and open file descriptors over time.

One runtime serves the echo and slow agents with small limits while 32 clients
keep up a mix for `seconds`: unary and streaming calls, agent errors (unknown
agent, malformed bytes), client deadlines and cancellations mid-stream, runs
refused by admission, and connection churn (each client reconnects every 100
calls). The server's RSS, open fds and slots in use are sampled every few
seconds. Targets: after the warm-up, RSS grows by less than 10% and fds by at
most 8; every slot is free at the end; every call got an expected status.

Part of `python -m bench` (a few seconds with `--smoke`), or alone:
`python -m bench.soak --seconds 600 --interval 10`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from agent_runtime._proto.agent_runtime.v1 import runtime_pb2 as pb
from agent_runtime._proto.agent_runtime.v1 import runtime_pb2_grpc

from . import contenders as c
from .background import wait_for
from .harness import Bench, Settings, log
from .process import ServerProcess
from .report import Section, Target, terminal

DEFAULT_SECONDS = 180.0
SMOKE_SECONDS = 6.0
CLIENTS = 32
CALLS_PER_CONNECTION = 100
MB = 1024 * 1024
EXPECTED = {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class Sample:
    at: float
    rss: int
    fds: int
    threads: int
    in_use: int
    calls: int


def _proc_status(pid: int) -> tuple[int, int]:
    rss = threads = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


def sample(server: ServerProcess, started: float, calls: int) -> Sample:
    pid = server.proc.pid
    rss, threads = _proc_status(pid)
    return Sample(time.monotonic() - started, rss, len(os.listdir(f"/proc/{pid}/fd")), threads,
                  server.stats().get("in_use", 0), calls)


async def _one_call(client: runtime_pb2_grpc.AgentRuntimeStub, channel: grpc.aio.Channel,
                    rng: random.Random) -> str:
    kind = rng.random()
    try:
        if kind < 0.45:
            await client.Invoke(pb.InvokeRequest(agent="echo", input=pb.Payload(text="hello")), timeout=10)
        elif kind < 0.60:
            async for _ in client.InvokeStream(pb.InvokeRequest(
                    agent="echo", input=pb.Payload(text="one two three four five")), timeout=10):
                pass
        elif kind < 0.68:  # the client's deadline passes during the run
            async for _ in client.InvokeStream(pb.InvokeRequest(agent="slow", input=pb.Payload(text="5")),
                                               timeout=0.05):
                pass
        elif kind < 0.76:  # the client goes away mid-stream
            call = client.InvokeStream(pb.InvokeRequest(agent="slow", input=pb.Payload(text="30")), timeout=10)
            await call.read()
            call.cancel()
            return "CANCELLED"
        elif kind < 0.84:  # runs that hold slots: some are refused by admission
            async for _ in client.InvokeStream(pb.InvokeRequest(agent="slow", input=pb.Payload(text="0.15")),
                                               timeout=10):
                pass
        elif kind < 0.92:
            await client.Invoke(pb.InvokeRequest(agent="nope", input=pb.Payload(text="x")), timeout=10)
        else:
            raw = channel.unary_unary("/agent_runtime.v1.AgentRuntime/Invoke")
            await raw(os.urandom(rng.randrange(1, 64)), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def _drive(address: str, seconds: float, codes: Counter, seed: int) -> None:
    rng = random.Random(seed)
    end = time.monotonic() + seconds

    async def client_loop() -> None:
        while time.monotonic() < end:
            async with grpc.aio.insecure_channel(address) as channel:
                client = runtime_pb2_grpc.AgentRuntimeStub(channel)
                for _ in range(CALLS_PER_CONNECTION):
                    if time.monotonic() >= end:
                        return
                    codes[await _one_call(client, channel, rng)] += 1

    await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))


def soak(bench: Bench, seconds: float, interval: float) -> tuple[list[Sample], Counter]:
    server = bench.start(c.runtime("--agent", c.ECHO_AGENT, "--agent", c.SLOW_AGENT, "--max-concurrency", "16",
                                   "--max-queue", "16", "--queue-timeout", "0.2", "--cancel-grace", "1"))
    codes: Counter = Counter()
    samples: list[Sample] = []
    started = time.monotonic()
    loop = asyncio.new_event_loop()
    try:
        driver = loop.create_task(_drive(server.address, seconds, codes, seed=11))
        while not driver.done():
            loop.run_until_complete(asyncio.wait((driver,), timeout=interval))
            if driver.done():
                break
            samples.append(sample(server, started, sum(codes.values())))
            last = samples[-1]
            log(f"  soak t={last.at:6.1f}s calls={last.calls:>8,} RSS={last.rss / MB:6.1f} MB "
                f"fds={last.fds:>4} threads={last.threads:>3} in_use={last.in_use}")
        driver.result()
        wait_for(server, lambda s: s.get("in_use") == 0 and s.get("waiting") == 0, 30, "every slot freed")
        samples.append(sample(server, started, sum(codes.values())))
    finally:
        loop.close()
        bench.stop(server)
    return samples, codes


def run(bench: Bench, seconds: float | None = None, interval: float | None = None) -> Section:
    seconds = seconds or (SMOKE_SECONDS if bench.settings.smoke else DEFAULT_SECONDS)
    interval = interval or max(1.0, seconds / 30)
    section = Section(f"Soak: {seconds:g}s of mixed load with faults, {CLIENTS} clients")
    samples, codes = soak(bench, seconds, interval)
    warm = samples[min(len(samples) - 1, max(1, len(samples) // 5))]  # after the first fifth
    last = samples[-1]
    section.targets.append(Target("soak: RSS growth after warm-up", last.rss / warm.rss - 1, 0.10, "%",
                                  at_least=False))
    section.targets.append(Target("soak: open fds growth after warm-up", last.fds - warm.fds, 8, "fds",
                                  at_least=False))
    section.targets.append(Target("soak: slots in use at the end", last.in_use, 0, "slots", at_least=False))
    unexpected = sum(n for code, n in codes.items() if code not in EXPECTED)
    section.targets.append(Target("soak: calls with an unexpected status", unexpected, 0, "calls",
                                  at_least=False))
    section.notes.append(f"{last.calls:,} calls in {seconds:g}s; statuses: "
                         + ", ".join(f"{code} {n:,}" for code, n in codes.most_common()) + ".")
    section.notes.append("| t (s) | calls | RSS (MB) | open fds | threads | slots in use |")
    section.notes.append("|---:|---:|---:|---:|---:|---:|")
    section.notes.extend(f"| {s.at:.0f} | {s.calls:,} | {s.rss / MB:.1f} | {s.fds} | {s.threads} | {s.in_use} |"
                         for s in samples)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="how long the load runs")
    parser.add_argument("--interval", type=float, help="seconds between samples (default: 30 samples)")
    args = parser.parse_args(argv)
    bench = Bench(Settings())
    try:
        section = run(bench, args.seconds, args.interval)
    finally:
        bench.close()
    print(terminal([section]))
    return 0 if all(target.passed for target in section.targets) else 1


if __name__ == "__main__":
    sys.exit(main())
