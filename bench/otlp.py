"""The OTLP receiver contender (c) exports to (OTLP/HTTP), as the harness sees it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from .harness import ROOT, Bench
from .process import ServerProcess


@dataclass
class OtlpReceiver:
    process: ServerProcess

    @classmethod
    def start(cls, bench: Bench) -> "OtlpReceiver":
        """Started on the client core: the collector is not part of the server's budget."""
        log = bench.workdir / "otlp-sink.log"
        process = ServerProcess("otlp-sink", (sys.executable, "-m", "bench.servers.otlp_sink"),
                                core=bench.client_core, env=bench.python_env(), cwd=ROOT, log=log)
        bench.servers.append(process)
        return cls(process)

    @property
    def address(self) -> str:
        return self.process.address

    def spans(self, settle: float = 0.0) -> int:
        """Spans received, once the count has stopped growing for a second (or after `settle` s)."""
        count = self.process.stats()["spans"]
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.process.stats()["spans"]
            if now == count:
                break
            count = now
        return count
