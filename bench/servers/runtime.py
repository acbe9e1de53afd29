"""Contenders (b) and (c): `agent-runtime serve` exactly as users run it, plus the
benchmark's status counters and stats side channel.

Arguments are `agent-runtime serve` arguments (and AGENT_RUNTIME_* / OTEL_*
variables work as usual). The only additions are the counting wrapper around the
AgentRuntime handlers and their stand-ins while admission refuses every run (the
same wrapper the bare server has) and a stats answer that also reports the
admission counters (runs in progress, queued).
"""

from __future__ import annotations

import sys
from typing import Any

from agent_runtime import cli
from agent_runtime.grpc import server as server_module

from .counting import counted_all
from .sidechannel import new_counts, serve_stats

counts = new_counts()
_managers: list[Any] = []


def _admission_stats() -> dict[str, Any]:
    if not _managers:
        return {}
    admission = _managers[0].admission
    return {"in_use": admission.in_use, "waiting": admission.waiting}


def _counting(build: Any) -> Any:
    def handlers(servicer: Any) -> Any:
        _managers[:] = [servicer.manager]
        return counted_all(build(servicer), counts)

    return handlers


def main(argv: list[str]) -> int:
    server_module.method_handlers = _counting(server_module.method_handlers)
    server_module.unread_handlers = _counting(server_module.unread_handlers)
    serve_stats(counts, _admission_stats)
    return cli.main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
