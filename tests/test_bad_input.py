"""Bad input gets a clear status and message; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from conftest import runtime_pb2 as pb
from conftest import stub


async def invoke_error(client, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Invoke(request, timeout=10)
    return err.value


@pytest.fixture
async def two_agents(serve, channel_to):
    from agent_runtime.echo import echo_agent
    from agents_for_tests import upper

    server = await serve({"echo": echo_agent, "upper": upper})
    return server, channel_to(server.address)


def text(value: str, **fields) -> pb.InvokeRequest:
    return pb.InvokeRequest(input=pb.Payload(text=value), **fields)


@pytest.mark.parametrize("request_, code, message", [
    (text("x", agent="nope"), grpc.StatusCode.NOT_FOUND, "no agent named 'nope'; served agents: echo, upper"),
    (text("x"), grpc.StatusCode.INVALID_ARGUMENT, "name one in the request's `agent` field"),
    (pb.InvokeRequest(agent="echo"), grpc.StatusCode.INVALID_ARGUMENT, "input is required"),
    (pb.InvokeRequest(agent="echo", input=pb.Payload(structured=struct_pb2.Value())),
     grpc.StatusCode.INVALID_ARGUMENT, "input.structured is an empty Value"),
    (text("x", agent="echo", user_id="u" * 257), grpc.StatusCode.INVALID_ARGUMENT, "user_id is longer than 256"),
    (text("x", agent="echo", metadata={f"k{i}": "v" for i in range(65)}),
     grpc.StatusCode.INVALID_ARGUMENT, "metadata has 65 entries"),
    (text("x", agent="echo", metadata={"": "v"}), grpc.StatusCode.INVALID_ARGUMENT, "metadata keys"),
])
async def test_bad_requests(two_agents, request_, code, message):
    server, channel = two_agents
    client = stub(channel)
    err = await invoke_error(client, request_)
    assert err.code() == code and message in err.details()
    with pytest.raises(grpc.aio.AioRpcError) as stream_err:
        async for _ in client.InvokeStream(request_):
            pass
    assert stream_err.value.code() == code
    assert (await client.Invoke(text("still up", agent="upper"))).output.text == "STILL UP"
    assert server.manager.admission.in_use == 0


async def test_negative_timeout(two_agents):
    _, channel = two_agents
    request = text("x", agent="echo")
    request.timeout.seconds = -1
    err = await invoke_error(stub(channel), request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "positive duration" in err.details()


@pytest.mark.parametrize("seconds, nanos, message", [
    (2**62, 0, "out of Duration's range"), (315_576_000_001, 0, "out of Duration's range"),
    (0, 1_000_000_000, "positive duration"), (-(2**62), 0, "positive duration"), (0, -1, "positive duration"),
    (1, -(2**31), "positive duration"),
])
async def test_timeouts_out_of_durations_range_are_invalid_argument(two_agents, caplog, seconds, nanos, message):
    """google.protobuf.Duration's limits: none reaches a timer or the log (issue 30, item 3)."""
    _, channel = two_agents
    request = text("x", agent="echo")
    request.timeout.seconds, request.timeout.nanos = seconds, nanos
    err = await invoke_error(stub(channel), request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_the_longest_duration_is_a_valid_timeout(two_agents):
    _, channel = two_agents
    request = text("x", agent="echo")
    request.timeout.seconds, request.timeout.nanos = 315_576_000_000, 999_999_999
    assert (await stub(channel).Invoke(request, timeout=10)).output.text == "x"


@pytest.mark.parametrize("payload, reason", [
    (b"\x22\x03\x0a\x01\xff", "invalid UTF-8 in input.text"),
    (b"\xff\xff\xff", "truncated garbage"),
    (b"\x0a\x05ab", "length past the end"),
    (b"\x32\x02\x08\x05\x32", "wrong wire types"),
])
async def test_undecodable_bytes_are_invalid_argument(two_agents, payload, reason):
    _, channel = two_agents
    raw = channel.unary_unary("/agent_runtime.v1.AgentRuntime/Invoke")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(payload, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
    assert "not a valid InvokeRequest" in err.value.details()


async def test_unknown_method_is_unimplemented(two_agents):
    _, channel = two_agents
    raw = channel.unary_unary("/agent_runtime.v1.AgentRuntime/Nope")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_output_without_wire_form_is_internal(serve, channel_to):
    async def returns_object(input):
        return object()

    server = await serve(returns_object)
    err = await invoke_error(stub(channel_to(server.address)), text("x"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "output cannot be sent" in err.details() and "object" in err.details()


async def test_text_output_that_is_not_utf8_is_internal(serve, channel_to):
    async def lone_surrogate(input):
        return "half a pair: \ud800"

    server = await serve(lone_surrogate)
    err = await invoke_error(stub(channel_to(server.address)), text("x"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "output cannot be sent" in err.details() and "surrogates not allowed" in err.details()
    assert dict(err.trailing_metadata())["agent-runtime-run-id"]


async def test_agent_raising_domain_error_keeps_its_code(serve, channel_to):
    from agent_runtime import InvalidInput

    async def picky(input):
        raise InvalidInput("give me a number")

    server = await serve(picky)
    err = await invoke_error(stub(channel_to(server.address)), text("x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details() == "give me a number"
    assert dict(err.trailing_metadata())["agent-runtime-run-id"]


async def test_echo_tool_errors(serve, channel_to):
    server = await serve()
    client = stub(channel_to(server.address))
    for obj, message in (({"tool": "nope"}, "echo has no tool 'nope'"),
                         ({"tool": "reverse", "arguments": {"text": 5}}, "invalid arguments for tool 'reverse'")):
        value = struct_pb2.Value()
        value.struct_value.update(obj)
        err = await invoke_error(client, pb.InvokeRequest(input=pb.Payload(structured=value)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details()


async def test_an_abort_leaves_no_reference_cycle_behind():
    """gRPC keeps its AbortError on the call's state and the error's traceback holds the
    frames that hold the call; `abort` drops the traceback once the error has been
    caught, so a refused call is freed by reference counting, not the cyclic GC."""
    import asyncio

    from agent_runtime.errors import Overloaded
    from agent_runtime.grpc.status import abort

    class Context:
        def done(self) -> bool:
            return False

        def trailing_metadata(self) -> tuple:
            return ()

        async def abort(self, code, details, metadata) -> None:
            raise grpc.aio.AbortError(details)

    with pytest.raises(grpc.aio.AbortError) as caught:
        await abort(Context(), Overloaded("full", retry_after=0.1))
    assert caught.value.__traceback__ is not None
    await asyncio.sleep(0)
    assert caught.value.__traceback__ is None
