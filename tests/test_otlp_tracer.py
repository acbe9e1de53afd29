"""The runtime's own OTLP tracer (otlp_tracer): its bytes decode as OTLP protobuf with
every field in place, its samplers decide as the SDK's do, and its export (a real
OTLP/gRPC or OTLP/HTTP receiver on loopback) batches, retries, drops when full and
shuts down once, bounded when the receiver is gone. The full span tree of a served
call is checked with it by test_tracing.py (the `spans` fixture runs both providers)."""

from __future__ import annotations

import enum
import math
import random
import ssl
import threading
import time
from http import HTTPStatus

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from agent_runtime import otlp_tracer
from agent_runtime.protowire import delimited, varint
from certs import CA
from conftest import wait_until_sync
from otlp_spans import HttpOtlpReceiver, OtlpReceiver, ReceivedSpan

REMOTE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                     trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=TraceState([("vendor", "1")]))


@pytest.fixture
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def provider_for(receiver):
    """`provider_for(**OTEL_settings)`: a provider exporting to `receiver`, shut down after."""
    made = []

    def make(**settings: str) -> otlp_tracer.TracerProvider:
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **settings}
        made.append(otlp_tracer.TracerProvider.from_env(environ, {"service.name": "svc", "pods": 3}))
        return made[-1]

    yield make
    for provider in made:
        provider.shutdown()


def _decoded(spans: list[otlp_tracer.Span]) -> list[ReceivedSpan]:
    body = otlp_tracer.export_request(otlp_tracer.resource_field({"service.name": "svc"}),
                                      [(span._tracer.scope, span._encoded()) for span in spans])
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    return [ReceivedSpan.of(span, resource_spans.resource) for scope in resource_spans.scope_spans
            for span in scope.spans]


class Mode(str, enum.Enum):
    FAST = "fast"


