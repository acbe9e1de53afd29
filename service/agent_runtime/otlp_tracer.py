"""An OpenTelemetry tracer that encodes each span as OTLP protobuf when it ends.

The OpenTelemetry SDK cost a traced unary call about 160 µs of CPU on this
server: 63 µs to make its two spans and 88 µs to encode them (ReadableSpan to
protobuf objects to bytes), more than the call itself costs gRPC. This tracer is
the API's (`opentelemetry.trace.Tracer`, so `TracingSink`, `RpcTracer`, the
agents' own spans and propagation work with it as with the SDK's) and keeps only
what OTLP export needs: a span is a few slots, and `end()` writes its bytes
straight onto a queue that a thread sends in batches over OTLP/gRPC or
OTLP/HTTP. The standard `OTEL_*` variables configure it (`from_env`): exporter
endpoint, protocol, headers, TLS, compression and timeout; the built-in
samplers; the batch queue, batch size and delay; span limits; the resource (the
SDK's own detection, read once at start).

A provider handed to the server by an embedding application (an SDK
TracerProvider with its own processors) is used as it is; this one is what
`tracing.provider_from_env` makes for the server's own OTLP export.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import logging
import random
import ssl
import struct
import threading
import time
import traceback
from collections import deque
from operator import itemgetter
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol, Sequence
from urllib.parse import unquote, urlparse

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from .protowire import SMALL as _SMALL
from .protowire import delimited as _delimited
from .protowire import varint as _varint

logger = logging.getLogger("agent_runtime.otlp")

_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RETRYABLE_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                             grpc.StatusCode.CANCELLED, grpc.StatusCode.OUT_OF_RANGE,
                             grpc.StatusCode.DATA_LOSS})
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_EMPTY_STATE = TraceState()
# OTLP's span flags: the parent's remoteness is known (0x100), and it is remote (0x200).
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_CACHE_LIMIT = 4096  # encoded keys and names kept, so agents' own keys cannot grow it without bound

# -- protobuf encoding (protowire's helpers, module globals here) ----------------
_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack
_MASK64 = (1 << 64) - 1
_first = itemgetter(0)


def _any_value(value: Any) -> bytes:
    """An AnyValue message; a value of no OTLP type is sent as its text."""
    kind = type(value)
    if kind is str:
        return _delimited(b"\x0a", value.encode("utf-8", "replace"))
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if -(1 << 63) <= value < (1 << 63):
            return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
        return _any_value(str(value))
    if kind is float:
        return b"\x21" + _double(value)
    if kind is bytes:
        return _delimited(b"\x3a", value)
    if isinstance(value, (list, tuple)):
        return _delimited(b"\x2a", b"".join(_delimited(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, str):  # a str enum member or another subclass: its text, as the SDK sends it
        return _any_value(str.__str__(value))
    for base in (bool, int, float):  # an enum member or another subclass
        if isinstance(value, base):
            return _any_value(base(value))
    return _any_value(str(value))


_keys: dict[str, bytes] = {}


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message: the key's bytes are made once per key; short text is
    encoded here, without a call per nested message."""
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _delimited(b"\x0a", str(key).encode("utf-8", "replace"))
        if len(_keys) < _CACHE_LIMIT:
            _keys[key] = encoded
    kind = type(value)
    if kind is str:
        text = value.encode("utf-8", "replace")
        n = len(text)
        if n < 0x7E:
            return encoded + b"\x12" + _SMALL[n + 2] + b"\x0a" + _SMALL[n] + text
    elif kind is float:
        return encoded + b"\x12\x09\x21" + _double(value)
    return encoded + _delimited(b"\x12", _any_value(value))


