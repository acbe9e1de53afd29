"""The spans of one run as Redpanda's `Trace`, for callers that send a `trace_context`.

A Redpanda host (Redpanda Connect) sends its span in `trace_context` and
re-creates the spans returned in `Trace` under it, in its own tracer. Two
recorders give the same span tree (`invoke_agent {agent}` with `chat {model}`
and `execute_tool {tool}` children, after the OpenTelemetry GenAI conventions):

- `CollectedSpans`, when this server traces (tracing.py): the run's real spans,
  made under the caller's span. The returned span ids are those exported.
- `EventSpans`, when it does not: spans built from the run's own events, so no
  tracer is needed on this side.

`CollectedSpans` is current (a context variable, which the run inherits) around
the run it records, and `SpanCollector` (a span processor on the server's tracer
provider) hands it the spans the run makes: for other runs that costs one context
variable read per span. `EventSpans` listens to its run's events only
(`Runner.listen`), so other runs pay nothing for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import secrets
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from google.protobuf import timestamp_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from .._proto.redpanda.runtime.v1alpha1 import agent_pb2 as pb
from ..errors import InvalidInput
from ..events import EventType, RunEvent, RunStatus
from ..runner import Runner
from .redpanda_messages import to_value

_HEX = re.compile(r"[0-9a-fA-F]+")


def recorder(request: pb.InvokeAgentRequest, traced: bool) -> "EventSpans | CollectedSpans | None":
    """What records the run's spans for the caller: None when it sent no trace context;
    InvalidInput when it sent a malformed one."""
    if not request.HasField("trace_context") or not request.trace_context.trace_id:
        return None
    ctx = request.trace_context
    for name, text, size in (("trace_id", ctx.trace_id, 32), ("span_id", ctx.span_id, 16)):
        if len(text) != size or not _HEX.fullmatch(text) or not int(text, 16):
            raise InvalidInput(f"trace_context.{name} must be {size} hex digits, not all zero")
    if ctx.trace_flags and (len(ctx.trace_flags) != 2 or not _HEX.fullmatch(ctx.trace_flags)):
        raise InvalidInput("trace_context.trace_flags must be 2 hex digits")
    return CollectedSpans(ctx) if traced else EventSpans()


@dataclass
class _Span:
    name: str
    start: float
    attributes: dict[str, Any]
    end: float | None = None
    span_id: str = field(default_factory=lambda: secrets.token_hex(8))
    children: list["_Span"] = field(default_factory=list)

    def message(self, end_default: float) -> pb.Span:
        span = pb.Span(span_id=self.span_id, name=self.name, start_time=_timestamp(self.start),
                       end_time=_timestamp(self.end if self.end is not None else end_default))
        for key, value in self.attributes.items():
            span.attributes[key].CopyFrom(to_value(value))
        span.child_spans.extend(child.message(end_default) for child in self.children)
        return span


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    return _timestamp_ns(int(seconds * 1e9))


def _timestamp_ns(nanoseconds: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(nanoseconds)
    return stamp


_recording: contextvars.ContextVar["EventSpans | CollectedSpans | None"] = contextvars.ContextVar(
    "agent_runtime_redpanda_trace", default=None)


class EventSpans:
    """Builds one run's span tree from its events; `trace()` returns it as a Trace."""

    def __init__(self) -> None:
        self.root: _Span | None = None
        self._llm_calls: deque[_Span] = deque()
        self._tool_calls: dict[str, _Span] = {}
        self._last_time = 0.0

    def on_event(self, event: RunEvent) -> None:
        self._last_time = event.time
        handle = _HANDLERS.get(event.type)
        if handle is not None:
            handle(self, event)

    def _run_started(self, event: RunEvent) -> None:
        run = event.run
        queue_wait = float(event.data["queue_wait"])
        # as tracing.py's: the span covers the wait for a slot too
        self.root = _Span(f"invoke_agent {run.agent}", event.time - queue_wait, {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": run.agent,
            "gen_ai.conversation.id": run.session_id, "agent_runtime.run.id": run.run_id,
            "agent_runtime.queue_wait": queue_wait})

    def _run_ended(self, event: RunEvent) -> None:
        data, root = event.data, self.root
        root.end = event.time
        status: RunStatus = data["status"]
        root.attributes["agent_runtime.run.status"] = status.value
        root.attributes["gen_ai.usage.input_tokens"] = data.get("input_tokens") or 0
        root.attributes["gen_ai.usage.output_tokens"] = data.get("output_tokens") or 0
        if status is not RunStatus.OK:
            root.attributes["error.type"] = status.value
            root.attributes["error.message"] = data.get("error", "")

    def _llm_started(self, event: RunEvent) -> None:
        model = event.data.get("model", "")
        span = _Span(f"chat {model}".strip(), event.time,
                     {"gen_ai.operation.name": "chat", "gen_ai.request.model": model})
        self.root.children.append(span)
        self._llm_calls.append(span)

    def _llm_ended(self, event: RunEvent) -> None:
        if not self._llm_calls:
            return
        span, data = self._llm_calls.popleft(), event.data
        span.end = event.time
        span.attributes["gen_ai.usage.input_tokens"] = data.get("input_tokens") or 0
        span.attributes["gen_ai.usage.output_tokens"] = data.get("output_tokens") or 0
        if data.get("finish_reason"):
            span.attributes["gen_ai.response.finish_reasons"] = [data["finish_reason"]]

    def _tool_started(self, event: RunEvent) -> None:
        data = event.data
        span = _Span(f"execute_tool {data['tool']}", event.time, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": data["tool"],
            "gen_ai.tool.call.id": data.get("call_id", "")})
        self.root.children.append(span)
        self._tool_calls[data.get("call_id") or data["tool"]] = span

    def _tool_ended(self, event: RunEvent) -> None:
        data = event.data
        span = self._tool_calls.pop(data.get("call_id") or data["tool"], None)
        if span is None:
            return
        span.end = event.time
        if data["status"] is not RunStatus.OK:
            span.attributes["error.type"] = data["status"].value
            span.attributes["error.message"] = data.get("error", "")

    def trace(self) -> pb.Trace:
        if self.root is None:
            return pb.Trace()
        return pb.Trace(spans=[self.root.message(self._last_time)])


    def scope(self) -> contextlib.nullcontext:
        """Around the run: nothing to do, its events come through `record`."""
        return contextlib.nullcontext()

    def record(self, runner: Runner) -> None:
        """Listen to the run's events (a listener of this run only)."""
        runner.listen(self)


