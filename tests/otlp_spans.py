"""An OTLP/gRPC trace receiver on loopback, and the spans it got read back as the
SDK's `ReadableSpan`s read, so one test body checks both tracer providers."""

from __future__ import annotations

import gzip
import http.server
import ssl
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real gRPC server in threads of its own, so a caller blocking its event loop in
    `force_flush` still gets its answer."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.fail_next = 0  # UNAVAILABLE for this many calls first
        self.retry_delay: float | None = None  # with a RetryInfo asking for this delay
        self.arrivals: list[float] = []  # time.monotonic() of every call, failed ones too
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = (self.server.add_insecure_port("127.0.0.1:0") if credentials is None
                     else self.server.add_secure_port("127.0.0.1:0", credentials))
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):
        with self._lock:
            self.arrivals.append(time.monotonic())
            if self.fail_next:
                self.fail_next -= 1
                if self.retry_delay is not None:
                    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                        seconds=int(self.retry_delay), nanos=int(self.retry_delay % 1 * 1e9)))
                    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="try again")
                    status.details.add().Pack(info)
                    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            self.requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list["ReceivedSpan"]:
        with self._lock:
            return [ReceivedSpan.of(span, resource.resource) for request in self.requests
                    for resource in request.resource_spans for scope in resource.scope_spans
                    for span in scope.spans]

    def stop(self) -> None:
        self.server.stop(grace=None)


class HttpOtlpReceiver:
    """An OTLP/HTTP (protobuf) trace receiver on loopback, in a thread of its own:
    `requests` decoded (gzip too), `headers` of each; `fail_next` statuses answered first."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.fail_next: list[int] = []
        self.retry_after: str | None = None  # sent with each failure
        self.arrivals: list[float] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps the connection, as exporters do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrivals.append(time.monotonic())
                status = 404 if self.path != "/v1/traces" else receiver.fail_next.pop(0) if receiver.fail_next else 200
                if status == 200:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    receiver.requests.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                    receiver.headers.append(dict(self.headers))
                self.send_response(status)
                if status != 200 and receiver.retry_after is not None:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        scheme = "https" if isinstance(self._httpd.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(item) for item in any_value.array_value.values)
    return getattr(any_value, kind) if kind else None


def attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in key_values}


@dataclass
class ReceivedEvent:
    name: str
    timestamp: int
    attributes: dict[str, Any]


@dataclass
class ReceivedSpan:
    name: str
    context: SpanContext
    parent: SpanContext | None
    kind: SpanKind
    start_time: int
    end_time: int
    attributes: dict[str, Any]
    events: list[ReceivedEvent]
    status: Status
    resource: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[SpanContext, dict[str, Any]]] = field(default_factory=list)
    flags: int = 0
    dropped_attributes: int = 0
    dropped_events: int = 0

    @classmethod
    def of(cls, span: Any, resource: Any) -> "ReceivedSpan":
        trace_id = int.from_bytes(span.trace_id, "big")
        state = TraceState.from_header([span.trace_state]) if span.trace_state else TraceState()
        parent = None
        if span.parent_span_id:
            parent = SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"),
                                 is_remote=bool(span.flags & 0x200))
        return cls(
            name=span.name,
            context=SpanContext(trace_id, int.from_bytes(span.span_id, "big"), False,
                                TraceFlags(span.flags & 0xFF), state),
            parent=parent, kind=SpanKind(span.kind - 1),
            start_time=span.start_time_unix_nano, end_time=span.end_time_unix_nano,
            attributes=attributes(span.attributes),
            events=[ReceivedEvent(e.name, e.time_unix_nano, attributes(e.attributes)) for e in span.events],
            status=Status(StatusCode(span.status.code), span.status.message or None),
            resource=attributes(resource.attributes),
            links=[(SpanContext(int.from_bytes(link.trace_id, "big"), int.from_bytes(link.span_id, "big"), False,
                                TraceFlags(link.flags & 0xFF)), attributes(link.attributes)) for link in span.links],
            flags=span.flags, dropped_attributes=span.dropped_attributes_count,
            dropped_events=span.dropped_events_count)


class ExportedSpans:
    """The in-memory exporter's `get_finished_spans()`, read from the receiver after a flush."""

    def __init__(self, provider: Any, receiver: OtlpReceiver) -> None:
        self.provider = provider
        self.receiver = receiver

    def get_finished_spans(self) -> list[ReceivedSpan]:
        self.provider.force_flush()
        return self.receiver.spans()
