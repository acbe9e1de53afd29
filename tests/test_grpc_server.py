"""A real server in a subprocess: unary and streaming calls for every payload kind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import struct_pb2

from conftest import runtime_pb2 as pb
from conftest import free_port, stub, wait_until

SERVE_ARGS = ("--agent", "agent_runtime.echo:echo_agent", "--agent", "agents_for_tests:counting_stream",
              "--agent", "agents_for_tests:failing")


@pytest.fixture
def served(server_process):
    return server_process(*SERVE_ARGS)


def structured(obj) -> pb.Payload:
    value = struct_pb2.Value()
    value.struct_value.update(obj)
    return pb.Payload(structured=value)


async def test_unary_text_structured_bytes(served, channel_to):
    client = stub(channel_to(served.address))
    text = await client.Invoke(pb.InvokeRequest(agent="echo", input=pb.Payload(text="héllo")))
    assert text.output.text == "héllo" and text.agent == "echo"
    data = await client.Invoke(pb.InvokeRequest(agent="echo", input=structured({"a": [1, 2.5, None, {"b": True}]})))
    assert data.output.structured.struct_value["a"][3]["b"] is True
    assert list(data.output.structured.struct_value["a"])[:2] == [1, 2.5]
    blob = await client.Invoke(pb.InvokeRequest(
        agent="echo", input=pb.Payload(binary=pb.Blob(data=b"\x00\xffpng", media_type="image/png"))))
    assert blob.output.binary.data == b"\x00\xffpng" and blob.output.binary.media_type == "image/png"
    run_ids = {text.run_id, data.run_id, blob.run_id}
    assert len(run_ids) == 3 and all(len(r) == 32 for r in run_ids)
    empty = await client.Invoke(pb.InvokeRequest(agent="echo", input=pb.Payload(text="")))
    assert empty.output.WhichOneof("kind") == "text" and empty.session_id == empty.run_id


async def test_stream_events_in_order(served, channel_to):
    client = stub(channel_to(served.address))
    events = [e async for e in client.InvokeStream(pb.InvokeRequest(
        agent="counting_stream", session_id="s-1", input=pb.Payload(text="3")))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["started", "chunk", "chunk", "chunk", "ended"]
    assert [e.seq for e in events] == list(range(5))
    assert len({e.run_id for e in events}) == 1
    assert [e.chunk.text for e in events[1:4]] == ["0 ", "1 ", "2 "]
    assert events[0].started.agent == "counting_stream" and events[0].started.session_id == "s-1"
    assert events[-1].ended.status == pb.RUN_STATUS_OK
    assert events[-1].ended.output.text == "0 1 2 "


async def test_stream_tool_events_of_echo(served, channel_to):
    client = stub(channel_to(served.address))
    request = structured({"tool": "reverse", "arguments": {"text": "abc"}})
    events = [e async for e in client.InvokeStream(pb.InvokeRequest(agent="echo", input=request))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["started", "tool_started", "tool_ended", "ended"]
    assert events[1].tool_started.tool == "reverse"
    assert events[1].tool_started.arguments.struct_value["text"] == "abc"
    assert events[2].tool_ended.status == pb.RUN_STATUS_OK
    assert events[2].tool_ended.result.string_value == "cba"
    assert events[3].ended.output.text == "cba"


async def test_agent_failure_is_internal_with_safe_message(served, channel_to):
    client = stub(channel_to(served.address))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Invoke(pb.InvokeRequest(agent="failing", input=pb.Payload(text="x")))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in err.value.details()
    assert "ValueError" in err.value.details()
    run_id = dict(err.value.trailing_metadata())["agent-runtime-run-id"]
    assert run_id in err.value.details()
    call = client.InvokeStream(pb.InvokeRequest(agent="failing", input=pb.Payload(text="x")))
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in call:
            events.append(event)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert [e.WhichOneof("event") for e in events] == ["started", "ended"]
    assert events[-1].ended.status == pb.RUN_STATUS_ERROR and "ValueError" in events[-1].ended.error


async def test_list_agents(served, channel_to):
    reply = await stub(channel_to(served.address)).ListAgents(pb.ListAgentsRequest())
    by_name = {a.name: a for a in reply.agents}
    assert set(by_name) == {"echo", "counting_stream", "failing"}
    assert by_name["counting_stream"].streaming
    assert by_name["echo"].tools[0].name == "reverse"
    assert by_name["echo"].tools[0].parameters["required"] == ["text"]


async def test_health_overall_and_per_service(served, channel_to):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel_to(served.address))
    for service in ("", "agent_runtime.v1.AgentRuntime"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("plugin", [False, True])
async def test_no_method_is_registered_in_advance_and_every_method_answers(
        plugin, serve, channel_to, monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agent_runtime._proto.redpanda.runtime.v1alpha1 import agent_pb2, agent_pb2_grpc
    from agent_runtime._proto.redpanda.runtime.v1alpha1 import message_pb2

    registered: list[str] = []
    real = grpc.aio._server.Server.add_registered_method_handlers

    def recording(self, service, handlers):
        registered.extend(f"{service}/{name}" for name in handlers)
        return real(self, service, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", recording)
    server = await serve(plugin_handshake=plugin, metrics_port=0 if plugin else free_port())
    assert registered == []

    channel = channel_to(server.address)
    runtime = stub(channel)
    assert (await runtime.Invoke(pb.InvokeRequest(input=pb.Payload(text="hi")))).output.text == "hi"
    assert [e.WhichOneof("event") async for e in runtime.InvokeStream(
        pb.InvokeRequest(input=pb.Payload(text="hi")))][-1] == "ended"
    assert [a.name for a in (await runtime.ListAgents(pb.ListAgentsRequest())).agents] == ["echo"]
    assert not (await runtime.CancelRun(pb.CancelRunRequest(run_id="nope"))).cancelled
    reply = await agent_pb2_grpc.AgentRuntimeStub(channel).InvokeAgent(
        agent_pb2.InvokeAgentRequest(message=message_pb2.Message(bytes=b"hi")))
    assert reply.message.bytes == b"hi"
    check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_serve_freezes_the_startup_heap_while_it_serves_and_thaws_it_after():
    """serve() (a process's main) moves start-up objects out of the collector's sight; the
    freeze is undone when it returns, so an embedding process is left as it was."""
    import asyncio
    import gc

    from agent_runtime import RuntimeServer
    from agent_runtime.config import ServerConfig

    server = RuntimeServer(config=ServerConfig(host="127.0.0.1", port=0, metrics_port=0))
    frozen: list[int] = []
    serving = asyncio.ensure_future(server.serve(announce=lambda address: frozen.append(gc.get_freeze_count())))
    await wait_until(lambda: frozen, "serve() to announce its address")
    await server.stop(drain_timeout=0)
    assert await asyncio.wait_for(serving, 10) == 0
    assert frozen[0] > 0 and gc.get_freeze_count() == 0


class RecordingObserver:
    """An RpcObserver that records ("service/method/grpc_type", status code) as each call ends."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, object]] = []

    def method(self, service: str, method: str, grpc_type: str) -> SimpleNamespace:
        name = f"{service}/{method}/{grpc_type}"
        return SimpleNamespace(begin=lambda context: None, end=lambda token, code: self.ended.append((name, code)))


async def test_probes_that_want_metadata_get_what_the_method_lookup_converted():
    """grpc.aio looks the method up in the call's own task, then runs the handler there:
    the metadata it converted for the lookup reaches the probes without a second
    conversion (a tripwire: if a grpcio release moves the lookup, the probes still get the
    metadata from the context, and this test says the saving is gone)."""
    from agent_runtime.grpc.instrument import ObservedRegistrar, _call_metadata, invocation_metadata

    seen: list[tuple[bool, dict]] = []

    class MetadataObserver:
        wants_metadata = True

        def method(self, service, method, grpc_type):
            def begin(context):
                kept = _call_metadata.get()
                seen.append((kept is not None and kept == tuple(context.invocation_metadata()),
                             dict(invocation_metadata(context))))
            return SimpleNamespace(begin=begin, end=lambda token, code: None)

    async def echo(request: bytes, context) -> bytes:
        return request

    server = grpc.aio.server()
    registrar = ObservedRegistrar(server, [MetadataObserver()])
    registrar.add_registered_method_handlers("t.Echo", {"Say": grpc.unary_unary_rpc_method_handler(echo)})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/t.Echo/Say")
            await asyncio.gather(*(say(b"x", metadata=(("call", str(i)),)) for i in range(20)))
    finally:
        await server.stop(grace=0)
    assert all(kept for kept, _ in seen) and len(seen) == 20
    assert sorted(int(metadata["call"]) for _, metadata in seen) == list(range(20))


async def test_a_service_that_gives_only_a_generic_handler_is_served_and_observed():
    """Code generated before grpcio 1.63 hands the server no method table, only a
    generic handler: the registrar still serves (and observes) its methods, and a
    method nobody serves is UNIMPLEMENTED."""
    from agent_runtime.grpc.instrument import ObservedRegistrar

    async def echo(request: bytes, context) -> bytes:
        return request

    observer = RecordingObserver()
    server = grpc.aio.server()
    registrar = ObservedRegistrar(server, [observer])
    registrar.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "old.Echo", {"Say": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(2):
                assert await channel.unary_unary("/old.Echo/Say")(b"hi") == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/old.Echo/Shout")(b"hi")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(grace=0)
    assert [name for name, _ in observer.ended] == ["old.Echo/Say/unary"] * 2
    assert all(code in (grpc.StatusCode.OK, 0) for _, code in observer.ended)


async def test_a_gated_method_is_answered_by_its_stand_in_observed_as_the_method():
    """While a gate is closed its stand-ins take the calls, counted as the method's own
    (same name and grpc_type). The AgentRuntime stand-ins read a request only once
    admission would admit a run, so a slot that came free after the gate was asked still
    serves the call; a call that sends no request message is INVALID_ARGUMENT."""
    from agent_runtime import SessionManager
    from agent_runtime.grpc.instrument import ObservedRegistrar
    from agent_runtime.grpc.servicer import SERVICE_NAME, AgentRuntimeServicer, method_handlers, unread_handlers

    async def echo(input):
        return input

    asked: list[bool] = []

    class Closed:
        @property
        def closed(self) -> bool:
            asked.append(True)
            return True

    observer = RecordingObserver()
    servicer = AgentRuntimeServicer(SessionManager(echo))
    server = grpc.aio.server()
    registrar = ObservedRegistrar(server, [observer])
    registrar.add_registered_method_handlers(SERVICE_NAME, method_handlers(servicer))
    registrar.add_gates(SERVICE_NAME, Closed(), unread_handlers(servicer))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = stub(channel)
            request = pb.InvokeRequest(input=pb.Payload(text="hi"))
            assert (await client.Invoke(request)).output.text == "hi"
            events = [event async for event in client.InvokeStream(request)]
            assert events[-1].WhichOneof("event") == "ended"
            nothing = channel.stream_unary(f"/{SERVICE_NAME}/Invoke")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await nothing(iter(()))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "no request message" in err.value.details()
            assert (await client.ListAgents(pb.ListAgentsRequest())).agents[0].name == "echo"
    finally:
        await server.stop(grace=0)
    assert len(asked) == 3  # asked for the gated methods only
    assert [(name, code in (grpc.StatusCode.OK, 0)) for name, code in observer.ended] == [
        (f"{SERVICE_NAME}/Invoke/unary", True), (f"{SERVICE_NAME}/InvokeStream/server_stream", True),
        (f"{SERVICE_NAME}/Invoke/unary", False), (f"{SERVICE_NAME}/ListAgents/unary", True)]
