"""The benchmark context: settings, started servers, and verified measurements.

Every measurement is an h2load run pinned to the client core, framed by two
readings of the server's own status counters: the calls the server finished
with the expected status must lie between what h2load saw done and what it
started, and no call may have ended with any other status. `alternate` runs
several contenders round after round in rotating order (each warmed up once,
before its first round), so slow drifts of a shared machine hit every contender
alike; `together` loads two servers at once on the one server core, so that
whatever the machine does to that core it does to both.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import h2load
from .h2load import Load, LoadResult
from .process import ServerProcess, cores

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure. Rounds are many and short: a round's ratio
    moves 5-10 % on this machine kind whether it lasts one second or five, so what
    narrows the median is the number of rounds (60 give a 95 % interval of about
    +-2 %, 100 about +-1.9 % in a run of (a) against (b)), and one warm-up per server
    and load serves all its rounds."""

    rounds: int = 60
    duration: float = 1.0
    warmup: float = 1.0
    together_rounds: int = 10
    cold_starts: int = 5
    unary_concurrency: tuple[int, ...] = (1, 16, 256)
    stream_chunks: int = 100
    stream_concurrency: int = 16
    open_streams: int = 10_000
    idle_calls: int = 10_000
    nat: bool = True
    smoke: bool = False

    @classmethod
    def for_smoke(cls) -> "Settings":
        """Seconds, not minutes: proves the harness works, not the figures."""
        return cls(rounds=2, duration=0.3, warmup=0.0, together_rounds=2, open_streams=200, idle_calls=300,
                   nat=False, smoke=True)


class VerificationError(RuntimeError):
    """The server's own counters disagree with what h2load reported."""


@dataclass(frozen=True)
class Measured:
    contender: str
    result: LoadResult
    confirmed: int  # calls the server finished with the expected status
    cpu_seconds: float  # the server's CPU time during the run

    @property
    def rate(self) -> float:
        return self.result.requests_per_s

    @property
    def cpu_us_per_call(self) -> float:
        """Server CPU time per call it finished (per stream for a streaming load)."""
        return self.cpu_seconds / self.confirmed * 1e6 if self.confirmed else float("nan")


@dataclass(frozen=True)
class Contender:
    """A server to start: `key` names it in tables, `argv` starts it."""

    key: str
    label: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    h1: bool = False


