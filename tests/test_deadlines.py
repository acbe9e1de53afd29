"""A run's time limit is the smallest of the request's timeout, the client's
deadline, the agent's own timeout and the server's `run_timeout`."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from agent_runtime import RunTimeout, SessionManager
from conftest import runtime_pb2 as pb
from conftest import stub, wait_until

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run


class Sleepy:
    name = "sleepy"

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout

    async def run(self, input):
        await asyncio.sleep(30)


@pytest.mark.parametrize("agent_timeout, default, requested, expected", [
    (0.05, None, None, "0.05s"),
    (None, 0.05, None, "0.05s"),
    (0.5, 0.04, None, "0.04s"),
    (0.5, 0.4, 0.03, "0.03s"),
])
async def test_smallest_bound_wins(agent_timeout, default, requested, expected):
    manager = SessionManager(Sleepy(agent_timeout), default_timeout=default)
    async with manager.session() as session:
        async with session.run("x", timeout=requested) as runner:
            with pytest.raises(RunTimeout, match=f"time limit of {expected}"):
                await runner.result()
    assert manager.admission.in_use == 0


async def test_run_timeout_setting_over_grpc(serve, channel_to):
    server = await serve(Sleepy(), run_timeout=0.05)
    client = stub(channel_to(server.address))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="x")), timeout=10)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.05s" in caught.value.details()
    assert dict(caught.value.trailing_metadata())["agent-runtime-run-id"]
    request = pb.InvokeRequest(input=pb.Payload(text="x"))
    request.timeout.FromMilliseconds(20)
    with pytest.raises(grpc.aio.AioRpcError) as smaller:
        await client.Invoke(request, timeout=10)
    assert "0.02s" in smaller.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as deadline:  # the client's own deadline, shorter still
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="x")), timeout=0.01)
    assert deadline.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: not server.manager.admission.in_use, "the slot to be freed", timeout=3)
    assert server.manager.admission.in_use == 0


async def test_client_deadlines_race_no_status_into_a_finished_call(serve, channel_to, caplog):
    """The run ends just before the client's deadline, so the client mostly gets the
    server's DEADLINE_EXCEEDED with the run id; when gRPC has ended the call first,
    no status is sent into it (which gRPC would log as an error)."""
    caplog.set_level(logging.ERROR)
    server = await serve(Sleepy(), max_concurrency=64)
    client = stub(channel_to(server.address))

    async def one():
        try:
            async for _ in client.InvokeStream(pb.InvokeRequest(input=pb.Payload(text="x")), timeout=0.05):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("the run outlived the client's deadline")

    errors = []
    for _ in range(10):
        errors += await asyncio.gather(*(one() for _ in range(32)))
    assert {e.code() for e in errors} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert any(dict(e.trailing_metadata() or ()).get("agent-runtime-run-id") for e in errors)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await wait_until(lambda: not server.manager.admission.in_use, "the slot to be freed", timeout=3)
    assert server.manager.admission.in_use == 0