def _attributes(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    return b"".join([_delimited(tag, _key_value(key, value)) for key, value in attributes.items()
                     if value is not None])


# Span attribute fields kept encoded, by (key, value), one cache per exact type of value:
# True and 1.0 equal 1, so one cache for all would encode them as it. Not floats: -0.0
# equals 0.0 but is not encoded as it.
_ENCODED_TEXT: dict[tuple[str, Any], bytes] = {}
_ENCODED_BY_TYPE: dict[type, dict[tuple[str, Any], bytes]] = {str: _ENCODED_TEXT, int: {}, bool: {}}


def _span_attribute(item: tuple[str, Any]) -> bytes:
    """One attribute field of a span (nothing for a None value). Fields of text, whole
    number and bool values are kept: most repeat on every span (method, agent, operation,
    status), and encoding them was half of what a span cost. Unique ones (run ids)
    fill a cache too, so it starts over when full."""
    value = item[1]
    if value is None:
        return b""
    body = _key_value(*item)
    n = len(body)
    field = b"\x4a" + (_SMALL[n] if n < 0x80 else _varint(n)) + body
    cache = _ENCODED_BY_TYPE.get(type(value))
    if cache is not None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[item] = field
    return field


class AttributeSet(dict):
    """Span attributes that many spans share (an RPC method's, the OK status), with their
    fields encoded once. Given whole to this tracer's `start_span` or `set_attributes`, a
    span keeps it as it is, neither copied nor encoded field by field again; writing one
    of its keys later folds it into the span's own attributes. Other tracers see a dict.
    Not to be changed once made."""

    __slots__ = ("fields",)

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        super().__init__((key, value) for key, value in attributes.items() if value is not None)
        self.fields = b"".join(map(_span_attribute, self.items()))


def _scope(name: str, version: str | None) -> bytes:
    """The InstrumentationScope field of a ScopeSpans."""
    scope = _delimited(b"\x0a", name.encode())
    if version:
        scope += _delimited(b"\x12", version.encode())
    return _delimited(b"\x0a", scope)


def export_request(resource: bytes, batch: Sequence[tuple[bytes, bytes]]) -> bytes:
    """An ExportTraceServiceRequest of encoded spans, each `(scope, span)`, grouped by scope
    (a pass over the batch per scope: there are few, mostly one). Its bytes are joined
    once, not copied at each level of nesting."""
    parts: list[bytes] = []
    size = len(resource)
    for scope in dict.fromkeys(map(_first, batch)):
        spans = [span for owner, span in batch if owner == scope]
        n = len(scope) + sum(map(len, spans))
        header = b"\x12" + _varint(n)
        parts += (header, scope, *spans)
        size += len(header) + n
    return b"".join((b"\x0a", _varint(size), resource, *parts))


def resource_field(attributes: Mapping[str, Any]) -> bytes:
    """The Resource field of a ResourceSpans."""
    return _delimited(b"\x0a", _attributes(b"\x0a", attributes))


# -- spans ----------------------------------------------------------------------
class Span(trace.Span):
    """A recording span; `end()` encodes it and hands it to the export queue."""

    __slots__ = ("_tracer", "_name", "_kind", "trace_id", "span_id", "_parent", "_trace_state",
                 "_start", "_end", "_attributes", "_sets", "_events", "_links", "_status", "_dropped", "_dropped_events",
                 "_context")

    def __init__(self, tracer: "Tracer", name: str, kind: SpanKind, trace_id: int, span_id: int,
                 parent: "SpanContext | Span | None", trace_state: TraceState, attributes: dict[str, Any],
                 links: Sequence[trace.Link], start: int) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self._parent = parent
        self._trace_state = trace_state
        self._start = start
        self._end = 0
        self._attributes = attributes
        self._sets: tuple[AttributeSet, ...] = ()  # kept whole, no key in common with each other or the dict
        self._events: list[bytes] | None = None
        self._links = links
        self._status: Status | None = None
        self._dropped = 0  # attributes past the limit
        self._dropped_events = 0
        self._context: SpanContext | None = None

    # The parts of the SDK's ReadableSpan that span processors read.
    @property
    def name(self) -> str:
        return self._name

    @property
    def context(self) -> SpanContext:
        return self.get_span_context()

    @property
    def parent(self) -> SpanContext | None:
        parent = self._parent
        return parent.get_span_context() if type(parent) is Span else parent

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def start_time(self) -> int:
        return self._start

    @property
    def end_time(self) -> int | None:
        return self._end or None

    @property
    def attributes(self) -> Mapping[str, Any]:
        if not self._sets:
            return self._attributes
        merged: dict[str, Any] = {}
        for kept in self._sets:
            merged.update(kept)
        merged.update(self._attributes)
        return merged

    @property
    def status(self) -> Status:
        return self._status or Status(StatusCode.UNSET)

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:  # SpanContext's own __new__ only checks what start_span made valid
            context = self._context = _new_tuple(SpanContext, (
                self.trace_id, self.span_id, False, _SAMPLED, self._trace_state, True))
        return context

    def is_recording(self) -> bool:
        return not self._end

    def set_attribute(self, key: str, value: Any) -> None:
        self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end:
            return
        own = self._attributes
        limit = self._tracer.limits[0]
        held = len(own)
        sets = self._sets
        if sets or type(attributes) is AttributeSet:
            apart = True  # no key of `attributes` in a kept set
            for kept in sets:
                held += len(kept)
                apart = apart and kept.keys().isdisjoint(attributes)
            if type(attributes) is AttributeSet and apart and held + len(attributes) <= limit \
                    and own.keys().isdisjoint(attributes):
                self._sets = (*sets, attributes)
                return
            if not apart:  # a key of a kept set written: the sets fold into the dict
                own = self._fold()
        crowded = held + len(attributes) > limit  # (else there is room for all: no key to count)
        for key, value in attributes.items():
            if value is not None:
                if crowded and key not in own and len(own) >= limit:
                    self._dropped += 1
                else:
                    own[key] = value

    def _fold(self) -> dict[str, Any]:
        """The kept sets and the span's own attributes as one dict, its own from now on."""
        own = self._attributes = dict(self.attributes)
        self._sets = ()
        return own

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> None:
        if self._end:
            return
        events = self._events
        if events is None:
            events = self._events = []
        elif len(events) >= self._tracer.limits[1]:
            self._dropped_events += 1
            return
        event = b"\x09" + _fixed64(time.time_ns() if timestamp is None else timestamp) + _delimited(
            b"\x12", name.encode("utf-8", "replace"))
        if attributes:
            event += _attributes(b"\x1a", attributes)
        events.append(_delimited(b"\x5a", event))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if not self._end and context.is_valid:
            self._links = (*self._links, trace.Link(context, attributes))

    def update_name(self, name: str) -> None:
        if not self._end:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: OK is final, UNSET changes nothing, a description only goes with ERROR."""
        if self._end or (self._status is not None and self._status.status_code is StatusCode.OK):
            return
        if not isinstance(status, Status):
            status = Status(status, description if status is StatusCode.ERROR else None)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self.add_event("exception", {
            "exception.type": type(exception).__qualname__, "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped), **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end:
            return
        self._end = end_time or time.time_ns()
        tracer = self._tracer
        tracer.export.add(tracer.scope, self._encoded())
        for processor in tracer.processors:
            processor.on_end(self)

    def _encoded(self) -> bytes:
        """This span as the `spans` field of a ScopeSpans message (the hot path of tracing:
        as few calls and as few bytes objects as it can take)."""
        trace_id, parent = self.trace_id, self._parent
        parts = [_ids(0x0A10, trace_id >> 64, trace_id & _MASK64, 0x1208, self.span_id)]
        if self._trace_state is not _EMPTY_STATE and self._trace_state:
            parts.append(_delimited(b"\x1a", self._trace_state.to_header().encode()))
        flags = _LOCAL_PARENT
        if parent is not None:
            parts.append(_parent_id(0x2208, parent.span_id))
            if type(parent) is not Span and parent.is_remote:
                flags = _REMOTE_PARENT
        name = self._tracer.names.get(self._name)
        if name is None:
            name = self._tracer.name_field(self._name)
        parts += (name, _KIND[id(self._kind)], _times(0x39, self._start, 0x41, self._end))
        for kept in self._sets:
            parts.append(kept.fields)
        caches = _ENCODED_BY_TYPE
        for item in self._attributes.items():
            kind = type(item[1])  # (values of other types may not hash)
            cache = _ENCODED_TEXT if kind is str else caches.get(kind)
            parts.append(cache is not None and cache.get(item) or _span_attribute(item))
        if self._dropped:
            parts += (b"\x50", _varint(self._dropped))
        if self._events:
            parts += self._events
        if self._dropped_events:
            parts += (b"\x60", _varint(self._dropped_events))
        for link in self._links:
            linked = link.context
            body = _ids(0x0A10, linked.trace_id >> 64, linked.trace_id & _MASK64, 0x1208, linked.span_id)
            if link.attributes:
                body += _attributes(b"\x22", link.attributes)
            link_flags = int(linked.trace_flags) | (_HAS_IS_REMOTE | _IS_REMOTE if linked.is_remote else _HAS_IS_REMOTE)
            parts.append(_delimited(b"\x6a", body + b"\x35" + _fixed32(link_flags)))
        status = self._status
        if status is None:
            parts.append(b"\x7a\x00")  # UNSET, sent as the SDK sends it: an empty Status
        else:
            body = b"\x18" + _SMALL[status.status_code.value]
            if status.description:
                body = _delimited(b"\x12", status.description.encode("utf-8", "replace")) + body
            parts.append(_delimited(b"\x7a", body))
        parts.append(flags)
        body = b"".join(parts)
        n = len(body)
        return b"\x12" + (_SMALL[n] if n < 0x80 else _varint(n)) + body

    def __repr__(self) -> str:
        return f"Span({self._name!r}, trace_id=0x{self.trace_id:032x}, span_id=0x{self.span_id:016x})"


# OTLP's SpanKind is the API's plus one (0 is UNSPECIFIED there); by id, as an enum
# member's hash is a Python-level call.
_KIND = {id(kind): b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}
# The flags field: sampled, and whether the parent is known to be remote (0x100) and is (0x200).
_LOCAL_PARENT = b"\x85\x01" + _fixed32(0x01 | _HAS_IS_REMOTE)
_REMOTE_PARENT = b"\x85\x01" + _fixed32(0x01 | _HAS_IS_REMOTE | _IS_REMOTE)
_times = struct.Struct("<BQBQ").pack  # start and end, each with its field tag
# The trace id (two halves) and span id, each with its tag and length; a parent's id.
_ids = struct.Struct(">HQQHQ").pack
_parent_id = struct.Struct(">HQ").pack
_new_tuple = tuple.__new__


# -- sampling -------------------------------------------------------------------
# A root sampler decides by trace id; None samples every trace without a call.
Sample = Callable[[int], bool] | None


def _ratio(rate: float) -> Sample:
    """TraceIdRatioBased: the same decision as the SDK's for the same trace id."""
    bound = round(rate * (1 << 64))
    return lambda trace_id: (trace_id & 0xFFFFFFFFFFFFFFFF) < bound


_ROOT_SAMPLERS: dict[str, Callable[[float], Sample]] = {
    "always_on": lambda _: None,
    "always_off": lambda _: lambda trace_id: False,
    "traceidratio": _ratio,
}


def sampler_from_env(environ: Mapping[str, str]) -> tuple[Sample, bool]:
    """The root sampler `OTEL_TRACES_SAMPLER` names, and whether a parent's decision is followed."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower() or "parentbased_always_on"
    parent_based = name.startswith("parentbased_")
    root = name.removeprefix("parentbased_")
    if root not in _ROOT_SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER: unknown sampler {name!r} (always_on, always_off, traceidratio, "
                         "or parentbased_ with one of them)")
    try:
        rate = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0") or "1.0")
    except ValueError:
        raise ValueError("OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1") from None
    if root == "traceidratio" and not 0.0 <= rate <= 1.0:
        raise ValueError("OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1")
    return _ROOT_SAMPLERS[root](rate), parent_based


# -- the tracer -------------------------------------------------------------------
class Tracer(trace.Tracer):
    def __init__(self, provider: "TracerProvider", scope: bytes) -> None:
        self.export = provider.export
        self.processors = provider.processors
        self.limits = provider.limits
        self.scope = scope
        self._sample, self._parent_based = provider.sampler
        self.names: dict[str, bytes] = {}

    def name_field(self, name: str) -> bytes:
        encoded = self.names.get(name)
        if encoded is None:
            encoded = _delimited(b"\x2a", name.encode("utf-8", "replace"))
            if len(self.names) < _CACHE_LIMIT:
                self.names[name] = encoded
        return encoded

    def start_span(self, name: str, context: otel_context.Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None,
                   links: Sequence[trace.Link] | None = None, start_time: int | None = None,
                   record_exception: bool = True, set_status_on_exception: bool = True) -> trace.Span:
        parent_span = trace.get_current_span(context)
        if type(parent_span) is Span:  # one of ours (recording, so sampled): no SpanContext to build
            parent, trace_id, state, sampled = parent_span, parent_span.trace_id, parent_span._trace_state, True
        else:
            parent = parent_span.get_span_context() if isinstance(parent_span, trace.Span) else None
            if parent is not None and parent.is_valid:
                trace_id, state, sampled = parent.trace_id, parent.trace_state, parent.trace_flags.sampled
            else:
                parent, trace_id, state, sampled = None, 0, _EMPTY_STATE, False
        if not trace_id:
            trace_id = random.getrandbits(128) or 1
            sampled = self._sample is None or self._sample(trace_id)
        elif not self._parent_based:
            sampled = self._sample is None or self._sample(trace_id)
        span_id = random.getrandbits(64) or 1
        if not sampled:
            return trace.NonRecordingSpan(SpanContext(trace_id, span_id, False, _UNSAMPLED, state))
        sets = ()
        if not attributes:
            attributes, dropped = {}, 0
        elif type(attributes) is AttributeSet and len(attributes) <= self.limits[0]:
            sets, attributes, dropped = (attributes,), {}, 0
        else:
            attributes = dict(attributes)  # None values are left out when it is encoded
            limit = self.limits[0]
            dropped = len(attributes) - limit
            if dropped > 0:
                attributes = dict(list(attributes.items())[:limit])
        valid_links = tuple(link for link in links if link.context.is_valid) if links else ()
        span = Span(self, name, kind, trace_id, span_id, parent, state, attributes, valid_links,
                    start_time or time.time_ns())
        if dropped > 0:
            span._dropped = dropped
        if sets:
            span._sets = sets
        for processor in self.processors:
            processor.on_start(span, context)
        return span

    def start_as_current_span(self, name: str, context: otel_context.Context | None = None,
                              kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None,
                              links: Sequence[trace.Link] | None = None, start_time: int | None = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                              set_status_on_exception=set_status_on_exception)


class TracerProvider(trace.TracerProvider):
    """Tracers whose spans are exported over OTLP by one batch queue; `from_env` reads
    the standard variables. Span processors (`add_span_processor`) see each span as the
    SDK's do, `on_start` and `on_end`; `shutdown()` sends what is queued, once."""

    def __init__(self, export: "BatchExport", sampler: tuple[Sample, bool],
                 limits: tuple[int, int] = (128, 128)) -> None:
        self.export = export
        self.sampler = sampler
        self.limits = limits
        self.processors: list[Any] = []
        self._tracers: dict[tuple[str, str | None], Tracer] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str], resource: Mapping[str, Any]) -> "TracerProvider":
        """As the OTEL_* variables say; a setting it cannot follow raises ValueError
        before anything is started."""
        sampler = sampler_from_env(environ)
        limits = (_int(environ, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", _int(environ, "OTEL_ATTRIBUTE_COUNT_LIMIT", 128)),
                  _int(environ, "OTEL_SPAN_EVENT_COUNT_LIMIT", 128))
        batching = {"max_queue": _int(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
                    "batch_size": _int(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
                    "delay": _int(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
                    "timeout": _int(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000}
        export = BatchExport(transport_from_env(environ), resource_field(resource), **batching)
        return cls(export, sampler, limits)

    def get_tracer(self, instrumenting_module_name: str, instrumenting_library_version: str | None = None,
                   schema_url: str | None = None, attributes: Any = None) -> Tracer:
        key = (instrumenting_module_name, instrumenting_library_version)
        tracer = self._tracers.get(key)
        if tracer is None:
            tracer = self._tracers[key] = Tracer(self, _scope(*key))
        return tracer

    def add_span_processor(self, processor: Any) -> None:
        self.processors.append(processor)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.export.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        self.export.shutdown()
        for processor in self.processors:
            processor.shutdown()


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


# -- export -----------------------------------------------------------------------
class BatchExport:
    """Encoded spans queued (at most `max_queue`, the rest dropped and counted) and sent
    by a thread of its own: `batch_size` at a time, when that many are queued or
    `delay` seconds have passed. Spans being queued wake nobody until a batch is full."""

    def __init__(self, transport: "Transport", resource: bytes, *, max_queue: int = 2048,
                 batch_size: int = 512, delay: float = 5.0, timeout: float = 30.0) -> None:
        self.transport = transport
        self.resource = resource
        self.max_queue = max(max_queue, 1)
        self.batch_size = max(1, min(batch_size, self.max_queue))
        self.delay = delay
        self.timeout = timeout
        self.dropped = 0
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._wake = threading.Event()
        self._sending = threading.Lock()
        self._stopping = threading.Event()  # set by shutdown: it cuts a retry's backoff short
        self._thread = threading.Thread(target=self._work, name="otlp-span-export", daemon=True)
        self._thread.start()

    def add(self, scope: bytes, span: bytes) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or self._stopping.is_set():
            if not self.dropped:
                logger.warning("the span export queue is full (%d spans): dropping spans", self.max_queue)
            self.dropped += 1
            return
        queue.append((scope, span))
        if len(queue) == self.batch_size:
            self._wake.set()

    def _work(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.delay)
            self._wake.clear()
            self._send_queued(time.monotonic() + self.timeout)

    def _send_queued(self, deadline: float) -> bool:
        """Send what is queued now, a batch at a time, until `deadline`; True if all went."""
        queue, ok = self._queue, True
        with self._sending:
            while queue and time.monotonic() < deadline:
                batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                if not send_retrying(self.transport, export_request(self.resource, batch), deadline,
                                     self._stopping):
                    ok = False
        return ok and not queue

    def flush(self, timeout: float) -> bool:
        return self._send_queued(time.monotonic() + timeout)

    def shutdown(self) -> None:
        """Stop the thread, send what is left (bounded by the export timeout); idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(self.timeout)
        self._send_queued(time.monotonic() + self.timeout)
        self.transport.close()


class Transport(Protocol):
    endpoint: str
    timeout: float  # seconds one request may take

    def attempt(self, body: bytes, timeout: float) -> "Failure | None":
        """Send `body` once: None when sent, else how it failed."""

    def close(self) -> None: ...


class Failure(NamedTuple):
    retry: bool  # a transient failure, worth another attempt
    reason: str
    retry_after: float | None = None  # seconds the collector asked for (RetryInfo, Retry-After)


def send_retrying(transport: Transport, body: bytes, deadline: float, stopping: threading.Event) -> bool:
    """Send one encoded ExportTraceServiceRequest, retrying transient failures until the
    request's own timeout or the batch's `deadline`, as the SDK's exporters do: after the
    delay the collector asked for, else an exponential backoff with 20 % jitter (so
    exporters of many pods do not retry in step). Shutdown (`stopping`) cuts a backoff
    short and ends the retries."""
    deadline = min(deadline, time.monotonic() + transport.timeout)
    backoff = _FIRST_BACKOFF
    while True:
        failure = transport.attempt(body, max(deadline - time.monotonic(), 0.001))
        if failure is None:
            return True
        delay = failure.retry_after
        if delay is None:
            delay = backoff * random.uniform(0.8, 1.2)
            backoff *= 2
        if not failure.retry or time.monotonic() + delay >= deadline or stopping.wait(delay):
            logger.warning("exporting spans to %s failed: %s", transport.endpoint, failure.reason)
            return False


_FIRST_BACKOFF = 0.5  # seconds


def _grpc_retry_delay(error: grpc.RpcError) -> float | None:
    """The delay a google.rpc.RetryInfo in the status details asks for, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            try:
                details = status_pb2.Status.FromString(value).details
            except DecodeError:
                return None
            for detail in details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


def _http_retry_delay(value: str | None) -> float | None:
    """Retry-After, in seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class GrpcTransport:
    def __init__(self, endpoint: str, *, credentials: grpc.ChannelCredentials | None,
                 headers: Sequence[tuple[str, str]], timeout: float, gzip_body: bool) -> None:
        self.timeout = timeout
        self.endpoint = endpoint
        compression = grpc.Compression.Gzip if gzip_body else None
        self._channel = (grpc.insecure_channel(endpoint, compression=compression) if credentials is None
                         else grpc.secure_channel(endpoint, credentials, compression=compression))
        self._export = self._channel.unary_unary(_EXPORT_METHOD)  # bytes in, bytes out
        self._headers = tuple(headers)

    def attempt(self, body: bytes, timeout: float) -> Failure | None:
        try:
            self._export(body, timeout=timeout, metadata=self._headers)
        except grpc.RpcError as exc:
            return Failure(exc.code() in _RETRYABLE_GRPC, f"{exc.code().name}: {exc.details()}",
                           _grpc_retry_delay(exc))
        return None

    def close(self) -> None:
        self._channel.close()


class HttpTransport:
    def __init__(self, url: str, *, context: ssl.SSLContext | None, headers: Sequence[tuple[str, str]],
                 timeout: float, gzip_body: bool) -> None:
        self.timeout = timeout
        self.endpoint = url
        parsed = urlparse(url)
        self._secure = parsed.scheme == "https"
        self._host, self._port = parsed.hostname or "localhost", parsed.port
        self._path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self._context = context
        self._headers = {"Content-Type": "application/x-protobuf", **dict(headers)}
        if gzip_body:
            self._headers["Content-Encoding"] = "gzip"
        self._gzip = gzip_body
        self._connection: http.client.HTTPConnection | None = None

    def attempt(self, body: bytes, timeout: float) -> Failure | None:
        if self._gzip:
            body = gzip.compress(body)
        try:
            if self._connection is None:
                self._connection = (http.client.HTTPSConnection(self._host, self._port, context=self._context)
                                    if self._secure else http.client.HTTPConnection(self._host, self._port))
            self._connection.timeout = timeout
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout)
            self._connection.request("POST", self._path, body, self._headers)
            response = self._connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Failure(True, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status < 300:
            return None
        return Failure(response.status in _RETRYABLE_HTTP, f"HTTP {response.status} {response.reason}",
                       _http_retry_delay(response.getheader("Retry-After")))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    """`OTEL_EXPORTER_OTLP_TRACES_{name}`, else `OTEL_EXPORTER_OTLP_{name}`."""
    value = environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(f"OTEL_EXPORTER_OTLP_{name}")
    return value.strip() if value and value.strip() else None


def _headers(text: str | None) -> list[tuple[str, str]]:
    headers = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"OTEL_EXPORTER_OTLP_HEADERS: {item.strip()!r} is not key=value")
        headers.append((unquote(key.strip()).lower(), unquote(value.strip())))
    return headers


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def transport_from_env(environ: Mapping[str, str]) -> Transport:
    """The OTLP transport the exporter variables describe, as the SDK's exporters read them
    (timeouts in seconds, as the Python SDK's)."""
    protocol = _setting(environ, "PROTOCOL") or "grpc"
    compression = (_setting(environ, "COMPRESSION") or "none").lower()
    if compression not in ("gzip", "none"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_COMPRESSION: {compression!r} is not supported (gzip or none)")
    try:
        timeout = float(_setting(environ, "TIMEOUT") or 10)
    except ValueError:
        raise ValueError("OTEL_EXPORTER_OTLP_TIMEOUT must be a number of seconds") from None
    headers = _headers(_setting(environ, "HEADERS"))
    certificate = _read(_setting(environ, "CERTIFICATE"))
    key_path, chain_path = _setting(environ, "CLIENT_KEY"), _setting(environ, "CLIENT_CERTIFICATE")
    if protocol == "grpc":
        endpoint = _setting(environ, "ENDPOINT") or "http://localhost:4317"
        parsed = urlparse(endpoint)
        insecure_setting = _setting(environ, "INSECURE")
        if parsed.scheme == "https":
            insecure = False
        elif insecure_setting is not None:
            insecure = insecure_setting.lower() == "true"
        else:
            insecure = parsed.scheme == "http"
        credentials = (None if insecure
                       else grpc.ssl_channel_credentials(certificate, _read(key_path), _read(chain_path)))
        return GrpcTransport(parsed.netloc or endpoint, credentials=credentials, headers=headers,
                             timeout=timeout, gzip_body=compression == "gzip")
    if protocol == "http/protobuf":
        url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if not url:
            url = (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318").rstrip("/")
            url += "/v1/traces"
        context = None
        if urlparse(url).scheme == "https":
            context = ssl.create_default_context(cadata=certificate.decode() if certificate else None)
            if chain_path is not None:
                context.load_cert_chain(chain_path, key_path)
        return HttpTransport(url, context=context, headers=headers, timeout=timeout,
                             gzip_body=compression == "gzip")
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (grpc or http/protobuf)")
