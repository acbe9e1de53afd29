"""OpenTelemetry spans for RPCs and runs (RPC and GenAI semantic conventions).

- `RpcTracer`: a SERVER span per RPC, continuing the caller's W3C `traceparent`/
  `tracestate` metadata, made current for the handler (so the run's span is its
  child) and with the trace id returned in trailing metadata.
- `TracingSink`: from the per-run event stream, `invoke_agent {agent}` per run with
  `chat {model}` and `execute_tool {tool}` children and custom events as span events.

Tracing is off unless a TracerProvider is handed in or the standard `OTEL_*`
environment variables ask for an exporter (`provider_from_env`); when off, none
of this is installed, so there is no span work at all.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .events import EventType, RunEvent, RunStatus
from .grpc.instrument import invocation_metadata

logger = logging.getLogger("agent_runtime.tracing")

TRACE_ID_KEY = "agent-runtime-trace-id"
INSTRUMENTATION = "agent_runtime"
DEFAULT_SERVICE_NAME = "agent-runtime"
# Server span status is ERROR for these codes only (RPC semantic conventions).
_SERVER_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
                            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})
_OK = grpc.StatusCode.OK
_SERVER, _INTERNAL = SpanKind.SERVER, SpanKind.INTERNAL
_RUN_START, _RUN_END, _CHUNK = EventType.RUN_START, EventType.RUN_END, EventType.CHUNK
_PROPAGATED = frozenset({"traceparent", "tracestate"})
_PROPAGATOR = TraceContextTextMapPropagator()
_PRIMITIVES = (str, bool, int, float)


def _attribute_set(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """Attributes that many spans share, made once: kept encoded by the runtime's own
    tracer (`otlp_tracer.AttributeSet`, imported only once tracing is on), a plain dict to
    any other."""
    from .otlp_tracer import AttributeSet

    return AttributeSet(attributes)


class _RpcSpans:
    """The server span of each call of one method."""

    __slots__ = ("tracer", "name", "attributes", "ok")

    def __init__(self, tracer: trace.Tracer, service: str, method: str, ok: Mapping[str, Any]) -> None:
        self.tracer = tracer
        self.name = f"{service}/{method}"
        self.attributes = _attribute_set({"rpc.system.name": "grpc", "rpc.system": "grpc",
                                          "rpc.method": self.name, "rpc.service": service})
        self.ok = ok

    def begin(self, context: grpc.aio.ServicerContext) -> tuple[trace.Span, object]:
        parent = None
        metadata = invocation_metadata(context)
        for key, _ in metadata:
            if key in _PROPAGATED:  # a caller's trace to continue (most calls bring none)
                parent = _PROPAGATOR.extract({key: value for key, value in metadata if key in _PROPAGATED})
                break
        span = self.tracer.start_span(self.name, context=parent, kind=_SERVER, attributes=self.attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        trace_id = span.get_span_context().trace_id
        if trace_id:
            context.set_trailing_metadata(((TRACE_ID_KEY, "%032x" % trace_id),))
        return span, token

    def end(self, token: tuple[trace.Span, object], code: grpc.StatusCode) -> None:
        span, attached = token
        if code is _OK:  # most calls: no enum property or hash on the way
            span.set_attributes(self.ok)
        else:
            span.set_attributes({"rpc.response.status_code": code.name, "rpc.grpc.status_code": code.value[0]})
            if code in _SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
        otel_context.detach(attached)


class RpcTracer:
    """An RPC observer (see grpc/instrument.py) that makes a server span per call."""

    wants_metadata = True  # a caller's traceparent

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.ok = _attribute_set({"rpc.response.status_code": "OK", "rpc.grpc.status_code": 0})

    def method(self, service: str, method: str, grpc_type: str) -> _RpcSpans:
        return _RpcSpans(self.tracer, service, method, self.ok)


def _attributes(data: Any) -> dict[str, Any]:
    """Span attributes from a custom event's data: primitives kept, the rest as text."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        return {"data": data if isinstance(data, _PRIMITIVES) else str(data)}
    return {str(key): value if isinstance(value, _PRIMITIVES) else str(value)
            for key, value in data.items() if value is not None}


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class TracingSink:
    """Spans of every run from its events; the run's span state lives in `run.scratch`."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        # The end of a run that succeeded without a model's tokens: most runs of most agents.
        self.ok_without_tokens = _attribute_set({"agent_runtime.run.status": "ok", "gen_ai.usage.input_tokens": 0,
                                                 "gen_ai.usage.output_tokens": 0})

    def on_event(self, event: RunEvent) -> None:
        kind = event.type
        if kind is _RUN_START:
            self._start_run(event)
            return
        scratch = event.run.scratch
        span = scratch.get("span")
        if span is None:
            return
        if kind is _CHUNK:
            if "span_first_chunk" not in scratch:
                scratch["span_first_chunk"] = True
                span.add_event("first_chunk", timestamp=_ns(event.time))
        elif kind is _RUN_END:
            self._end_run(event, span)
        elif kind is EventType.LLM_START:
            model = event.data.get("model") or ""
            child = self._child(span, f"chat {model}".rstrip(), event, SpanKind.CLIENT, {
                "gen_ai.operation.name": "chat", "gen_ai.request.model": model})
            scratch.setdefault("span_chats", []).append((model, child))
        elif kind is EventType.LLM_END:
            self._end_chat(event, span)
        elif kind is EventType.TOOL_START:
            data = event.data
            child = self._child(span, f"execute_tool {data['tool']}", event, SpanKind.INTERNAL, {
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": data["tool"],
                "gen_ai.tool.call.id": data.get("call_id") or ""})
            scratch.setdefault("span_tools", {})[(data["tool"], data.get("call_id"))] = child
        elif kind is EventType.TOOL_END:
            data = event.data
            child = scratch.get("span_tools", {}).pop((data["tool"], data.get("call_id")), None)
            if child is not None:
                if data["status"] is not RunStatus.OK:
                    _fail(child, data["status"].value, data.get("error") or "")
                child.end(end_time=_ns(event.time))
        elif kind is EventType.CUSTOM:
            span.add_event(event.data["name"], attributes=_attributes(event.data.get("data")),
                           timestamp=_ns(event.time))

    def _start_run(self, event: RunEvent) -> None:
        run = event.run
        queue_wait = event.data["queue_wait"]
        # The span covers the wait for a slot too: it starts when the run asked for one,
        # and a run that had to wait marks when it got its slot.
        span = self.tracer.start_span(
            f"invoke_agent {run.agent}", kind=_INTERNAL, start_time=_ns(event.time - queue_wait),
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": run.agent,
                        "gen_ai.conversation.id": run.session_id, "agent_runtime.run.id": run.run_id,
                        "user.id": run.user_id, "agent_runtime.queue_wait": queue_wait})
        if queue_wait:
            span.add_event("slot_acquired", timestamp=_ns(event.time))
        run.scratch["span"] = span
        trace_id = span.get_span_context().trace_id
        if trace_id:
            run.scratch["trace_id"] = "%032x" % trace_id
        # Current for the rest of the run's own task (whose context dies with it), so spans
        # the agent's code makes itself nest under the run.
        otel_context.attach(trace.set_span_in_context(span))

    def _child(self, parent: trace.Span, name: str, event: RunEvent, kind: SpanKind,
               attributes: dict[str, Any]) -> trace.Span:
        return self.tracer.start_span(name, context=trace.set_span_in_context(parent), kind=kind,
                                      attributes=attributes, start_time=_ns(event.time))

    def _end_chat(self, event: RunEvent, span: trace.Span) -> None:
        data = event.data
        model = data.get("model") or ""
        open_chats = event.run.scratch.get("span_chats", [])
        for index, (started_model, child) in enumerate(open_chats):
            if started_model == model:
                del open_chats[index]
                break
        else:  # an llm.end without its llm.start: a span of no length still carries the usage
            child = self._child(span, f"chat {model}".rstrip(), event, SpanKind.CLIENT, {
                "gen_ai.operation.name": "chat", "gen_ai.request.model": model})
        child.set_attribute("gen_ai.usage.input_tokens", data.get("input_tokens") or 0)
        child.set_attribute("gen_ai.usage.output_tokens", data.get("output_tokens") or 0)
        if data.get("finish_reason"):
            child.set_attribute("gen_ai.response.finish_reasons", [data["finish_reason"]])
        child.end(end_time=_ns(event.time))

    def _end_run(self, event: RunEvent, span: trace.Span) -> None:
        data, scratch, end = event.data, event.run.scratch, _ns(event.time)
        status = data["status"]
        if "span_chats" in scratch or "span_tools" in scratch:
            leftovers = [child for _, child in scratch.pop("span_chats", ())]
            leftovers += scratch.pop("span_tools", {}).values()
            for child in leftovers:  # LLM or tool calls the run's end cut short
                _fail(child, status.value if status is not RunStatus.OK else "unfinished",
                      "the run ended before this call did")
                child.end(end_time=end)
        input_tokens, output_tokens = data.get("input_tokens") or 0, data.get("output_tokens") or 0
        if status is RunStatus.OK and not (input_tokens or output_tokens):
            span.set_attributes(self.ok_without_tokens)
        else:
            span.set_attributes({"agent_runtime.run.status": status.value, "gen_ai.usage.input_tokens": input_tokens,
                                 "gen_ai.usage.output_tokens": output_tokens})
        if status is not RunStatus.OK:
            _fail(span, status.value, data.get("error") or "")
        span.end(end_time=end)


def _fail(span: trace.Span, error_type: str, message: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message or error_type))


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for trace export (off by default)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (grpc or http/protobuf)")


TRACER_ENV = "AGENT_RUNTIME_TRACER"


def provider_from_env(environ: Mapping[str, str] | None = None) -> Any:
    """A TracerProvider exporting as the OTEL_* variables say, or None when they ask for none.

    `AGENT_RUNTIME_TRACER=sdk` makes it the OpenTelemetry SDK's (TracerProvider,
    BatchSpanProcessor, the OTLP exporters), the reference path. By default (`builtin`)
    OTLP export alone is `otlp_tracer`'s, the fast path, which a conformance test
    holds to the SDK's spans: it reads the exporter, sampler (`OTEL_TRACES_SAMPLER`),
    batch and span-limit variables itself. The console exporter is the SDK's. The
    resource is the SDK's detection (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    The caller owns the provider and shuts it down.
    """
    environ = os.environ if environ is None else environ
    if not tracing_requested(environ):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    names = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    names = [name for name in names if name and name != "none"]
    tracer = environ.get(TRACER_ENV, "").strip().lower() or "builtin"
    if tracer not in ("builtin", "sdk"):
        raise ValueError(f"{TRACER_ENV}: {tracer!r} is not supported (builtin or sdk)")
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    if set(names) == {"otlp"} and tracer == "builtin":
        from .otlp_tracer import TracerProvider as OtlpTracerProvider

        provider = OtlpTracerProvider.from_env(environ, resource.attributes)
        logger.info("tracing on: exporting spans over OTLP to %s", provider.export.transport.endpoint)
        return provider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from .otlp_tracer import sampler_from_env

    sampler_from_env(environ)  # refused as with OTLP: the SDK would log an unknown one and sample all
    exporters = [_exporter(name, environ) for name in names]
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    logger.info("tracing on: exporting spans with %s", ", ".join(type(e).__name__ for e in exporters))
    return provider
