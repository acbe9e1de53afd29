"""The contenders: how each server is started.

(a) bare grpc.aio echo (bench/servers/bare_echo.py), (b) `agent-runtime serve`
with observability off, (b+m) the same with Prometheus metrics on (the default
deployment), (c) metrics and tracing on with every span exported to a local
OTLP receiver, (d) NeMo Agent Toolkit's `nat serve` on its `test_echo` workflow.
Observability settings are passed only when this checkout's ServerConfig has
them, so the suite runs on any version of the runtime.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from pathlib import Path
from typing import Sequence

from agent_runtime.config import ServerConfig

from .harness import Contender

BARE = "(a) grpc.aio"
RUNTIME = "(b) runtime"
METRICS = "(b+m) runtime+metrics"
TRACED = "(c) runtime+metrics+tracing"
NAT = "(d) nat serve"

ECHO_AGENT = "agent_runtime.echo:echo_agent"
SLOW_AGENT = "bench.agents:slow"


def has_setting(name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(ServerConfig))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bare() -> Contender:
    return Contender("bare", BARE, (sys.executable, "-m", "bench.servers.bare_echo"))


def runtime(*args: str, label: str = RUNTIME, metrics: bool = False,
            env: Sequence[tuple[str, str]] = ()) -> Contender:
    """`agent-runtime serve` on 127.0.0.1:0 with `args`; observability off unless asked."""
    argv = [sys.executable, "-m", "bench.servers.runtime", "--host", "127.0.0.1", "--port", "0",
            "--log-level", "warning", *args]
    if has_setting("metrics_port"):
        argv += ["--metrics-port", str(free_port() if metrics else 0)]
    return Contender(label.split(")")[0].strip("(") or "runtime", label, tuple(argv), tuple(env))


def unary_runtime(label: str = RUNTIME, metrics: bool = False,
                  env: Sequence[tuple[str, str]] = ()) -> Contender:
    """The echo agent with room for every call of the heaviest unary load (no queueing)."""
    return runtime("--max-concurrency", "1024", "--max-queue", "1024", label=label, metrics=metrics, env=env)


def observability_available() -> bool:
    return has_setting("metrics_port")


def tracing_env(otlp_endpoint: str, protocol: str = "http/protobuf") -> tuple[tuple[str, str], ...]:
    """Standard OTEL_* settings: every span sampled and exported over OTLP (HTTP by
    default: over gRPC the export cost the server about 90 µs of CPU more per call on
    its one core, see docs/observability.md)."""
    return (("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{otlp_endpoint}"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol), ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ("OTEL_TRACES_SAMPLER", "always_on"), ("OTEL_SERVICE_NAME", "agent-runtime-bench"))


def nat(python: Path, config: Path) -> Contender:
    return Contender("nat", NAT, (str(python), "-m", "bench.servers.nat", "--config", str(config)), h1=True)
