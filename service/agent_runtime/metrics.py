"""Prometheus metrics: semaphore occupancy, per-run events and the gRPC server family.

Occupancy (limit, in flight, queued) and refusals are read from the admission
counters when Prometheus scrapes. The other counters and histograms are plain
numbers too (`_Family`): the event stream and the RPC wrapper add to label
children bound once (per agent at start-up, per gRPC method at registration, per
tool or model on first use), with no locks and no `.labels()` lookups, and
prometheus_client renders them at scrape time. Every metric lives in a registry
handed in by the caller: no global state. Labels are bounded: agent, status,
event type, tool, model, gRPC method and code; never user, session or run ids.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from .events import EventType, RunEvent, RunStatus
from .metrics_http import MetricsHTTPServer

if TYPE_CHECKING:
    from .otel_metrics import OtelMirror
    from .session import SessionManager

# Agent runs last from milliseconds (a cached answer) to minutes (a long tool loop).
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Queue waits and first chunks: mostly tiny, sometimes as long as a whole run.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# RPCs include health checks (sub-millisecond) and streamed runs (minutes).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
               30, 60, 120, 300, 600)

REJECTED = "rejected"


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Buckets:
    """A histogram child: a count per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _MirroredBuckets(_Buckets):
    """A histogram child that also records into an OpenTelemetry histogram."""

    __slots__ = ("_record", "_attributes")

    def __init__(self, bounds: tuple[float, ...], record: Any, attributes: dict[str, str]) -> None:
        super().__init__(bounds)
        self._record = record
        self._attributes = attributes

    def observe(self, value: float) -> None:
        _Buckets.observe(self, value)
        self._record(value, self._attributes)


class _Family:
    """A counter or histogram family of plain-number children, rendered at scrape time.

    Only the event loop's thread writes; a scrape (another thread) copies each child
    in single C calls under the GIL, so it never sees a torn dict or list."""

    def __init__(self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float] = (),
                 mirror: "OtelMirror | None" = None, *, mirror_counter: bool = True) -> None:
        """With `mirror`, the family is reported through an OpenTelemetry meter too
        (a counter family registers itself unless `mirror_counter` is False)."""
        self.name = name
        self.help = help
        self.labels = list(labels)
        self.bounds = (*buckets, math.inf) if buckets else ()
        self.children: dict[tuple[str, ...], Any] = {}
        self._le = [floatToGoString(bound) for bound in self.bounds]
        self._record = None
        if mirror is not None and self.bounds:
            self._record = mirror.histogram(self)
        elif mirror is not None and mirror_counter:
            mirror.counter(self)

    def child(self, *values: str) -> Any:
        found = self.children.get(values)
        if found is None:
            if self._record is not None:
                found = _MirroredBuckets(self.bounds, self._record, dict(zip(self.labels, values)))
            else:
                found = _Buckets(self.bounds) if self.bounds else _Count()
            self.children[values] = found
        return found

    def collect(self) -> Metric:
        children = list(self.children.items())
        if not self.bounds:
            family = CounterMetricFamily(self.name, self.help, labels=self.labels)
            for values, count in children:
                family.add_metric(values, count.value)
            return family
        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for values, histogram in children:
            counts, total = list(histogram.counts), histogram.sum
            family.add_metric(values, list(zip(self._le, accumulate(counts))), total)
        return family


class _Collector:
    """Hands families to a registry; `describe` lets it refuse clashing names."""

    def __init__(self, families: Sequence[_Family]) -> None:
        self.families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class RuntimeCollector(_Collector):
    """The run families plus occupancy and refusals, read from the SessionManager's
    admission counters at scrape time."""

    def __init__(self, manager: "SessionManager", families: Sequence[_Family], runs: _Family) -> None:
        super().__init__(families)
        self.manager = manager
        self.runs = runs

    def collect(self) -> Iterator[Metric]:
        admission = self.manager.admission
        agents = tuple(self.manager.agents)
        # Copies taken in one C call each: the event loop thread may add keys meanwhile.
        running, queued, rejected = dict(admission.running), dict(admission.queued), dict(admission.rejected)
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
        buffered = GaugeMetricFamily("agent_runtime_stream_buffered_bytes",
                                     "Bytes of events streamed runs hold that their callers have not read "
                                     "yet (estimated; each run's is bounded).")
        buffered.add_metric([], self.manager.buffered.value)
        yield limit
        yield in_flight
        yield waiting
        yield buffered
        for family in self.families:
            metric = family.collect()
            if family is self.runs:
                for agent in sorted({*agents, *rejected}):
                    metric.add_metric([agent, REJECTED], rejected.get(agent, 0))
            yield metric


class _AgentMetrics:
    """The children of one agent, bound once."""

    __slots__ = ("events", "runs", "duration", "queue_wait", "first_chunk", "name")

    def __init__(self, sink: "MetricsSink", name: str) -> None:
        self.name = name
        self.events = {t: sink.events.child(name, t.value) for t in EventType}
        self.runs = {s: sink.runs.child(name, s.value) for s in RunStatus}
        self.duration = {s: sink.duration.child(name, s.value) for s in RunStatus}
        self.queue_wait = sink.queue_wait.child(name)
        self.first_chunk = sink.first_chunk.child(name)