def test_every_span_field_decodes_as_otlp_protobuf(provider_for):
    tracer = provider_for().get_tracer("agent_runtime", "1.2")
    parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    linked = SpanContext(0x1, 0x2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    span = tracer.start_span("op é", context=parent, kind=SpanKind.CLIENT, start_time=1_000, links=[
        Link(linked, {"why": "batch"})], attributes={
        "text": "ünïcode", "yes": True, "count": -5, "big": 1 << 70, "ratio": 0.25, "none": None,
        "list": ["a", "b"], "ints": (1, 2), "raw": b"\x00\x01", "http": HTTPStatus.NOT_FOUND,
        "other": StatusCode.ERROR, "mode": Mode.FAST})
    span.add_event("first", {"n": 1, "gone": None}, timestamp=1_500)
    span.set_status(Status(StatusCode.ERROR, "it broke"))
    span.end(end_time=2_000)

    (received,) = _decoded([span])
    assert received.name == "op é" and received.kind is SpanKind.CLIENT
    assert received.context.trace_id == REMOTE.trace_id and received.parent.span_id == REMOTE.span_id
    assert received.parent.is_remote and received.flags == 0x301  # sampled, parent known to be remote
    assert received.context.trace_state.get("vendor") == "1"
    assert (received.start_time, received.end_time) == (1_000, 2_000)
    assert received.attributes == {
        "text": "ünïcode", "yes": True, "count": -5, "big": str(1 << 70), "ratio": 0.25, "list": ("a", "b"),
        "ints": (1, 2), "raw": b"\x00\x01", "http": 404, "mode": "fast",
        "other": "StatusCode.ERROR"}  # an IntEnum is its number, a str enum its text; a value of no OTLP type, its str()
    assert [(e.name, e.timestamp, e.attributes) for e in received.events] == [("first", 1_500, {"n": 1})]
    assert received.status.status_code is StatusCode.ERROR and received.status.description == "it broke"
    assert received.links == [(linked, {"why": "batch"})]
    assert received.resource == {"service.name": "svc"}


def test_kept_attribute_fields_stand_only_for_values_of_their_own_type(provider_for):
    """Text and whole numbers are kept encoded by (key, value); True and 1.0 equal 1, but
    must not come out as it, and long text and repeats decode the same as the first."""
    tracer = provider_for().get_tracer("t")
    long_text = "x" * 300
    values = [1, True, 1.0, 1, "1", long_text, long_text, 0.0, False, 0]
    spans = []
    for value in values:
        span = tracer.start_span("s", attributes={"v": value})
        span.end()
        spans.append(span)
    received = [span.attributes["v"] for span in _decoded(spans)]
    assert received == values
    assert [type(value) for value in received] == [type(value) for value in values]
    zeros = []
    for value in (0.0, -0.0):  # equal, but not the same double
        span = tracer.start_span("s", attributes={"zero": value})
        span.end()
        zeros.append(span)
    assert [math.copysign(1, span.attributes["zero"]) for span in _decoded(zeros)] == [1, -1]


def test_children_of_a_local_span_share_its_trace_and_nest_under_it(provider_for):
    tracer = provider_for().get_tracer("t")
    with tracer.start_as_current_span("outer") as outer:
        inner = tracer.start_span("inner")
        inner.end()
    received = {span.name: span for span in _decoded([outer, inner])}
    assert received["inner"].parent.span_id == outer.get_span_context().span_id
    assert not received["inner"].parent.is_remote and received["inner"].flags == 0x101
    assert received["outer"].parent is None
    assert received["inner"].context.trace_id == received["outer"].context.trace_id


def test_span_api_semantics_follow_the_sdk(provider_for):
    tracer = provider_for(OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT="2", OTEL_SPAN_EVENT_COUNT_LIMIT="1").get_tracer("t")
    with pytest.raises(ValueError):
        with tracer.start_as_current_span("fails") as failing:
            raise ValueError("bad input")
    ok = tracer.start_span("ok", attributes={"a": 1, "b": 2, "c": 3})
    ok.set_attribute("d", 4)
    ok.set_status(StatusCode.OK)
    ok.set_status(StatusCode.ERROR, "too late: OK is final")
    ok.add_event("one")
    ok.add_event("two")
    ok.update_name("renamed")
    ok.end()
    ok.set_attribute("after", "end")  # ignored: the span has ended
    ok.end()  # a second end changes nothing
    received = {span.name: span for span in _decoded([failing, ok])}
    (exception,) = received["fails"].events
    assert exception.name == "exception" and exception.attributes["exception.type"] == "ValueError"
    assert "bad input" in exception.attributes["exception.stacktrace"]
    assert received["fails"].status.status_code is StatusCode.ERROR
    assert received["renamed"].attributes == {"a": 1, "b": 2}
    assert received["renamed"].dropped_attributes == 2  # "c" and "d" past the attribute limit
    assert received["renamed"].dropped_events == 1  # "two" past the event limit
    assert received["renamed"].status.status_code is StatusCode.OK
    assert [event.name for event in received["renamed"].events] == ["one"]
    assert not ok.is_recording()


def test_attribute_sets_are_kept_whole_until_a_key_of_theirs_is_written(provider_for):
    """An AttributeSet given to start_span or set_attributes is kept as it is (its fields
    encoded once, shared by every span given it); the span's attributes are the same as
    if it had been a dict: a key written later wins, and sets count toward the limit."""
    tracer = provider_for(OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT="4").get_tracer("t")
    method = otlp_tracer.AttributeSet({"rpc.method": "M", "rpc.service": "S", "skipped": None})
    ok = otlp_tracer.AttributeSet({"code": "OK", "n": 0})
    kept = tracer.start_span("kept", attributes=method)
    kept.set_attributes(ok)
    assert kept._sets == (method, ok) and kept._attributes == {}
    assert dict(kept.attributes) == {"rpc.method": "M", "rpc.service": "S", "code": "OK", "n": 0}
    kept.end()
    overwritten = tracer.start_span("overwritten", attributes=method)
    overwritten.set_attributes({"own": True})
    overwritten.set_attribute("rpc.method", "changed")  # folds the set into the span's own attributes
    overwritten.set_attributes(otlp_tracer.AttributeSet({"own": False}))  # a key it holds: merged, not kept
    assert overwritten._sets == ()
    overwritten.end()
    crowded = tracer.start_span("crowded", attributes={"a": 1, "b": 2, "c": 3})
    crowded.set_attributes(ok)  # one more than the limit's room: merged, and the last key dropped
    crowded.end()
    received = {span.name: span for span in _decoded([kept, overwritten, crowded])}
    assert received["kept"].attributes == {"rpc.method": "M", "rpc.service": "S", "code": "OK", "n": 0}
    assert received["overwritten"].attributes == {"rpc.method": "changed", "rpc.service": "S", "own": False}
    assert received["crowded"].attributes == {"a": 1, "b": 2, "c": 3, "code": "OK"}
    assert received["crowded"].dropped_attributes == 1


@pytest.mark.parametrize("name", ["traceidratio", "parentbased_traceidratio"])
def test_ratio_sampling_decides_as_the_sdk_does(provider_for, name):
    tracer = provider_for(OTEL_TRACES_SAMPLER=name, OTEL_TRACES_SAMPLER_ARG="0.3").get_tracer("t")
    sdk = sampling.TraceIdRatioBased(0.3)
    rng = random.Random(7)
    for _ in range(300):
        trace_id = rng.getrandbits(128)
        context = trace.set_span_in_context(trace.NonRecordingSpan(SpanContext(
            trace_id, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))))
        span = tracer.start_span("x", context=context)
        expected = sdk.should_sample(None, trace_id, "x").decision.is_sampled()
        # parent-based follows the remote parent's (unsampled) decision instead
        assert span.is_recording() is (expected and name == "traceidratio")
        assert span.get_span_context().trace_id == trace_id


