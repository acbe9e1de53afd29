"""Prometheus metrics: semaphore occupancy, per-run events and the gRPC server family.

Occupancy (limit, in flight, queued) and run counts are read from plain counters
when Prometheus scrapes (`RuntimeCollector`), so admission pays nothing for them.
Histograms and event counters are fed by `MetricsSink` from the one per-run
event stream, with label children bound once per agent so the hot path does no
label lookups. Every metric lives in a registry handed in by the caller: no
global state. Labels are bounded: agent, status, event type, tool, model,
gRPC method and code; never user, session or run ids.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import EventType, RunEvent, RunStatus

if TYPE_CHECKING:
    from .session import SessionManager

# Agent runs last from milliseconds (a cached answer) to minutes (a long tool loop).
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Queue waits and first chunks: mostly tiny, sometimes as long as a whole run.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# RPCs include health checks (sub-millisecond) and streamed runs (minutes).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
               30, 60, 120, 300, 600)

REJECTED = "rejected"
RUN_STATUSES = (*(status.value for status in RunStatus), REJECTED)
# Every status name a gRPC call can end with, as the `grpc_code` label spells it.
GRPC_CODES = {code: code.name for code in grpc.StatusCode}


class RuntimeCollector(Collector):
    """Occupancy and run counts read at scrape time from the SessionManager's counters."""

    def __init__(self, manager: "SessionManager", runs: "MetricsSink") -> None:
        self.manager = manager
        self.runs = runs

    def collect(self) -> Iterator[Metric]:
        admission = self.manager.admission
        agents = tuple(self.manager.agents)
        # Copies taken in one C call each: the event loop thread may add keys meanwhile.
        running, queued = dict(admission.running), dict(admission.queued)
        rejected, finished = dict(admission.rejected), dict(self.runs.finished)
        limit = GaugeMetricFamily("agent_runtime_concurrency_limit",
                                  "Runs that may execute at once (0 = unlimited).")
        limit.add_metric([], admission.limit)
        in_flight = GaugeMetricFamily("agent_runtime_runs_in_flight",
                                      "Runs holding a concurrency slot now.", labels=["agent"])
        waiting = GaugeMetricFamily("agent_runtime_runs_queued",
                                    "Runs waiting in the admission queue for a slot.", labels=["agent"])
        for agent in agents:
            in_flight.add_metric([agent], running.get(agent, 0))
            waiting.add_metric([agent], queued.get(agent, 0))
        total = CounterMetricFamily(
            "agent_runtime_runs", "Runs ended, by final status; `rejected` counts runs "
            "refused by admission (queue full, queue wait exceeded, per-user cap, draining).",
            labels=["agent", "status"])
        for agent in agents:
            for status in RUN_STATUSES:
                count = rejected.get(agent, 0) if status == REJECTED else finished.get((agent, status), 0)
                total.add_metric([agent, status], count)
        yield limit
        yield in_flight
        yield waiting
        yield total


class _AgentMetrics:
    """The label children of one agent, bound once."""

    __slots__ = ("name", "events", "duration", "queue_wait", "first_chunk", "tools", "tokens", "sink")

    def __init__(self, sink: "MetricsSink", name: str) -> None:
        self.name = name
        self.sink = sink
        self.events = {t: sink.events.labels(name, t.value) for t in EventType}
        self.duration = {s: sink.duration.labels(name, s.value) for s in RunStatus}
        self.queue_wait = sink.queue_wait.labels(name)
        self.first_chunk = sink.first_chunk.labels(name)
        self.tools: dict[tuple[str, RunStatus], Any] = {}
        self.tokens: dict[str, tuple[Any, Any]] = {}

    def tool(self, tool: str, status: RunStatus) -> Any:
        child = self.tools.get((tool, status))
        if child is None:
            child = self.tools[(tool, status)] = self.sink.tool_calls.labels(self.name, tool, status.value)
        return child

    def model_tokens(self, model: str) -> tuple[Any, Any]:
        pair = self.tokens.get(model)
        if pair is None:
            tokens = self.sink.tokens
            pair = self.tokens[model] = (tokens.labels(self.name, model, "input"),
                                         tokens.labels(self.name, model, "output"))
        return pair


