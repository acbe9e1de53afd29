"""Loads held open in the background (h2load in processes of their own) while
something else is measured: slow streaming runs that occupy slots.

Runs are opened in batches, each waited for before the next: gRPC core refuses
calls that pile up unrequested beyond about a thousand per server (with a
RESOURCE_EXHAUSTED the application never sees), so a burst of ten thousand new
calls at once would measure that limit rather than the runtime.
"""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Callable

from . import h2load
from .h2load import Load
from .process import ServerProcess, pinned

BATCH = 500


class HeldRuns:
    """`count` streaming calls to `server`, opened `batch` at a time over about
    `connections` connections in all, kept open until `close`."""

    def __init__(self, server: ServerProcess, load: Load, *, count: int, connections: int,
                 core: int | None, batch: int = BATCH, timeout: float = 300) -> None:
        self.procs: list[subprocess.Popen] = []
        base = server.stats().get("in_use", 0)
        started = time.monotonic()
        try:
            opened = 0
            while opened < count:
                size = min(batch, count - opened)
                argv = h2load.command(load, concurrency=size, requests=size,
                                      connections=max(1, round(connections * size / count)))
                self.procs.append(subprocess.Popen(pinned(argv, core), stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
                opened += size
                wait_for(server, lambda s: s.get("in_use", 0) >= base + opened,
                         timeout - (time.monotonic() - started), f"{opened:,} open runs")
        except BaseException:
            self.close()
            raise
        self.seconds = time.monotonic() - started

    def close(self) -> None:
        """Stop the clients: their connections close and the server cancels the runs."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_for(server: ServerProcess, condition: Callable[[dict], bool], timeout: float,
             what: str) -> float:
    """Poll the server's stats until `condition` holds; returns the seconds it took."""
    start = time.monotonic()
    while True:
        stats = server.stats()
        if condition(stats):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{server.name}: {what} did not happen within {timeout:g}s (stats {stats})")
        time.sleep(0.1)