def test_unsampled_spans_propagate_but_are_not_exported(provider_for, receiver):
    provider = provider_for(OTEL_TRACES_SAMPLER="always_off")
    root = provider.get_tracer("t").start_span("root")
    assert not root.is_recording() and root.get_span_context().is_valid
    assert not root.get_span_context().trace_flags.sampled
    root.end()
    unsampled_parent = trace.set_span_in_context(root)
    child = provider_for().get_tracer("t").start_span("child", context=unsampled_parent)  # parent-based
    assert not child.is_recording()
    assert child.get_span_context().trace_id == root.get_span_context().trace_id
    provider.force_flush()
    assert receiver.spans() == []


@pytest.mark.parametrize("settings, message", [
    ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "unknown sampler"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "from 0 to 1"),
    ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "from 0 to 1"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "'zstd' is not supported"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "number of seconds"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "is not key=value"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "many"}, "whole number"),
    ({"OTEL_BSP_SCHEDULE_DELAY": "-1"}, "must not be negative"),
])
def test_settings_it_cannot_follow_are_refused_before_anything_starts(settings, message):
    threads = threading.active_count()
    with pytest.raises(ValueError, match=message):
        otlp_tracer.TracerProvider.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", **settings}, {})
    assert threading.active_count() == threads


def test_a_full_batch_is_sent_at_once_with_the_headers(provider_for, receiver):
    provider = provider_for(OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10", OTEL_BSP_SCHEDULE_DELAY="600000",
                            OTEL_EXPORTER_OTLP_HEADERS="api-key=s%3Dcret,Tenant = t1",
                            OTEL_EXPORTER_OTLP_COMPRESSION="gzip")
    tracer = provider.get_tracer("t")
    for index in range(10):
        tracer.start_span(f"s{index}").end()
    wait_until_sync(lambda: receiver.requests, "the full batch, sent by the thread, not a flush")
    assert len(receiver.spans()) == 10 and len(receiver.requests) == 1
    assert receiver.metadata[0]["api-key"] == "s=cret" and receiver.metadata[0]["tenant"] == "t1"
    assert receiver.spans()[0].resource == {"service.name": "svc", "pods": 3}


def test_a_full_queue_drops_and_counts_and_shutdown_sends_the_rest_once(provider_for, receiver, caplog):
    provider = provider_for(OTEL_BSP_MAX_QUEUE_SIZE="5", OTEL_BSP_SCHEDULE_DELAY="600000")
    tracer = provider.get_tracer("t")
    with provider.export._sending:  # the export thread, woken by the full queue, waits its turn
        for index in range(8):
            tracer.start_span(f"s{index}").end()
    assert provider.export.dropped == 3
    assert "export queue is full" in caplog.text
    provider.shutdown()
    provider.shutdown()
    assert sorted(span.name for span in receiver.spans()) == [f"s{index}" for index in range(5)]
    tracer.start_span("late").end()  # after shutdown: dropped, not sent
    assert provider.export.dropped == 4 and len(receiver.spans()) == 5


def test_transient_failures_are_retried(provider_for, receiver):
    receiver.fail_next = 1
    provider = provider_for(OTEL_BSP_SCHEDULE_DELAY="600000")
    provider.get_tracer("t").start_span("kept").end()
    assert provider.force_flush()
    assert [span.name for span in receiver.spans()] == ["kept"]


def test_grpc_retry_waits_as_long_as_the_collectors_retry_info_asks(provider_for, receiver):
    receiver.fail_next, receiver.retry_delay = 1, 0.6  # longer than the first backoff's most (0.6 s)
    provider = provider_for(OTEL_BSP_SCHEDULE_DELAY="600000")
    provider.get_tracer("t").start_span("kept").end()
    assert provider.force_flush()
    first, second = receiver.arrivals
    assert second - first >= 0.6 and [span.name for span in receiver.spans()] == ["kept"]