class MetricsSink:
    """Turns every run's events into Prometheus metrics in `registry`."""

    def __init__(self, registry: CollectorRegistry, manager: "SessionManager") -> None:
        self.finished: dict[tuple[str, str], int] = {}
        self.duration = Histogram(
            "agent_runtime_run_duration_seconds", "Run time from slot taken to run end, by status.",
            ["agent", "status"], buckets=RUN_BUCKETS, registry=registry)
        self.queue_wait = Histogram(
            "agent_runtime_queue_wait_seconds", "Time admitted runs waited for a concurrency slot.",
            ["agent"], buckets=WAIT_BUCKETS, registry=registry)
        self.first_chunk = Histogram(
            "agent_runtime_time_to_first_chunk_seconds",
            "Time from run start to its first output chunk (streaming agents).",
            ["agent"], buckets=WAIT_BUCKETS, registry=registry)
        self.events = Counter("agent_runtime_events", "Run events emitted, by event type.",
                              ["agent", "type"], registry=registry)
        self.tool_calls = Counter("agent_runtime_tool_calls", "Tool calls ended, by tool and status.",
                                  ["agent", "tool", "status"], registry=registry)
        self.tokens = Counter("agent_runtime_llm_tokens",
                              "LLM tokens used, by model and kind (input or output).",
                              ["agent", "model", "kind"], registry=registry)
        self._agents = {name: _AgentMetrics(self, name) for name in manager.agents}
        registry.register(RuntimeCollector(manager, self))

    def on_event(self, event: RunEvent) -> None:
        run = event.run
        agent = self._agents[run.agent]
        kind = event.type
        agent.events[kind].inc()
        data = event.data
        if kind is EventType.CHUNK:
            scratch = run.scratch
            if "metrics_first_chunk" not in scratch:
                scratch["metrics_first_chunk"] = True
                agent.first_chunk.observe(event.time - scratch["metrics_started"])
        elif kind is EventType.RUN_START:
            run.scratch["metrics_started"] = event.time
            agent.queue_wait.observe(data["queue_wait"])
        elif kind is EventType.RUN_END:
            status = data["status"]
            key = (agent.name, status.value)
            self.finished[key] = self.finished.get(key, 0) + 1
            agent.duration[status].observe(data["duration"])
        elif kind is EventType.TOOL_END:
            agent.tool(data["tool"], data["status"]).inc()
        elif kind is EventType.LLM_END:
            input_tokens, output_tokens = agent.model_tokens(data.get("model") or "")
            input_tokens.inc(data.get("input_tokens") or 0)
            output_tokens.inc(data.get("output_tokens") or 0)


class _MethodMetrics:
    """The gRPC label children of one method, bound when the method is registered."""

    __slots__ = ("started", "handling", "handled", "_labels", "_family")

    def __init__(self, metrics: "GrpcMetrics", labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._family = metrics.handled
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        # Other codes are bound on first use: most methods never see most codes.
        self.handled = {grpc.StatusCode.OK: metrics.handled.labels(*labels, "OK")}

    def begin(self, context: Any) -> float:
        self.started.inc()
        return time.perf_counter()

    def end(self, started: float, code: grpc.StatusCode) -> None:
        self.handling.observe(time.perf_counter() - started)
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self._family.labels(*self._labels, GRPC_CODES[code])
        child.inc()


class GrpcMetrics:
    """The usual gRPC server family, recorded for every method the server serves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "RPCs started on the server.", labels,
                               registry=registry)
        self.handled = Counter("grpc_server_handled", "RPCs completed on the server, by status code.",
                               [*labels, "grpc_code"], registry=registry)
        self.handling = Histogram("grpc_server_handling_seconds",
                                  "Time from RPC start to its status being decided.", labels,
                                  buckets=RPC_BUCKETS, registry=registry)

    def method(self, service: str, method: str, grpc_type: str) -> _MethodMetrics:
        return _MethodMetrics(self, (grpc_type, service, method))


class MetricsEndpoint:
    """`/metrics` over HTTP for `registry`, served from a thread so scrapes never wait
    on the event loop (and a busy loop never delays a scrape)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host.strip("[]")
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve; returns the bound port."""
        try:
            self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self.host}:{self.port}: {exc}") from None
        self.port = self._server.server_address[1]
        return self.port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join()