@dataclass
class Bench:
    settings: Settings
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    servers: list[ServerProcess] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server_core, self.client_core = cores()

    # -- servers -------------------------------------------------------------
    def python_env(self, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
        paths = [str(ROOT), str(ROOT / "service"), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **dict(extra)}

    def start(self, contender: Contender) -> ServerProcess:
        log = self.workdir / f"{contender.key}-{len(self.servers)}.log"
        server = ServerProcess(contender.label, contender.argv, core=self.server_core,
                               env=self.python_env(contender.env), cwd=ROOT, log=log)
        self.servers.append(server)
        self.commands.setdefault(contender.label, " ".join(contender.argv).replace(sys.executable, "python"))
        return server

    def stop(self, server: ServerProcess) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def body(self, name: str, data: bytes) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        return path

    # -- measuring -------------------------------------------------------------
    def measure(self, server: ServerProcess, load: Load, *, concurrency: int, latencies: bool = False,
                expect: str = "OK", duration: float | None = None, warmup: float = 0.0) -> Measured:
        """One verified h2load run against `server`, after `warmup` seconds of the same load."""
        if warmup:
            h2load.run(load, concurrency=concurrency, core=self.client_core, duration=warmup)
            server.settle()
        return self._measured([(server, load)], concurrency=concurrency, latencies=latencies, expect=expect,
                              duration=duration)[0]

    def together(self, first: tuple[ServerProcess, Load], second: tuple[ServerProcess, Load], *,
                 concurrency: int) -> tuple[Measured, Measured]:
        """Both servers loaded at once, each by its own h2load, sharing the server core (and
        the client core): verified like `measure`. The CPU time each spends per call is then
        taken under the same interference from the rest of the machine, moment by moment."""
        measured = self._measured([first, second], concurrency=concurrency)
        return measured[0], measured[1]

    def _measured(self, loaded: Sequence[tuple[ServerProcess, Load]], *, concurrency: int, latencies: bool = False,
                  expect: str = "OK", duration: float | None = None) -> list[Measured]:
        """h2load runs started at once against each (server, load), each framed by its server's
        counters and CPU time."""
        duration = duration or self.settings.duration
        before = [(server.stats(), server.cpu_seconds()) for server, _ in loaded]
        results: list[LoadResult | BaseException] = [RuntimeError("h2load did not run")] * len(loaded)

        def drive(i: int, load: Load) -> None:
            try:
                results[i] = h2load.run(load, concurrency=concurrency, core=self.client_core, duration=duration,
                                        latencies=latencies)
            except BaseException as exc:  # re-raised below, in the caller's thread
                results[i] = exc

        threads = [threading.Thread(target=drive, args=(i, load)) for i, (_, load) in enumerate(loaded[1:], 1)]
        for thread in threads:
            thread.start()
        drive(0, loaded[0][1])
        for thread in threads:
            thread.join()
        for server, _ in loaded:  # the calls h2load stopped waiting for end in this window
            server.settle()
        measured = []
        for (server, load), (stats, cpu), result in zip(loaded, before, results):
            cpu = server.cpu_seconds() - cpu
            if isinstance(result, BaseException):
                raise result
            confirmed = verify(server.name, stats, server.stats(), result, expect, concurrency)
            argv = " ".join(h2load.command(load, concurrency=concurrency, duration=duration))
            self.commands.setdefault(f"h2load {load.url.rsplit('/', 1)[-1]}",
                                     argv.replace(server.address, "HOST:PORT").replace(str(self.workdir), "$WORK"))
            measured.append(Measured(server.name, result, confirmed, cpu))
        return measured

    def alternate(self, runs: Sequence[tuple[str, Callable[..., Measured]]]) -> dict[str, list[Measured]]:
        """Run every (name, measure) once per round, rotating the order each round; each
        measure is called with a warm-up in its first round (`measure(warmup=seconds)`)."""
        results: dict[str, list[Measured]] = {name: [] for name, _ in runs}
        for round_no in range(self.settings.rounds):
            shift = round_no % len(runs)
            for name, measure in [*runs[shift:], *runs[:shift]]:
                measured = measure(warmup=self.settings.warmup if round_no == 0 else 0.0)
                results[name].append(measured)
                log(f"  round {round_no + 1}: {name:<34} {measured.rate:>10.1f}/s "
                    f"{measured.cpu_us_per_call:>7.1f} us CPU/call")
        return results


def verify(name: str, before: dict, after: dict, result: LoadResult, expect: str,
           concurrency: int) -> int:
    """The calls `name` finished with status `expect` during `result`; raises when any
    finished otherwise or when the counts cannot match what h2load saw.

    h2load stops a timed run without waiting for the calls in flight: up to
    `concurrency` calls it did not see end may end inside the window (which closes once
    the server is idle), as successes or as CANCELLED; nothing else is tolerated.
    """
    deltas = {key: after.get(key, 0) - before.get(key, 0)
              for key in set(before) | set(after) if isinstance(after.get(key, 0), int) and key.isupper()}
    confirmed = deltas.pop(expect, 0)
    cancelled = deltas.pop("CANCELLED", 0) if expect != "CANCELLED" else 0
    others = {key: n for key, n in deltas.items() if n}
    if others or cancelled > 2 * concurrency:
        raise VerificationError(f"{name}: calls ended with unexpected statuses "
                                f"{others or {'CANCELLED': cancelled}} (expected only {expect})")
    if not result.succeeded <= confirmed <= result.started + concurrency:
        raise VerificationError(f"{name}: server counted {confirmed} {expect} calls, h2load "
                                f"saw {result.succeeded} succeed of {result.started} started")
    if result.failed:
        raise VerificationError(f"{name}: h2load saw {result.failed} failed requests")
    return confirmed


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
