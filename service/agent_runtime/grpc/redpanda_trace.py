"""The spans of one run, built from its events, as Redpanda's `Trace`.

A Redpanda host (Redpanda Connect) sends its span in `trace_context` and
re-creates the spans returned in `Trace` under it, in its own tracer. The run's
events say everything those spans need: `invoke_agent {agent}` from run.start
to run.end, with a child `chat {model}` per LLM call and `execute_tool {tool}`
per tool call, named and attributed after the OpenTelemetry GenAI conventions.
Building them from events needs no tracer on this side and costs nothing for
callers that send no trace context.
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2

from .._proto.redpanda.runtime.v1alpha1 import agent_pb2 as pb
from ..errors import InvalidInput
from ..events import EventType, RunEvent, RunStatus
from .redpanda_messages import to_value

_HEX = re.compile(r"[0-9a-fA-F]+")


def requested_trace(request: pb.InvokeAgentRequest) -> bool:
    """Whether the caller sent a trace context (and so wants the run's spans);
    InvalidInput when it sent a malformed one."""
    if not request.HasField("trace_context") or not request.trace_context.trace_id:
        return False
    ctx = request.trace_context
    for name, text, size in (("trace_id", ctx.trace_id, 32), ("span_id", ctx.span_id, 16)):
        if len(text) != size or not _HEX.fullmatch(text) or not int(text, 16):
            raise InvalidInput(f"trace_context.{name} must be {size} hex digits, not all zero")
    if ctx.trace_flags and (len(ctx.trace_flags) != 2 or not _HEX.fullmatch(ctx.trace_flags)):
        raise InvalidInput("trace_context.trace_flags must be 2 hex digits")
    return True


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
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class RunSpans:
    """Collects one run's events into its span tree; `trace()` returns it as a Trace."""

    def __init__(self) -> None:
        self.root: _Span | None = None
        self._llm_calls: deque[_Span] = deque()
        self._tool_calls: dict[str, _Span] = {}
        self._last_time = 0.0

    def add(self, event: RunEvent) -> None:
        self._last_time = event.time
        handle = _HANDLERS.get(event.type)
        if handle is not None:
            handle(self, event)

    def _run_started(self, event: RunEvent) -> None:
        run = event.run
        self.root = _Span(f"invoke_agent {run.agent}", event.time, {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": run.agent,
            "gen_ai.conversation.id": run.session_id, "agent_runtime.run_id": run.run_id,
            "agent_runtime.queue_wait_s": float(event.data["queue_wait"])})

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


_HANDLERS = {
    EventType.RUN_START: RunSpans._run_started, EventType.RUN_END: RunSpans._run_ended,
    EventType.LLM_START: RunSpans._llm_started, EventType.LLM_END: RunSpans._llm_ended,
    EventType.TOOL_START: RunSpans._tool_started, EventType.TOOL_END: RunSpans._tool_ended,
}
