"""A load held open in the background (h2load in its own process) while something
else is measured: slow streaming runs that occupy slots."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Callable

from . import h2load
from .h2load import Load
from .process import ServerProcess, pinned


class HeldRuns:
    """`count` streaming calls opened over `connections` connections, kept open until `close`."""

    def __init__(self, load: Load, *, count: int, connections: int, core: int | None) -> None:
        argv = self.argv = h2load.command(load, concurrency=count, connections=connections, requests=count)
        self.proc = subprocess.Popen(pinned(argv, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        """Stop the client: its connections close and the server cancels the runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


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
        time.sleep(0.2)
