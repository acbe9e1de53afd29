"""Prometheus metrics scraped from a real server's `/metrics`: exact counts after a known
sequence of runs, occupancy gauges, the gRPC server family for every service."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import CollectorRegistry

from agent_runtime import Overloaded, RuntimeServer, ServerConfig, SessionManager
from agent_runtime.context import RunContext
from agent_runtime.echo import echo_agent
from agent_runtime.events import EventType, RunEvent, RunStatus
from agent_runtime.metrics import GrpcMetrics, MetricsSink
from conftest import free_port, runtime_pb2, stub, wait_until
from observed import Scripted, request, sample, scrape

AGENT = "scripted"


async def _rpc_error(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def test_exact_counts_after_ok_error_cancelled_timeout_rejected(serve, channel_to):
    port = free_port()
    server = await serve([Scripted(), echo_agent], metrics_port=port, max_concurrency=1, max_queue=0)
    client = stub(channel_to(server.address))
    admission = server.manager.admission

    for _ in range(3):
        await client.Invoke(request({"llm": [["m1", 10, 4]], "tool": ["a", "missing"],
                                     "custom": [["step", {"n": 1}]]}))
    for _ in range(2):
        assert await _rpc_error(client.Invoke(request({"fail": True}))) is grpc.StatusCode.INTERNAL
    slow = client.Invoke(request({"sleep": 30}))
    await wait_until(lambda: admission.in_use == 1)
    assert await _rpc_error(client.Invoke(request())) is grpc.StatusCode.RESOURCE_EXHAUSTED
    slow.cancel()
    await wait_until(lambda: admission.in_use == 0)
    timed = client.Invoke(request({"sleep": 30}, timeout={"nanos": 200_000_000}))
    assert await _rpc_error(timed) is grpc.StatusCode.DEADLINE_EXCEEDED
    async for _ in client.InvokeStream(runtime_pb2.InvokeRequest(
            agent="echo", input=runtime_pb2.Payload(text="one two three"))):
        pass
    await wait_until(lambda: admission.in_use == 0)

    samples = scrape(port)
    runs = {status: sample(samples, "agent_runtime_runs_total", agent=AGENT, status=status)
            for status in ("ok", "error", "cancelled", "timeout", "rejected")}
    assert runs == {"ok": 3, "error": 2, "cancelled": 1, "timeout": 1, "rejected": 1}
    assert sample(samples, "agent_runtime_runs_total", agent="echo", status="ok") == 1
    for status, count in runs.items():
        if status != "rejected":
            assert sample(samples, "agent_runtime_run_duration_seconds_count",
                          agent=AGENT, status=status) == count
    assert sample(samples, "agent_runtime_queue_wait_seconds_count", agent=AGENT) == 7
    assert sample(samples, "agent_runtime_events_total", agent=AGENT, type="run.start") == 7
    assert sample(samples, "agent_runtime_events_total", agent=AGENT, type="run.end") == 7
    assert sample(samples, "agent_runtime_events_total", agent=AGENT, type="custom") == 3
    assert sample(samples, "agent_runtime_events_total", agent=AGENT, type="llm.end") == 3
    assert sample(samples, "agent_runtime_tool_calls_total", agent=AGENT, tool="lookup", status="ok") == 3
    assert sample(samples, "agent_runtime_tool_calls_total", agent=AGENT, tool="lookup", status="error") == 3
    assert sample(samples, "agent_runtime_llm_tokens_total", agent=AGENT, model="m1", kind="input") == 30
    assert sample(samples, "agent_runtime_llm_tokens_total", agent=AGENT, model="m1", kind="output") == 12
    assert sample(samples, "agent_runtime_events_total", agent="echo", type="chunk") == 3
    assert sample(samples, "agent_runtime_time_to_first_chunk_seconds_count", agent="echo") == 1
    assert sample(samples, "agent_runtime_time_to_first_chunk_seconds_count", agent=AGENT) == 0
    assert sample(samples, "agent_runtime_concurrency_limit") == 1
    for agent in (AGENT, "echo"):
        assert sample(samples, "agent_runtime_runs_in_flight", agent=agent) == 0
        assert sample(samples, "agent_runtime_runs_queued", agent=agent) == 0

    invoke = {"grpc_type": "unary", "grpc_service": "agent_runtime.v1.AgentRuntime", "grpc_method": "Invoke"}
    assert sample(samples, "grpc_server_started_total", **invoke) == 8
    handled = {code: sample(samples, "grpc_server_handled_total", **invoke, grpc_code=code)
               for code in ("OK", "INTERNAL", "RESOURCE_EXHAUSTED", "CANCELLED", "DEADLINE_EXCEEDED")}
    assert handled == {"OK": 3, "INTERNAL": 2, "RESOURCE_EXHAUSTED": 1, "CANCELLED": 1, "DEADLINE_EXCEEDED": 1}
    assert sample(samples, "grpc_server_handling_seconds_count", **invoke) == 8
    stream = {"grpc_type": "server_stream", "grpc_service": "agent_runtime.v1.AgentRuntime",
              "grpc_method": "InvokeStream"}
    assert sample(samples, "grpc_server_handled_total", **stream, grpc_code="OK") == 1


async def test_occupancy_gauges_while_runs_hold_and_wait_for_slots(serve, channel_to):
    port = free_port()
    server = await serve(Scripted(), metrics_port=port, max_concurrency=2, max_queue=10)
    client = stub(channel_to(server.address))
    calls = [client.Invoke(request({"sleep": 30})) for _ in range(5)]
    admission = server.manager.admission
    await wait_until(lambda: admission.in_use == 2 and admission.waiting == 3)

    samples = await asyncio.to_thread(scrape, port)
    assert sample(samples, "agent_runtime_concurrency_limit") == 2
    assert sample(samples, "agent_runtime_runs_in_flight", agent=AGENT) == 2
    assert sample(samples, "agent_runtime_runs_queued", agent=AGENT) == 3

    for call in calls:
        call.cancel()
    await wait_until(lambda: admission.in_use == 0 and admission.waiting == 0)
    samples = await asyncio.to_thread(scrape, port)
    assert sample(samples, "agent_runtime_runs_in_flight", agent=AGENT) == 0
    assert sample(samples, "agent_runtime_runs_queued", agent=AGENT) == 0
    # the 2 running were cancelled, and any waiter handed a slot before its own cancel landed
    cancelled = sample(samples, "agent_runtime_runs_total", agent=AGENT, status="cancelled")
    assert 2 <= cancelled == sample(samples, "agent_runtime_events_total", agent=AGENT, type="run.start")


async def test_health_and_reflection_rpcs_are_counted(serve, channel_to):
    port = free_port()
    server = await serve(metrics_port=port)
    channel = channel_to(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    await health.Check(health_pb2.HealthCheckRequest())
    assert await _rpc_error(health.Check(health_pb2.HealthCheckRequest(service="nope"))) \
        is grpc.StatusCode.NOT_FOUND
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    replies = [reply async for reply in reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    assert "agent_runtime.v1.AgentRuntime" in {s.name for s in replies[0].list_services_response.service}

    samples = scrape(port)
    check = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert sample(samples, "grpc_server_started_total", **check) == 2
    assert sample(samples, "grpc_server_handled_total", **check, grpc_code="OK") == 1
    assert sample(samples, "grpc_server_handled_total", **check, grpc_code="NOT_FOUND") == 1
    info = {"grpc_type": "bidi_stream", "grpc_service": "grpc.reflection.v1alpha.ServerReflection",
            "grpc_method": "ServerReflectionInfo"}
    assert sample(samples, "grpc_server_handled_total", **info, grpc_code="OK") == 1
    assert sample(samples, "grpc_server_handling_seconds_count", **info) == 1


async def test_python_api_refusals_count_as_rejected():
    registry = CollectorRegistry()
    manager = SessionManager(Scripted(), max_concurrency=1, max_queue=0)
    manager.add_sink(MetricsSink(registry, manager))
    async with manager.session(user_id="u") as session:
        async with session.run({"sleep": 0}) as runner:
            with pytest.raises(Overloaded):
                async with session.run({}):
                    pass
            await runner.result()
    manager.admission.draining = True
    with pytest.raises(Exception, match="draining"):
        async with manager.session().run({}):
            pass
    value = registry.get_sample_value
    assert value("agent_runtime_runs_total", {"agent": AGENT, "status": "rejected"}) == 2
    assert value("agent_runtime_runs_total", {"agent": AGENT, "status": "ok"}) == 1


async def test_an_injected_registry_records_without_an_endpoint(serve, channel_to):
    registry = CollectorRegistry()
    server = await serve(registry=registry)
    assert server.metrics is None
    await stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")))
    assert registry.get_sample_value("agent_runtime_runs_total", {"agent": "echo", "status": "ok"}) == 1
    assert registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "unary", "grpc_service": "agent_runtime.v1.AgentRuntime", "grpc_method": "Invoke",
        "grpc_code": "OK"}) == 1


async def test_metrics_off_installs_nothing(serve):
    server = await serve()
    assert server.registry is None and server.metrics is None
    assert not [sink for sink in server.manager.sinks if type(sink).__name__ == "MetricsSink"]
    assert server.observers == []


async def test_metrics_port_in_use_fails_start_clearly():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RuntimeServer(None, ServerConfig(host="127.0.0.1", port=0, metrics_port=port))
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await server.start()
        await server.abort()


async def test_stop_closes_the_metrics_endpoint(serve):
    port = free_port()
    server = await serve(metrics_port=port)
    assert sample(scrape(port), "agent_runtime_concurrency_limit") == 8
    await server.stop(drain_timeout=0)
    await server.stop()
    with pytest.raises(OSError):
        scrape(port)


def test_metrics_settings_from_cli_env_and_validation(server_process):
    port = free_port()
    proc = server_process("--metrics-port", str(port))
    assert sample(scrape(port), "agent_runtime_concurrency_limit") == 8
    proc.signal()
    assert proc.wait() == 0
    from agent_runtime.config import ConfigError

    assert ServerConfig.load(environ={"AGENT_RUNTIME_METRICS_PORT": "0"}).metrics_port == 0
    with pytest.raises(ConfigError, match="metrics_port must be <= 65535"):
        ServerConfig(metrics_port=70000)
    with pytest.raises(ConfigError, match="log_format must be text or json"):
        ServerConfig(log_format="xml")


def test_histogram_buckets_are_cumulative_and_inclusive():
    registry = CollectorRegistry()
    sink = MetricsSink(registry, SessionManager(Scripted()))
    for seq, duration in enumerate((0.005, 0.0051, 700.0)):
        run = RunContext(f"run-{seq}", AGENT, "s", "u")
        sink.on_event(RunEvent(run, 0, EventType.RUN_END, 0.0, {
            "status": RunStatus.OK, "duration": duration, "queue_wait": 0.0}))
    labels = {"agent": AGENT, "status": "ok"}
    buckets = [registry.get_sample_value("agent_runtime_run_duration_seconds_bucket", {**labels, "le": le})
               for le in ("0.005", "0.01", "600.0", "+Inf")]
    assert buckets == [1, 2, 2, 3]
    assert registry.get_sample_value("agent_runtime_run_duration_seconds_count", labels) == 3
    assert registry.get_sample_value("agent_runtime_run_duration_seconds_sum", labels) == pytest.approx(700.0101)
    assert registry.get_sample_value("agent_runtime_runs_total", labels) == 3


def test_metric_names_clash_is_refused():
    registry = CollectorRegistry()
    GrpcMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        GrpcMetrics(registry)


def _rpc_span_codes(exporter) -> list[str]:
    """The status codes of the AgentRuntime server spans exported, sorted."""
    return sorted(span.attributes["rpc.response.status_code"] for span in exporter.get_finished_spans()
                  if span.name.startswith("agent_runtime.v1.AgentRuntime/"))


async def test_calls_refused_by_token_auth_are_counted_and_traced(serve, channel_to, spans):
    provider, exporter = spans
    port = free_port()
    server = await serve(metrics_port=port, auth_token="s3cret", tracer_provider=provider)
    client = stub(channel_to(server.address))
    text = runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x"))
    assert await _rpc_error(client.Invoke(text)) is grpc.StatusCode.UNAUTHENTICATED
    assert await _rpc_error(client.InvokeStream(text).read()) is grpc.StatusCode.UNAUTHENTICATED
    await client.Invoke(text, metadata=(("authorization", "Bearer s3cret"),))

    samples = scrape(port)
    for grpc_type, method, code in (("unary", "Invoke", "UNAUTHENTICATED"), ("unary", "Invoke", "OK"),
                                    ("server_stream", "InvokeStream", "UNAUTHENTICATED")):
        assert sample(samples, "grpc_server_handled_total", grpc_type=grpc_type, grpc_method=method,
                      grpc_service="agent_runtime.v1.AgentRuntime", grpc_code=code) == 1
    assert _rpc_span_codes(exporter) == ["OK", "UNAUTHENTICATED", "UNAUTHENTICATED"]


async def test_calls_refused_unread_are_counted_and_traced_as_their_methods(serve, channel_to, spans):
    """A server of one agent refuses over capacity before it reads the request (see
    test_admission); those calls count and trace as Invoke and InvokeStream, the run as
    rejected, and token auth still answers first."""
    provider, exporter = spans
    port = free_port()
    server = await serve(Scripted(), metrics_port=port, auth_token="s3cret", tracer_provider=provider,
                         max_concurrency=1, max_queue=0)
    client = stub(channel_to(server.address))
    token = (("authorization", "Bearer s3cret"),)
    held = client.Invoke(request({"sleep": 30}), metadata=token)
    await wait_until(lambda: server.manager.admission.in_use == 1)
    assert await _rpc_error(client.Invoke(request())) is grpc.StatusCode.UNAUTHENTICATED
    assert await _rpc_error(client.Invoke(request(), metadata=token)) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _rpc_error(client.InvokeStream(request(), metadata=token).read()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    held.cancel()
    await wait_until(lambda: server.manager.admission.in_use == 0)

    samples = scrape(port)
    for grpc_type, method, code in (("unary", "Invoke", "UNAUTHENTICATED"), ("unary", "Invoke", "RESOURCE_EXHAUSTED"),
                                    ("server_stream", "InvokeStream", "RESOURCE_EXHAUSTED")):
        assert sample(samples, "grpc_server_handled_total", grpc_type=grpc_type, grpc_method=method,
                      grpc_service="agent_runtime.v1.AgentRuntime", grpc_code=code) == 1
    assert sample(samples, "agent_runtime_runs_total", agent=AGENT, status="rejected") == 2
    assert _rpc_span_codes(exporter) == ["CANCELLED", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"]
