"""Instructions per call, counted by callgrind: figures the machine's noise cannot move.

Throughput and CPU time on a shared two-core machine move 5-15 % between runs;
valgrind's callgrind counts the instructions a server executes, which are the same
for the same work whatever else the machine does (within about 0.3 % from run to
run here). Each server runs under callgrind; after a warm-up its counters are
zeroed, a fixed number of verified calls is made, and the counts are dumped. The
ratios are of the work itself, before caches and clock speed have their say; the
throughput ratios above have tracked them within a few percent. This is the
instrument to judge a change to the hot path by: an A/B of a few hundred
instructions per call shows here, and drowns in any timed run.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import contenders as c
from . import h2load, overload, wire
from .deps import ensure_valgrind
from .h2load import Load
from .harness import ROOT, Bench, Contender, log, verify
from .process import ServerProcess
from .report import Section

WARMUP = 300
CALLS = 2000
STREAMS = 200
CHUNKS = 100
_SUMMARY = re.compile(r"^summary:\s*(\d+)", re.M)


@dataclass(frozen=True)
class Counted:
    instructions: int
    calls: int

    @property
    def per_call(self) -> float:
        return self.instructions / self.calls


class Callgrind:
    """One server started under callgrind, whose counts can be taken around a load."""

    def __init__(self, bench: Bench, contender: Contender) -> None:
        self.bench = bench
        self.out = bench.workdir / f"callgrind-{contender.key}"
        self.out.mkdir(exist_ok=True)
        argv = (ensure_valgrind(), "--tool=callgrind", f"--callgrind-out-file={self.out}/cg.%p", *contender.argv)
        env = bench.python_env((*contender.env, ("PYTHONHASHSEED", "0")))  # the same imports every run
        # Not pinned: a server and its poller thread sharing one core under valgrind wake each
        # other more, and those wake-ups are counted too (about +10 % per call, seen here).
        self.server = ServerProcess(contender.label, argv, core=None, env=env, cwd=ROOT,
                                    log=bench.workdir / f"callgrind-{contender.key}.log", start_timeout=600)
        bench.servers.append(self.server)

    def count(self, load: Load, calls: int, *, expect: str = "OK", warmup: int = WARMUP) -> Counted:
        """Instructions the server executed for `calls` verified calls of `load` (after a warm-up)."""
        if warmup:
            h2load.run(load, concurrency=1, core=None, requests=warmup)
        pid = str(self.server.proc.pid)
        subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
        before = self.server.stats()
        result = h2load.run(load, concurrency=1, core=None, requests=calls)
        time.sleep(0.2)
        after = self.server.stats()
        subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
        confirmed = verify(self.server.name, before, after, result, expect, 1)
        return Counted(_dumped_instructions(self.out, pid), confirmed)

    def stop(self) -> None:
        self.bench.stop(self.server)


def _dumped_instructions(out: Path, pid: str, timeout: float = 60.0) -> int:
    """The instruction count of the newest dump of `pid` (callgrind writes it a moment
    after callgrind_control returns)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dumps = sorted(out.glob(f"cg.{pid}.*"), key=lambda path: path.stat().st_mtime)
        if dumps:
            match = _SUMMARY.search(dumps[-1].read_text(errors="replace"))
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump of {pid} in {out}")


def _counted(bench: Bench, contender: Contender, load_of, calls: int, **kwargs) -> Counted:
    server = Callgrind(bench, contender)
    try:
        return server.count(load_of(server.server), calls, **kwargs)
    finally:
        server.stop()


def _invoke(bench: Bench, body: bytes, name: str):
    path = bench.body(name, body)
    return lambda server: Load(f"http://{server.address}{wire.INVOKE}", path, wire.GRPC_HEADERS)


def _refusals(bench: Bench, echo, calls: int) -> Counted:
    """Refused calls of the overload section's rejecting runtime, every slot held."""
    server = Callgrind(bench, overload.rejecting())
    held = overload.hold(bench, server.server, core=None)
    try:
        return server.count(echo(server.server), calls, expect="RESOURCE_EXHAUSTED")
    finally:
        held.close()
        server.stop()


def _line(work: str, base: Counted, other: Counted, per: int = 1) -> str:
    return (f"| {work} | {base.per_call / per:,.0f} | {other.per_call / per:,.0f} | "
            f"{base.per_call / other.per_call * 100:.1f} % |")


def run(bench: Bench) -> Section:
    section = Section("Instructions per call (callgrind)")
    smoke = bench.settings.smoke
    calls, streams = (20, 5) if smoke else (CALLS, STREAMS)
    unary = _invoke(bench, wire.invoke_body("hello"), "invoke.grpc")
    log("instructions: unary Invoke")
    bare = _counted(bench, c.bare(), unary, calls, warmup=20 if smoke else WARMUP)
    if smoke:  # the harness works (callgrind, zero, dump, verified calls); one server is enough
        section.notes.append(f"(a) grpc.aio: {bare.per_call:,.0f} instructions per unary call (smoke run)")
        return section
    runtime = _counted(bench, c.unary_runtime(), unary, calls)
    stream_path = bench.body("stream.grpc", wire.invoke_body(" ".join(f"w{i}" for i in range(CHUNKS))))

    def stream(server: ServerProcess) -> Load:
        return Load(f"http://{server.address}{wire.INVOKE_STREAM}", stream_path, wire.GRPC_HEADERS)

    log("instructions: streams of 100 chunks")
    bare_stream = _counted(bench, c.bare(), stream, streams, warmup=20)
    runtime_stream = _counted(bench, c.unary_runtime(), stream, streams, warmup=20)
    log("instructions: refused and served calls")
    served = _counted(bench, overload.serving(), unary, calls)
    refused = _refusals(bench, unary, calls)
    section.notes += [
        f"Instructions the server executed per call ({calls:,} unary calls, {streams} streams of "
        f"{CHUNKS} chunks), counted by valgrind's callgrind after a warm-up, every call verified "
        "by the server's own status counts. The ratio of the first to the second is where the "
        "throughput ratio of the same two would land with nothing else in play (for the "
        "refusal, below 100 % means refusing costs less than serving).", "",
        "| work | first | second | first / second |", "|---|---:|---:|---:|",
        _line("unary Invoke: (a) / (b)", bare, runtime),
        _line("one streamed chunk: (a) / (b)", bare_stream, runtime_stream, CHUNKS),
        _line("a refused call / a served call of (b)", refused, served),
    ]
    return section
