"""OpenTelemetry spans: the full tree and attributes with an injected provider and the
in-memory exporter, and real OTLP export (gRPC and HTTP) from a server process switched
on by OTEL_* variables. The global tracer provider is never touched."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.trace import SpanKind, StatusCode

from agent_runtime import tracing
from agent_runtime.echo import echo_agent
from conftest import ROOT, runtime_pb2, stub, wait_until
from observed import Scripted, request
from otlp_spans import HttpOtlpReceiver

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"), ("tracestate", "vendor=1"))
SERVICE = "agent_runtime.v1.AgentRuntime"


def _by_name(finished) -> dict[str, list]:
    named: dict[str, list] = {}
    for span in finished:
        named.setdefault(span.name, []).append(span)
    return named


async def test_full_span_tree_continues_the_callers_trace(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve([Scripted(), echo_agent], tracer_provider=provider)
    call = stub(channel_to(server.address)).Invoke(
        request({"llm": [["m1", 10, 4]], "tool": ["a", "missing"], "custom": [["step", {"n": 1, "x": [1]}]]},
                session_id="conv-1", user_id="u-7"),
        metadata=TRACEPARENT)
    reply = await call
    assert reply.trace_id == CALLER_TRACE
    assert (tracing.TRACE_ID_KEY, CALLER_TRACE) in tuple(await call.trailing_metadata())

    named = _by_name(exporter.get_finished_spans())
    (rpc,) = named[f"{SERVICE}/Invoke"]
    (run,) = named["invoke_agent scripted"]
    (chat,) = named["chat m1"]
    tools = named["execute_tool lookup"]
    assert {span.context.trace_id for span in (rpc, run, chat, *tools)} == {int(CALLER_TRACE, 16)}
    assert rpc.parent.span_id == int(CALLER_SPAN, 16) and rpc.parent.is_remote
    assert rpc.context.trace_state.get("vendor") == run.context.trace_state.get("vendor") == "1"
    assert rpc.kind is SpanKind.SERVER
    assert dict(rpc.attributes) == {
        "rpc.system.name": "grpc", "rpc.system": "grpc", "rpc.method": f"{SERVICE}/Invoke",
        "rpc.service": SERVICE, "rpc.response.status_code": "OK", "rpc.grpc.status_code": 0}
    assert rpc.status.status_code is StatusCode.UNSET

    assert run.parent.span_id == rpc.context.span_id
    attributes = dict(run.attributes)
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.agent.name"] == "scripted"
    assert attributes["gen_ai.conversation.id"] == "conv-1"
    assert attributes["user.id"] == "u-7"
    assert attributes["agent_runtime.run.id"] == reply.run_id
    assert attributes["agent_runtime.run.status"] == "ok"
    assert attributes["gen_ai.usage.input_tokens"] == 10 and attributes["gen_ai.usage.output_tokens"] == 4
    assert "agent_runtime.queue_wait" in attributes
    events = {event.name: dict(event.attributes) for event in run.events}
    assert events == {"step": {"n": 1, "x": "[1]"}}  # no slot_acquired: the run did not wait

    assert chat.parent.span_id == run.context.span_id and chat.kind is SpanKind.CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "m1"
    assert (chat.attributes["gen_ai.usage.input_tokens"], chat.attributes["gen_ai.usage.output_tokens"]) == (10, 4)
    assert tuple(chat.attributes["gen_ai.response.finish_reasons"]) == ("stop",)

    by_call = {span.attributes["gen_ai.tool.call.id"]: span for span in tools}
    assert set(by_call) == {"call-a", "call-missing"}
    for span in tools:
        assert span.parent.span_id == run.context.span_id
        assert span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert span.attributes["gen_ai.tool.name"] == "lookup"
    assert by_call["call-a"].status.status_code is StatusCode.UNSET
    assert by_call["call-missing"].status.status_code is StatusCode.ERROR
    assert by_call["call-missing"].attributes["error.type"] == "error"
    assert run.start_time <= chat.start_time and chat.end_time <= run.end_time <= rpc.end_time


async def test_failed_timed_out_and_refused_runs_record_errors(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve(Scripted(), tracer_provider=provider, max_concurrency=1, max_queue=0)
    client = stub(channel_to(server.address))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.Invoke(request({"fail": True}))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.Invoke(request({"sleep": 30}, timeout={"nanos": 100_000_000}))
    slow = client.Invoke(request({"sleep": 30}))
    await wait_until(lambda: server.manager.admission.in_use == 1)
    refused = client.Invoke(request())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await refused
    trailers = dict(caught.value.trailing_metadata())
    assert len(trailers[tracing.TRACE_ID_KEY]) == 32 and "grpc-retry-pushback-ms" in trailers
    slow.cancel()
    await wait_until(lambda: server.manager.admission.in_use == 0)
    await wait_until(lambda: len(exporter.get_finished_spans()) == 7)

    runs = sorted(_by_name(exporter.get_finished_spans())["invoke_agent scripted"], key=lambda s: s.start_time)
    assert [run.attributes["error.type"] for run in runs] == ["error", "timeout", "cancelled"]
    assert all(run.status.status_code is StatusCode.ERROR for run in runs)
    assert "see the server log" in runs[0].status.description
    rpcs = sorted(_by_name(exporter.get_finished_spans())[f"{SERVICE}/Invoke"], key=lambda s: s.start_time)
    codes = [rpc.attributes["rpc.response.status_code"] for rpc in rpcs]
    assert codes == ["INTERNAL", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"]
    assert [rpc.status.status_code for rpc in rpcs] == [StatusCode.ERROR, StatusCode.ERROR,
                                                       StatusCode.UNSET, StatusCode.UNSET]


async def test_a_queued_run_span_covers_its_wait(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve(Scripted(), tracer_provider=provider, max_concurrency=1, max_queue=1)
    client = stub(channel_to(server.address))
    first = client.Invoke(request({"sleep": 0.3}))
    await wait_until(lambda: server.manager.admission.in_use == 1)
    second = await client.Invoke(request())
    await first
    (run,) = [span for span in exporter.get_finished_spans()
              if span.attributes.get("agent_runtime.run.id") == second.run_id]
    assert run.attributes["agent_runtime.queue_wait"] > 0
    (acquired,) = [event for event in run.events if event.name == "slot_acquired"]
    waited = (acquired.timestamp - run.start_time) / 1e9
    assert waited == pytest.approx(run.attributes["agent_runtime.queue_wait"], abs=0.005)


async def test_streamed_run_reports_its_trace_id_and_first_chunk(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve(echo_agent, tracer_provider=provider)
    events = [event async for event in stub(channel_to(server.address)).InvokeStream(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="a b c")))]
    (run,) = _by_name(exporter.get_finished_spans())["invoke_agent echo"]
    trace_id = format(run.context.trace_id, "032x")
    assert events[0].started.trace_id == trace_id
    assert run.parent is not None  # the server span of InvokeStream, a new trace's root
    (rpc,) = _by_name(exporter.get_finished_spans())[f"{SERVICE}/InvokeStream"]
    assert rpc.parent is None and rpc.context.trace_id == run.context.trace_id
    assert [event.name for event in run.events].count("first_chunk") == 1


async def test_health_calls_get_server_spans(serve, channel_to, spans):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    provider, exporter = spans
    server = await serve(tracer_provider=provider)
    await health_pb2_grpc.HealthStub(channel_to(server.address)).Check(health_pb2.HealthCheckRequest())
    (span,) = exporter.get_finished_spans()
    assert span.name == "grpc.health.v1.Health/Check" and span.kind is SpanKind.SERVER


async def test_tracing_off_installs_nothing(serve, channel_to):
    server = await serve()
    assert server.tracer_provider is None
    assert not [sink for sink in server.manager.sinks if isinstance(sink, tracing.TracingSink)]
    call = stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")))
    assert (await call).trace_id == ""
    assert tracing.TRACE_ID_KEY not in dict(await call.trailing_metadata())


@pytest.mark.parametrize("environ, on", [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
])
def test_otel_environment_switches_tracing(environ, on):
    assert tracing.tracing_requested(environ) is on


@pytest.mark.parametrize("environ, message", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter 'zipkin'"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "'http/json' is not supported"),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "jaeger_remote"}, "unknown sampler"),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER_ARG": "half"}, "from 0 to 1"),
])
def test_unsupported_otel_settings_are_refused(environ, message):
    with pytest.raises(ValueError, match=message):
        tracing.provider_from_env(environ)


@pytest.mark.parametrize("environ, message", [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "unknown exporter 'jaeger'"),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"}, "unknown sampler 'sometimes'"),
])
def test_unsupported_otel_settings_stop_the_cli_with_a_clear_error(environ, message):
    result = subprocess.run(
        [sys.executable, "-m", "agent_runtime", "serve", "--port", "0", "--metrics-port", "0"],
        env={**os.environ, **environ}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def otlp_grpc_receiver():
    """An in-process OTLP/gRPC trace receiver on loopback: `(endpoint, collector)`."""
    collector = _Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"http://127.0.0.1:{port}", collector
    await server.stop(grace=0)


@pytest.fixture
def otlp_http_receiver():
    """An OTLP/HTTP (protobuf) trace receiver on loopback: `(endpoint, requests)`."""
    receiver = HttpOtlpReceiver()
    yield receiver.endpoint, receiver.requests
    receiver.stop()


def _exported(requests) -> tuple[dict[str, list], set[str]]:
    spans, services = {}, set()
    for export in requests:
        for resource_spans in export.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    spans.setdefault(span.name, []).append(span)
    return spans, services


async def _traced_call_then_sigterm(server_process, env) -> None:
    proc = await asyncio.to_thread(server_process, env={"OTEL_SERVICE_NAME": "runtime-under-test",
                                                        "OTEL_BSP_SCHEDULE_DELAY": "50", **env})
    async with grpc.aio.insecure_channel(proc.address) as channel:
        reply = await stub(channel).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="hi")),
                                           metadata=TRACEPARENT)
    assert reply.trace_id == CALLER_TRACE
    proc.signal()
    assert await asyncio.to_thread(proc.wait) == 0  # stopping flushes the exporter


def _assert_exported_tree(requests) -> None:
    spans, services = _exported(requests)
    assert services == {"runtime-under-test"}
    (rpc,) = spans[f"{SERVICE}/Invoke"]
    (run,) = spans["invoke_agent echo"]
    assert rpc.trace_id.hex() == CALLER_TRACE and rpc.parent_span_id.hex() == CALLER_SPAN
    assert run.parent_span_id == rpc.span_id
    assert rpc.kind == rpc.SPAN_KIND_SERVER


async def test_otlp_grpc_export_switched_on_by_environment(server_process, otlp_grpc_receiver):
    endpoint, collector = otlp_grpc_receiver
    await _traced_call_then_sigterm(server_process, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    _assert_exported_tree(collector.requests)


async def test_otlp_http_export_switched_on_by_environment(server_process, otlp_http_receiver):
    endpoint, received = otlp_http_receiver
    await _traced_call_then_sigterm(server_process, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                                                     "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    _assert_exported_tree(received)


async def test_concurrent_calls_each_continue_their_own_callers_trace(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve(echo_agent, tracer_provider=provider)
    client = stub(channel_to(server.address))
    traces = [f"{i + 1:032x}" for i in range(16)]
    replies = await asyncio.gather(*(client.Invoke(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text=trace)),
        metadata=(("traceparent", f"00-{trace}-{CALLER_SPAN}-01"),)) for trace in traces))
    assert [reply.trace_id for reply in replies] == traces
    assert [reply.output.text for reply in replies] == traces
    rpcs = _by_name(exporter.get_finished_spans())[f"{SERVICE}/Invoke"]
    assert sorted(format(span.context.trace_id, "032x") for span in rpcs) == traces
    assert all(span.parent.span_id == int(CALLER_SPAN, 16) for span in rpcs)


async def test_a_malformed_traceparent_starts_a_new_trace(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve(echo_agent, tracer_provider=provider)
    reply = await stub(channel_to(server.address)).Invoke(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")),
        metadata=(("traceparent", "00-not-a-trace-01"),))
    (rpc,) = _by_name(exporter.get_finished_spans())[f"{SERVICE}/Invoke"]
    assert rpc.parent is None
    assert reply.trace_id == format(rpc.context.trace_id, "032x") != CALLER_TRACE


async def test_python_api_runs_nest_under_the_callers_current_span(spans):
    from agent_runtime import SessionManager

    provider, exporter = spans
    tracer = provider.get_tracer("app")
    manager = SessionManager(Scripted(), sinks=[tracing.TracingSink(tracer)])
    with tracer.start_as_current_span("app request") as outer:
        async with manager.session(user_id="u", session_id="conv") as session:
            async with session.run({"llm": [["m", 1, 1]]}) as runner:
                await runner.result()
    named = _by_name(exporter.get_finished_spans())
    (run,) = named["invoke_agent scripted"]
    assert run.parent.span_id == outer.get_span_context().span_id
    assert runner.context.scratch["trace_id"] == format(outer.get_span_context().trace_id, "032x")
    assert named["chat m"][0].parent.span_id == run.context.span_id
