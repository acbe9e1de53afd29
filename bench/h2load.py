"""Driving a server with h2load and reading what it measured.

h2load reports throughput and counts; per-request latencies come from its
`--log-file` (microseconds per request), from which percentiles are taken.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .process import pinned
from .stats import percentile

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout")


@dataclass(frozen=True)
class Load:
    """What to send: `url` (http://host:port/path), the body file and headers."""

    url: str
    body: Path
    headers: Sequence[str] = ()
    h1: bool = False


@dataclass(frozen=True)
class LoadResult:
    seconds: float
    requests_per_s: float
    started: int
    done: int
    succeeded: int
    failed: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def split(concurrency: int, max_connections: int = 4) -> tuple[int, int]:
    """(connections, streams per connection) for `concurrency` calls in flight;
    an HTTP/1.1 load has one call per connection."""
    connections = min(concurrency, max_connections)
    return connections, max(concurrency // connections, 1)


def command(load: Load, *, concurrency: int, connections: int | None = None,
            duration: float | None = None, requests: int | None = None,
            log_file: Path | None = None) -> list[str]:
    """The h2load command line; `connections` overrides how the calls are spread."""
    if load.h1:
        connections, streams = concurrency, 1
    elif connections:
        streams = -(-concurrency // connections)
    else:
        connections, streams = split(concurrency)
    argv = ["h2load", "-t", "1", "-c", str(connections), "-m", str(streams), "-d", str(load.body)]
    if load.h1:
        argv.append("--h1")
    for header in load.headers:
        argv += ["-H", header]
    if duration is not None:
        argv += ["-D", f"{round(duration * 1000)}ms"]
    else:
        argv += ["-n", str(requests or concurrency)]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv.append(load.url)
    return argv


def parse(output: str) -> tuple[float, float, tuple[int, ...]]:
    finished = _FINISHED.search(output)
    counts = _REQUESTS.search(output)
    if not finished or not counts:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return seconds, float(finished.group(3)), tuple(int(n) for n in counts.groups())


def run(load: Load, *, concurrency: int, core: int | None, duration: float | None = None,
        requests: int | None = None, latencies: bool = False, timeout: float = 600) -> LoadResult:
    """Run h2load once (for `duration` seconds or `requests` calls) pinned to `core`."""
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        log_file = Path(tmp) / "requests.log" if latencies else None
        argv = command(load, concurrency=concurrency, duration=duration, requests=requests,
                       log_file=log_file)
        proc = subprocess.run(pinned(argv, core), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
        seconds, rps, (_total, started, done, succeeded, failed, errored, timed_out) = parse(proc.stdout)
        samples: list[float] = []
        if log_file is not None and log_file.exists():
            for line in log_file.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    samples.append(int(parts[2]) / 1000.0)
        samples.sort()
    return LoadResult(seconds, rps, started, done, succeeded, failed + errored + timed_out, samples)