def test_http_retry_waits_as_long_as_retry_after_asks():
    receiver = HttpOtlpReceiver()
    receiver.fail_next, receiver.retry_after = [429], "1"
    provider = otlp_tracer.TracerProvider.from_env({
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000"}, {})
    try:
        provider.get_tracer("t").start_span("kept").end()
        assert provider.force_flush()
    finally:
        provider.shutdown()
        receiver.stop()
    first, second = receiver.arrivals
    assert second - first >= 1 and len(receiver.requests) == 1


def test_backoff_without_a_hint_is_half_a_second_give_or_take_its_jitter():
    receiver = HttpOtlpReceiver()
    provider = otlp_tracer.TracerProvider.from_env({
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000"}, {})
    try:
        for _ in range(3):
            receiver.fail_next = [503]
            provider.get_tracer("t").start_span("kept").end()
            assert provider.force_flush()
    finally:
        provider.shutdown()
        receiver.stop()
    arrivals = receiver.arrivals
    waits = [arrivals[1] - arrivals[0], arrivals[3] - arrivals[2], arrivals[5] - arrivals[4]]
    assert all(0.4 <= wait < 0.9 for wait in waits)  # 0.5 s, give or take 20 % (and the send)
    assert len(receiver.requests) == 3


def test_shutdown_cuts_a_retry_backoff_short(provider_for, receiver, caplog):
    receiver.fail_next, receiver.retry_delay = 100, 60.0
    provider = provider_for(OTEL_BSP_SCHEDULE_DELAY="10", OTEL_EXPORTER_OTLP_TIMEOUT="120")
    provider.get_tracer("t").start_span("lost").end()
    wait_until_sync(lambda: receiver.arrivals, "the export thread's first attempt (then its backoff)")
    started = time.monotonic()
    provider.shutdown()
    assert time.monotonic() - started < 10  # not the 60 s the collector asked for
    assert "exporting spans to" in caplog.text and receiver.spans() == []


def test_an_unreachable_receiver_costs_a_bounded_wait_and_loses_only_spans(caplog):
    provider = otlp_tracer.TracerProvider.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
         "OTEL_BSP_SCHEDULE_DELAY": "600000"}, {})
    provider.get_tracer("t").start_span("lost").end()
    started = time.monotonic()
    assert provider.force_flush() is False
    provider.shutdown()
    assert time.monotonic() - started < 5
    assert "exporting spans to 127.0.0.1:1 failed: UNAVAILABLE" in caplog.text


def test_http_export_posts_gzipped_protobuf_with_headers_and_retries_503():
    receiver = HttpOtlpReceiver()
    receiver.fail_next = [503]  # the first request is told to come back
    provider = otlp_tracer.TracerProvider.from_env({
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint + "/",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_HEADERS": "x-team=core",
        "OTEL_BSP_SCHEDULE_DELAY": "600000"}, {"service.name": "svc"})
    try:
        assert provider.export.transport.endpoint == receiver.endpoint + "/v1/traces"
        provider.get_tracer("t").start_span("posted").end()
        assert provider.force_flush()
    finally:
        provider.shutdown()
        receiver.stop()
    ((headers,), (request,)) = receiver.headers, receiver.requests
    assert headers["Content-Type"] == "application/x-protobuf" and headers["Content-Encoding"] == "gzip"
    assert headers["x-team"] == "core"
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "posted"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_export_over_mutual_tls(tmp_path, protocol):
    ca = CA("otlp-test-ca")
    server, client = ca.issue("localhost"), ca.issue("exporter", server=False)
    server_cert, server_key = server.write(tmp_path, "server")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    if protocol == "grpc":
        receiver = OtlpReceiver(grpc.ssl_server_credentials([(server.key, server.cert)], root_certificates=ca.pem,
                                                              require_client_auth=True))
        endpoint = f"https://localhost:{receiver.port}"
    else:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
        tls.load_cert_chain(server_cert, server_key)
        tls.verify_mode = ssl.CERT_REQUIRED
        receiver = HttpOtlpReceiver(tls)
        endpoint = receiver.endpoint
    cert, key = client.write(tmp_path, "client")
    provider = otlp_tracer.TracerProvider.from_env({
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "ca.pem"), "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(key), "OTEL_BSP_SCHEDULE_DELAY": "600000"}, {})
    try:
        provider.get_tracer("t").start_span("private").end()
        assert provider.force_flush()
        names = ([span.name for span in receiver.spans()] if protocol == "grpc" else
                 [span.name for request in receiver.requests for span in request.resource_spans[0].scope_spans[0].spans])
        assert names == ["private"]
    finally:
        provider.shutdown()
        receiver.stop()


def test_varints_at_every_length_boundary_decode_as_written():
    for n in (0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**63):
        payload = b"x" * n if n < 70_000 else b""
        if payload:
            assert trace_service_pb2.ExportTraceServiceRequest.FromString(
                delimited(b"\x0a", delimited(b"\x1a", payload))).resource_spans[0].schema_url == payload.decode()
        assert trace_pb2.Span.FromString(b"\x50" + varint(n)).dropped_attributes_count == n % 2**32
