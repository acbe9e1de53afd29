"""Server processes pinned to a core, with their address, stats and memory."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from .servers.sidechannel import ANNOUNCE, PREFIX

_ADDRESS = re.compile(ANNOUNCE + r" (?:https?://)?(\S+):(\d+)")


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """`argv` run on one core through taskset when both exist."""
    if core is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def cores() -> tuple[int | None, int | None]:
    """(server core, client core): the first and last CPU this process may use,
    or (None, None) on a single-CPU machine (nothing is pinned then)."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return usable[0], usable[-1]


class ServerProcess:
    """A started server: its announced address, its stats side channel, its RSS.

    Its stdout is read all the time by a thread (announcement and stats answers
    are queued, anything else goes to the log): a server that prints, say, an
    access log line per request must never block on a full pipe.
    """

    def __init__(self, name: str, argv: Sequence[str], *, core: int | None, env: dict[str, str],
                 cwd: Path, log: Path, start_timeout: float = 120.0) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(pinned(argv, core), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True, env=env, cwd=cwd)
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, name=f"{name} stdout", daemon=True)
        self._reader.start()
        self.host, self.port = self._await_address(start_timeout)

    def _read_stdout(self) -> None:
        with self.proc.stdout:
            for line in self.proc.stdout:
                if line.startswith(PREFIX) or _ADDRESS.search(line):
                    self._lines.put(line)
                elif not self._log_file.closed:
                    self._log_file.write(line)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _readline(self, deadline: float) -> str:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._log_file.flush()
                raise RuntimeError(f"{self.name} did not answer in time (exit {self.proc.poll()}); "
                                   f"log {self.log}:\n{self.log.read_text()[-3000:]}")
            try:
                return self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue

    def _await_address(self, timeout: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            match = _ADDRESS.search(self._readline(deadline))
            if match:
                return match.group(1), int(match.group(2))

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The server's counters now (statuses by name, plus what it adds)."""
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(deadline)
            if line.startswith(PREFIX):
                return json.JSONDecoder().raw_decode(line[len(PREFIX):])[0]

    def cpu_seconds(self) -> float:
        """CPU time the server's threads have used so far, to the nanosecond: the
        scheduler's own count (/proc's user and system times come in 10 ms ticks, a
        percent of a one-second round, two for a server on half a core). A thread that
        has exited no longer counts: every server here keeps its threads."""
        total = 0
        for stat in Path(f"/proc/{self.proc.pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that ended meanwhile
        return total / 1e9

    def settle(self, timeout: float = 30.0, window: float = 0.02) -> None:
        """Wait (at most `timeout` seconds) until the server is idle: the calls a load left
        behind when it stopped (h2load does not wait for the calls in flight) have ended.
        An idle server here uses no CPU; one that used less than 5 % of `window` is idle."""
        deadline = time.monotonic() + timeout
        used = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(window)
            now = self.cpu_seconds()
            if now - used < window * 0.05:
                return
            used = now

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self._reader.join(10)
        self._log_file.close()