class MetricsSink:
    """Turns every run's events into Prometheus metrics in `registry` (and through
    an OpenTelemetry meter too, with `mirror`)."""

    def __init__(self, registry: CollectorRegistry, manager: "SessionManager",
                 mirror: "OtelMirror | None" = None) -> None:
        self.runs = _Family(
            "agent_runtime_runs", "Runs ended, by final status; `rejected` counts runs refused by "
            "admission (queue full, queue wait exceeded, per-user cap, draining).", ["agent", "status"],
            mirror=mirror, mirror_counter=False)
        self.duration = _Family("agent_runtime_run_duration_seconds",
                                "Run time from slot taken to run end, by status.",
                                ["agent", "status"], RUN_BUCKETS, mirror)
        self.queue_wait = _Family("agent_runtime_queue_wait_seconds",
                                  "Time admitted runs waited for a concurrency slot.", ["agent"], WAIT_BUCKETS,
                                  mirror)
        self.first_chunk = _Family("agent_runtime_time_to_first_chunk_seconds",
                                   "Time from run start to its first output chunk (streaming agents).",
                                   ["agent"], WAIT_BUCKETS, mirror)
        self.events = _Family("agent_runtime_events", "Run events emitted, by event type.", ["agent", "type"],
                              mirror=mirror)
        self.tool_calls = _Family("agent_runtime_tool_calls", "Tool calls ended, by tool and status.",
                                  ["agent", "tool", "status"], mirror=mirror)
        self.tokens = _Family("agent_runtime_llm_tokens", "LLM tokens used, by model and kind (input or output).",
                              ["agent", "model", "kind"], mirror=mirror)
        if mirror is not None:
            mirror.occupancy(manager, self.runs, REJECTED)
        self._agents: dict[str, _AgentMetrics] = {}
        for name in manager.agents:
            self._agent(name)
        registry.register(RuntimeCollector(manager, (
            self.runs, self.duration, self.queue_wait, self.first_chunk, self.events, self.tool_calls,
            self.tokens), self.runs))

    def _agent(self, name: str) -> _AgentMetrics:
        """Children of an agent (bound at start-up for the served ones)."""
        bound = self._agents[name] = _AgentMetrics(self, name)
        return bound

    def on_event(self, event: RunEvent) -> None:
        run, _, kind, when, data = event  # unpacked at once: quicker than a named tuple's fields one by one
        agent = self._agents.get(run.agent) or self._agent(run.agent)
        agent.events[kind].value += 1
        if kind is _RUN_END:
            status = data["status"]
            agent.runs[status].value += 1
            agent.duration[status].observe(data["duration"])
        elif kind is _RUN_START:
            run.scratch["metrics_started"] = when
            agent.queue_wait.observe(data["queue_wait"])
        elif kind is _CHUNK:
            scratch = run.scratch
            if "metrics_first_chunk" not in scratch:
                scratch["metrics_first_chunk"] = True
                agent.first_chunk.observe(when - scratch["metrics_started"])
        elif kind is EventType.TOOL_END:
            self.tool_calls.child(agent.name, data["tool"], data["status"].value).value += 1
        elif kind is EventType.LLM_END:
            model = data.get("model") or ""
            self.tokens.child(agent.name, model, "input").value += data.get("input_tokens") or 0
            self.tokens.child(agent.name, model, "output").value += data.get("output_tokens") or 0


_RUN_START, _RUN_END, _CHUNK = EventType.RUN_START, EventType.RUN_END, EventType.CHUNK
_OK = grpc.StatusCode.OK


class _MethodMetrics:
    """The gRPC children of one method, bound when the method is registered."""

    __slots__ = ("started", "handling", "handled", "_ok", "_labels", "_family")

    def __init__(self, metrics: "GrpcMetrics", labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._family = metrics.handled
        self.started = metrics.started.child(*labels)
        self.handling = metrics.handling.child(*labels)
        # OK is bound now and counted without a lookup; other codes are bound on first use:
        # most methods never see most codes.
        self._ok = metrics.handled.child(*labels, "OK")
        self.handled: dict[grpc.StatusCode, Any] = {}

    def begin(self, context: Any) -> float:
        self.started.value += 1
        return time.perf_counter()

    def end(self, started: float, code: grpc.StatusCode) -> None:
        self.handling.observe(time.perf_counter() - started)
        if code is _OK:  # most calls; a StatusCode's hash is a Python-level call
            self._ok.value += 1
            return
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self._family.child(*self._labels, code.name)
        child.value += 1


class GrpcMetrics:
    """The usual gRPC server family, recorded for every method the server serves."""

    def __init__(self, registry: CollectorRegistry, mirror: "OtelMirror | None" = None) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = _Family("grpc_server_started", "RPCs started on the server.", labels, mirror=mirror)
        self.handled = _Family("grpc_server_handled", "RPCs completed on the server, by status code.",
                               [*labels, "grpc_code"], mirror=mirror)
        self.handling = _Family("grpc_server_handling_seconds",
                                "Time from RPC start to its status being decided.", labels, RPC_BUCKETS, mirror)
        registry.register(_Collector((self.started, self.handled, self.handling)))

    def method(self, service: str, method: str, grpc_type: str) -> _MethodMetrics:
        return _MethodMetrics(self, (grpc_type, service, method))


class MetricsEndpoint:
    """`/metrics` over HTTP for `registry`, served from a thread so scrapes never wait
    on the event loop (and a busy loop never delays a scrape); bounded against slow and
    idle clients (metrics_http.py)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 documents: Mapping[str, tuple[str, bytes]] | None = None) -> None:
        """`documents` are served beside /metrics: path -> (content type, body)."""
        self.registry = registry
        self.documents = dict(documents or {})
        self.host = host.strip("[]")
        self.port = port
        self._server: MetricsHTTPServer | None = None

    def start(self) -> int:
        """Listen and serve; returns the bound port."""
        try:
            self._server = MetricsHTTPServer(self.registry, self.host, self.port, documents=self.documents)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self.host}:{self.port}: {exc}") from None
        self._server.start()
        self.port = self._server.port
        return self.port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
