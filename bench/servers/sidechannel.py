"""The stats side channel every benchmarked server offers (standard library only:
it also runs inside the NeMo Agent Toolkit virtualenv).

The harness writes `stats` on the server's stdin; the server answers with one
line `bench-stats {json}` on stdout. A thread blocked on stdin costs the server
nothing between questions, and the answer never competes with the load on the
network. Status counts are kept in a plain list indexed by gRPC status code
(copying a list is atomic under the GIL, so the reader thread needs no lock).
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Callable

PREFIX = "bench-stats "
ANNOUNCE = "listening on"
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                "UNAUTHENTICATED")


def new_counts() -> list[int]:
    """Finished calls by status code: `counts[0]` is OK (grpc-status 0)."""
    return [0] * len(STATUS_NAMES)


def announce(host: str, port: int) -> None:
    print(f"{ANNOUNCE} {host}:{port}", flush=True)


def serve_stats(counts: list[int], extra: Callable[[], dict[str, Any]] | None = None) -> None:
    """Answer every `stats` line on stdin with the counts (by status name) and `extra()`."""

    def answer() -> None:
        for line in sys.stdin:
            if line.strip() != "stats":
                continue
            snapshot = list(counts)
            stats: dict[str, Any] = {name: n for name, n in zip(STATUS_NAMES, snapshot) if n}
            if extra is not None:
                stats.update(extra())
            # one write of the whole line: a server's own output (an access log line
            # written by another thread) must not land inside it
            sys.stdout.write(PREFIX + json.dumps(stats) + "\n")
            sys.stdout.flush()

    threading.Thread(target=answer, name="bench-stats", daemon=True).start()
