"""CancelRun knows a run's owner (issue 30, item 7): a run started with a user_id is
cancelled only by that user_id or by the operator's token; over-long ids are
INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent_runtime import ConfigError, ServerConfig
from conftest import runtime_pb2 as pb
from conftest import stub, wait_until

TOKEN = "callers-token"
OPERATOR = "operators-token"


async def forever(input):
    await asyncio.sleep(3600)


async def started(client, user_id: str, metadata=None):
    """An InvokeStream run of `user_id` and its run id."""
    call = client.InvokeStream(pb.InvokeRequest(user_id=user_id, input=pb.Payload(text="x")), metadata=metadata)
    return call, (await call.read()).run_id


async def code_of(awaitable) -> grpc.StatusCode:
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_only_the_owner_cancels_a_run_started_with_a_user_id(serve, channel_to):
    server = await serve(forever)
    client = stub(channel_to(server.address))
    call, run_id = await started(client, "alice")
    for intruder in ("", "bob", "alice "):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await client.CancelRun(pb.CancelRunRequest(run_id=run_id, user_id=intruder))
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to another user_id" in denied.value.details()
    assert server.manager.runs[run_id].status is None  # still running
    assert (await client.CancelRun(pb.CancelRunRequest(run_id=run_id, user_id="alice"))).cancelled
    assert await code_of(call.read()) in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)
    await wait_until(lambda: server.manager.admission.in_use == 0, "the slot to be free")


async def test_a_run_without_a_user_id_is_anyones_to_cancel(serve, channel_to):
    server = await serve(forever)
    client = stub(channel_to(server.address))
    call, run_id = await started(client, "")
    assert (await client.CancelRun(pb.CancelRunRequest(run_id=run_id, user_id="bob"))).cancelled
    call.cancel()
    await wait_until(lambda: server.manager.admission.in_use == 0, "the slot to be free")


async def test_the_operator_token_cancels_any_run_and_the_callers_token_does_not(serve, channel_to):
    server = await serve(forever, auth_token=TOKEN, auth_operator_token=OPERATOR)
    client = stub(channel_to(server.address))
    caller = (("authorization", f"Bearer {TOKEN}"),)
    operator = (("authorization", f"Bearer {OPERATOR}"),)
    call, run_id = await started(client, "alice", caller)
    assert await code_of(client.CancelRun(pb.CancelRunRequest(run_id=run_id, user_id="bob"),
                                          metadata=caller)) is grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(client.CancelRun(pb.CancelRunRequest(run_id=run_id),
                                          metadata=(("authorization", "Bearer wrong"),))) \
        is grpc.StatusCode.UNAUTHENTICATED
    assert (await client.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=operator)).cancelled
    call.cancel()
    # the operator's token authenticates any call
    assert await code_of(client.ListAgents(pb.ListAgentsRequest(), metadata=operator)) is grpc.StatusCode.OK
    await wait_until(lambda: server.manager.admission.in_use == 0, "the slot to be free")


@pytest.mark.parametrize("request_, message", [
    (pb.CancelRunRequest(run_id="r" * 1_000_000), "run_id is longer than 256 characters"),
    (pb.CancelRunRequest(run_id="r", user_id="u" * 257), "user_id is longer than 256 characters"),
    (pb.CancelRunRequest(), "run_id is required"),
])
async def test_bad_cancel_requests_are_invalid_argument(serve, channel_to, request_, message):
    """A 1 MB run id was OK/false, though over-long ids are INVALID_ARGUMENT everywhere else."""
    server = await serve(forever)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub(channel_to(server.address)).CancelRun(request_, timeout=10)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in bad.value.details()


async def test_undecodable_cancel_request_is_invalid_argument(serve, channel_to):
    server = await serve(forever)
    method = channel_to(server.address).unary_unary("/agent_runtime.v1.AgentRuntime/CancelRun")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await method(b"\xff\xff\xff", timeout=10)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid CancelRunRequest" in bad.value.details()


@pytest.mark.parametrize("settings, message", [
    ({"auth_operator_token": OPERATOR}, "needs auth on"),
    ({"auth_token": TOKEN, "auth_operator_token": OPERATOR, "auth_operator_token_file": "f"}, "not both"),
])
def test_operator_token_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**settings)