_HANDLERS = {
    EventType.RUN_START: EventSpans._run_started, EventType.RUN_END: EventSpans._run_ended,
    EventType.LLM_START: EventSpans._llm_started, EventType.LLM_END: EventSpans._llm_ended,
    EventType.TOOL_START: EventSpans._tool_started, EventType.TOOL_END: EventSpans._tool_ended,
}

class SpanCollector(SpanProcessor):
    """A span processor that gives each ended span to the CollectedSpans recording its run."""

    def on_end(self, span: ReadableSpan) -> None:
        recording = _recording.get()
        if recording is not None:
            recording.spans.append(span)


class CollectedSpans:
    """The run's real spans: the run starts under the caller's span, its ended spans are
    collected, and `trace()` returns them as a tree."""

    def __init__(self, caller: pb.TraceContext) -> None:
        self.spans: list[ReadableSpan] = []
        self.parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            trace_id=int(caller.trace_id, 16), span_id=int(caller.span_id, 16), is_remote=True,
            trace_flags=trace.TraceFlags(int(caller.trace_flags or "01", 16)))))

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Around the run: what it starts inherits the caller's span and this collector."""
        recording, attached = _recording.set(self), otel_context.attach(self.parent)
        try:
            yield
        finally:
            otel_context.detach(attached)
            _recording.reset(recording)

    def record(self, runner: Runner) -> None:
        """Nothing to do: the run's spans come through `SpanCollector` while in `scope`."""

    def trace(self) -> pb.Trace:
        ids = {span.context.span_id for span in self.spans}
        children: dict[int, list[ReadableSpan]] = defaultdict(list)
        roots = []
        for span in sorted(self.spans, key=lambda s: s.start_time or 0):
            if span.parent is not None and span.parent.span_id in ids:
                children[span.parent.span_id].append(span)
            else:
                roots.append(span)

        def message(span: ReadableSpan) -> pb.Span:
            converted = pb.Span(span_id=trace.format_span_id(span.context.span_id), name=span.name,
                                start_time=_timestamp_ns(span.start_time or 0),
                                end_time=_timestamp_ns(span.end_time or span.start_time or 0),
                                child_spans=[message(child) for child in children[span.context.span_id]])
            for key, value in (span.attributes or {}).items():
                converted.attributes[key].CopyFrom(to_value(value))
            return converted

        return pb.Trace(spans=[message(span) for span in roots])
