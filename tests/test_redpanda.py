"""Redpanda's agent runtime protocol, called with clients built from Redpanda's proto files:
both service names, text/bytes/structured input, metadata, errors, trace context and spans."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

import agents_for_tests
import interop_agents
from agent_runtime import echo
from agent_runtime._proto.redpanda.runtime.v1alpha1 import agent_pb2 as pb
from agent_runtime._proto.redpanda.runtime.v1alpha1 import agent_pb2_grpc, runtime_pb2_grpc
from agent_runtime._proto.redpanda.runtime.v1alpha1 import message_pb2 as mpb
from agent_runtime.grpc.redpanda_messages import to_value, value_to_python
from agent_runtime.grpc.status import RUN_ID_KEY

LEGACY_PROTO = Path(__file__).parent / "redpanda_legacy" / "runtime.proto"
TRACE = pb.TraceContext(trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
                        trace_flags="01")


def stubs(channel):
    return {"AgentRuntime": agent_pb2_grpc.AgentRuntimeStub(channel),
            "Runtime": runtime_pb2_grpc.RuntimeStub(channel)}


@pytest.fixture
async def whoami_server(serve, channel_to):
    server = await serve({"echo": echo.echo_agent, "whoami": interop_agents.whoami}, redpanda_agent="whoami")
    return stubs(channel_to(server.address))


NESTED = {"text": "hi", "count": 3, "ratio": 0.5, "ok": True, "none": None, "raw": b"\x00\xffbytes",
          "when": datetime.datetime(2025, 7, 1, 12, 30, tzinfo=datetime.timezone.utc),
          "list": [1, b"\x01", {"deep": [b"\x02", "x"]}]}


@pytest.mark.parametrize("service", ["AgentRuntime", "Runtime"])
async def test_structured_input_with_bytes_and_nested_values_round_trips(whoami_server, service):
    message = mpb.Message(structured=to_value(NESTED))
    reply = await whoami_server[service].InvokeAgent(pb.InvokeAgentRequest(message=message))
    out = value_to_python(reply.message.structured)
    assert out["input"] == NESTED
    assert not reply.message.HasField("error")


async def test_each_call_is_a_run_whose_session_is_named_by_its_run_id(serve, channel_to):
    server = await serve({"echo": echo.echo_agent, "ids": agents_for_tests.whoami}, redpanda_agent="ids")
    invoke = stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent
    seen = []
    for _ in range(2):
        call = invoke(pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x")))
        out = value_to_python((await call).message.structured)
        assert out["session_id"] == out["run_id"] and out["user_id"] == ""
        assert dict(await call.trailing_metadata())[RUN_ID_KEY] == out["run_id"]
        seen.append(out["run_id"])
    assert seen[0] != seen[1]


@pytest.mark.parametrize("service", ["AgentRuntime", "Runtime"])
async def test_bytes_payload_is_text_for_the_agent_and_metadata_reaches_it(whoami_server, service):
    metadata = mpb.StructValue()
    for key, value in {"kafka_key": "k1", "partition": 4, "raw": b"\xff\x01", "flag": True}.items():
        metadata.fields[key].CopyFrom(to_value(value))
    request = pb.InvokeAgentRequest(message=mpb.Message(bytes="héllo".encode(), metadata=metadata))
    reply = await whoami_server[service].InvokeAgent(request)
    out = value_to_python(reply.message.structured)
    assert out["input"] == "héllo"
    assert out["metadata"] == {"kafka_key": "k1", "partition": "4", "raw": "/wE=", "flag": "true"}
    assert reply.message.metadata == metadata  # the message keeps its metadata through the agent


async def test_non_utf8_bytes_reach_the_agent_as_bytes(serve, channel_to):
    server = await serve()
    reply = await stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent(
        pb.InvokeAgentRequest(message=mpb.Message(bytes=b"\xff\xfe\x00")))
    assert reply.message.WhichOneof("payload") == "bytes"
    assert reply.message.bytes == b"\xff\xfe\x00"


async def test_text_output_comes_back_as_bytes(serve, channel_to):
    server = await serve()
    reply = await stubs(channel_to(server.address))["Runtime"].InvokeAgent(
        pb.InvokeAgentRequest(message=mpb.Message(bytes=b"hello")))
    assert reply.message.bytes == b"hello"


async def test_failed_run_uses_the_error_field_on_agent_runtime(serve, channel_to):
    server = await serve(interop_agents.broken)
    request = pb.InvokeAgentRequest(message=mpb.Message(bytes=b"input"))
    call = stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent(request)
    reply = await call
    assert "failed with RuntimeError" in reply.message.error.message
    assert "secret" not in reply.message.error.message
    assert reply.message.bytes == b"input"  # the input message, flagged, for the pipeline to route
    run_id = dict(await call.trailing_metadata())[RUN_ID_KEY]
    assert run_id in reply.message.error.message


async def test_failed_run_is_a_status_on_the_first_protocol_version(serve, channel_to):
    server = await serve(interop_agents.broken)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs(channel_to(server.address))["Runtime"].InvokeAgent(
            pb.InvokeAgentRequest(message=mpb.Message(bytes=b"input")))
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in info.value.details()


@pytest.mark.parametrize("service", ["AgentRuntime", "Runtime"])
@pytest.mark.parametrize("request_bytes, expected", [
    (pb.InvokeAgentRequest().SerializeToString(), "message is required"),
    (pb.InvokeAgentRequest(message=mpb.Message(structured=mpb.Value())).SerializeToString(), "empty Value"),
    (b"\x0a\x05\x0a", "not a valid InvokeAgentRequest"),
    (pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x"), trace_context=pb.TraceContext(
        trace_id="xyz", span_id="b7ad6b7169203331")).SerializeToString(), "trace_context.trace_id"),
    (pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x"), trace_context=pb.TraceContext(
        trace_id=TRACE.trace_id, span_id="0" * 16)).SerializeToString(), "trace_context.span_id"),
])
async def test_bad_requests_are_invalid_argument(serve, channel_to, service, request_bytes, expected):
    server = await serve()
    method = channel_to(server.address).unary_unary(f"/redpanda.runtime.v1alpha1.{service}/InvokeAgent")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(request_bytes)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in info.value.details()


@pytest.mark.parametrize("service", ["AgentRuntime", "Runtime"])
async def test_over_capacity_is_resource_exhausted_with_retry_hint_before_the_request_is_read(
        serve, channel_to, service):
    """Gated as Invoke is, on a server of several agents too (InvokeAgent runs one): while
    every slot is taken even bytes that are no request are refused unread, counted for
    Redpanda's agent; once the slot is free they get their own status."""
    server = await serve({"echo": echo.echo_agent, "slow": interop_agents.slow}, redpanda_agent="slow",
                         max_concurrency=1, max_queue=0)
    channel = channel_to(server.address)
    stub = stubs(channel)[service]
    raw = channel.unary_unary(f"/redpanda.runtime.v1alpha1.{service}/InvokeAgent")
    holder = stub.InvokeAgent(pb.InvokeAgentRequest(message=mpb.Message(bytes=b"1")))
    while not server.manager.admission.in_use:
        await asyncio.sleep(0.01)
    for call in (stub.InvokeAgent(pb.InvokeAgentRequest(message=mpb.Message(bytes=b"0"))), raw(b"\xff\xff\xff")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue 0" in info.value.details()
        assert int(dict(info.value.trailing_metadata())["grpc-retry-pushback-ms"]) >= 1
    assert server.manager.admission.rejected == {"slow": 2}
    assert (await holder).message.bytes == b"slept 1s"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (await stub.InvokeAgent(pb.InvokeAgentRequest(message=mpb.Message(bytes=b"0")))).message.bytes == b"slept 0s"
    assert server.manager.admission.rejected == {"slow": 2} and server.manager.admission.in_use == 0


async def test_trace_context_returns_the_run_spans(serve, channel_to):
    server = await serve()
    stub = stubs(channel_to(server.address))["AgentRuntime"]
    message = mpb.Message(structured=to_value({"tool": "reverse", "arguments": {"text": "abc"}}))
    reply = await stub.InvokeAgent(pb.InvokeAgentRequest(message=message, trace_context=TRACE))
    assert reply.message.bytes == b"cba"
    [root] = reply.trace.spans
    assert root.name == "invoke_agent echo"
    attributes = {k: value_to_python(v) for k, v in root.attributes.items()}
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["agent_runtime.run.status"] == "ok"
    assert len(attributes["agent_runtime.run.id"]) == 32
    assert len(root.span_id) == 16 and int(root.span_id, 16)
    [tool] = root.child_spans
    assert tool.name == "execute_tool reverse"
    assert value_to_python(tool.attributes["gen_ai.tool.call.id"]) == "call-1"
    assert root.start_time.ToNanoseconds() <= tool.start_time.ToNanoseconds() <= tool.end_time.ToNanoseconds()
    assert tool.end_time.ToNanoseconds() <= root.end_time.ToNanoseconds()


async def test_llm_calls_become_chat_spans_with_token_usage(serve, channel_to):
    server = await serve(interop_agents.chatty)
    reply = await stubs(channel_to(server.address))["Runtime"].InvokeAgent(
        pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x"), trace_context=TRACE))
    [root] = reply.trace.spans
    [chat] = root.child_spans
    assert chat.name == "chat test-model"
    attributes = {k: value_to_python(v) for k, v in chat.attributes.items()}
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (7, 3)
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert value_to_python(root.attributes["gen_ai.usage.output_tokens"]) == 3


async def test_failed_run_still_returns_its_spans(serve, channel_to):
    server = await serve(interop_agents.broken)
    reply = await stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent(
        pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x"), trace_context=TRACE))
    [root] = reply.trace.spans
    assert value_to_python(root.attributes["error.type"]) == "error"
    assert reply.message.error.message


async def test_no_trace_context_no_spans(serve, channel_to):
    server = await serve()
    reply = await stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent(
        pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x")))
    assert not reply.HasField("trace")


async def test_several_agents_without_redpanda_agent_do_not_serve_the_protocol(serve, channel_to):
    server = await serve({"echo": echo.echo_agent, "whoami": interop_agents.whoami})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent(
            pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x")))
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_unknown_redpanda_agent_is_a_config_error(serve):
    from agent_runtime import ConfigError

    with pytest.raises(ConfigError, match="redpanda_agent: no agent named 'nope'"):
        await serve(redpanda_agent="nope")


def test_value_conversion_rejects_what_has_no_wire_form():
    with pytest.raises(TypeError):
        to_value({1: "x"})
    with pytest.raises(TypeError):
        to_value(object())
    assert value_to_python(to_value(2**70)) == float(2**70)  # beyond int64: a double
    stamp = to_value(datetime.datetime(2025, 1, 1))  # naive datetimes are taken as UTC
    assert stamp.timestamp_value == timestamp_pb2.Timestamp(seconds=1735689600)


LEGACY_CLIENT = r'''
import json, sys
import grpc
sys.path.insert(0, sys.argv[2])
import runtime_pb2 as pb, runtime_pb2_grpc as pb_grpc  # generated from Redpanda's first runtime.proto

channel = grpc.insecure_channel(sys.argv[1])
stub = pb_grpc.RuntimeStub(channel)
metadata = pb.StructValue(fields={"source": pb.Value(string_value="legacy")})
text = stub.InvokeAgent(pb.InvokeAgentRequest(message=pb.Message(serialized=b"hello", metadata=metadata)))
nested = pb.Value(struct_value=pb.StructValue(fields={
    "blob": pb.Value(bytes_value=b"\x00\x01"),
    "list": pb.Value(list_value=pb.ListValue(values=[pb.Value(integer_value=5), pb.Value(double_value=1.5)]))}))
structured = stub.InvokeAgent(pb.InvokeAgentRequest(message=pb.Message(structured=nested)))
s = structured.message.structured.struct_value.fields
print(json.dumps({
    "text_payload": text.message.WhichOneof("payload"),
    "text_input": json.loads(text.message.serialized)["input"] if text.message.WhichOneof("payload") == "serialized"
                  else text.message.structured.struct_value.fields["input"].string_value,
    "metadata_seen": text.message.structured.struct_value.fields["metadata"].struct_value.fields["source"].string_value,
    "metadata_kept": text.message.metadata.fields["source"].string_value,
    "blob": s["input"].struct_value.fields["blob"].bytes_value.hex(),
    "list": [v.WhichOneof("kind") for v in s["input"].struct_value.fields["list"].list_value.values],
}))
'''


async def test_client_built_from_the_first_redpanda_protocol_version(serve, tmp_path):
    """A caller generated from Redpanda's original runtime.proto (service Runtime, field `serialized`)."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{LEGACY_PROTO.parent}", f"-I{include}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", LEGACY_PROTO.name]) == 0
    server = await serve(interop_agents.whoami)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LEGACY_CLIENT, server.address, str(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"text_payload": "structured", "text_input": "hello", "metadata_seen": "legacy",
                               "metadata_kept": "legacy", "blob": "0001",
                               "list": ["integer_value", "double_value"]}


# -- with tracing on: the spans returned are the run's real spans, under the caller's span


async def test_traced_server_returns_its_exported_spans_under_the_callers_span(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve(tracer_provider=provider)
    message = mpb.Message(structured=to_value({"tool": "reverse", "arguments": {"text": "abc"}}))
    call = stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent(
        pb.InvokeAgentRequest(message=message, trace_context=TRACE))
    reply = await call
    assert reply.message.bytes == b"cba"
    trailers = dict(await call.trailing_metadata())
    assert len(trailers[RUN_ID_KEY]) == 32 and len(trailers["agent-runtime-trace-id"]) == 32
    [root] = reply.trace.spans
    assert root.name == "invoke_agent echo"
    assert [child.name for child in root.child_spans] == ["execute_tool reverse"]
    exported = {format(span.context.span_id, "016x"): span for span in exporter.get_finished_spans()}
    invoke = exported[root.span_id]  # the very span this server exported
    assert format(invoke.context.trace_id, "032x") == TRACE.trace_id
    assert format(invoke.parent.span_id, "016x") == TRACE.span_id
    assert exported[root.child_spans[0].span_id].parent.span_id == invoke.context.span_id
    assert value_to_python(root.attributes["gen_ai.agent.name"]) == "echo"


async def test_traced_concurrent_calls_each_get_their_own_spans(serve, channel_to, spans):
    provider, _ = spans
    server = await serve(interop_agents.whoami, tracer_provider=provider)
    stub = stubs(channel_to(server.address))["Runtime"]
    contexts = [pb.TraceContext(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", trace_flags="01")
                for i in range(8)]
    replies = await asyncio.gather(*(
        stub.InvokeAgent(pb.InvokeAgentRequest(message=mpb.Message(structured=to_value({"sleep": 0.05})),
                                               trace_context=ctx)) for ctx in contexts))
    run_ids = set()
    for reply in replies:
        [root] = reply.trace.spans
        assert not root.child_spans
        run_ids.add(value_to_python(root.attributes["agent_runtime.run.id"]))
    assert len(run_ids) == 8


async def test_traced_server_without_trace_context_returns_no_trace(serve, channel_to, spans):
    provider, exporter = spans
    server = await serve(tracer_provider=provider)
    reply = await stubs(channel_to(server.address))["AgentRuntime"].InvokeAgent(
        pb.InvokeAgentRequest(message=mpb.Message(bytes=b"x")))
    assert not reply.HasField("trace")
    assert any(span.name == "invoke_agent echo" for span in exporter.get_finished_spans())


TIMESTAMP_LIMITS = [(2**62, 0), (-(2**62), 0), (253_402_300_800, 0), (-62_135_596_801, 0),
                    (0, 1_000_000_000), (0, -1), (0, 2**31 - 1)]


@pytest.mark.parametrize("service", ["AgentRuntime", "Runtime"])
@pytest.mark.parametrize("where", ["structured", "metadata"])
@pytest.mark.parametrize("seconds, nanos", TIMESTAMP_LIMITS)
async def test_timestamps_out_of_range_are_invalid_argument_without_a_traceback(
        serve, channel_to, caplog, service, where, seconds, nanos):
    """Out of Timestamp's range, conversion raised: INTERNAL and an ERROR traceback per
    request, a way to flood the log (issue 30, item 3)."""
    server = await serve()
    stamp = mpb.Value(timestamp_value=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    message = (mpb.Message(structured=mpb.Value(list_value=mpb.ListValue(values=[stamp]))) if where == "structured"
               else mpb.Message(bytes=b"x", metadata=mpb.StructValue(fields={"when": stamp})))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs(channel_to(server.address))[service].InvokeAgent(pb.InvokeAgentRequest(message=message))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "timestamp_value out of range" in info.value.details()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("seconds, nanos", [(253_402_300_799, 999_999_999), (-62_135_596_800, 0)])
async def test_timestamps_at_the_ends_of_the_range_are_accepted(serve, channel_to, seconds, nanos):
    server = await serve()
    stamp = mpb.Value(timestamp_value=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    reply = await stubs(channel_to(server.address))["Runtime"].InvokeAgent(pb.InvokeAgentRequest(
        message=mpb.Message(structured=stamp, metadata=mpb.StructValue(fields={"when": stamp}))))
    assert reply.message.structured.timestamp_value.seconds == seconds
