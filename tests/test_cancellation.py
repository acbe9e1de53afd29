"""Client cancellation and deadlines cancel the agent, free the slot and still end the run."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent_runtime import EventType, RunCancelled, RunStatus, RunTimeout, SessionManager
from conftest import runtime_pb2 as pb
from conftest import stub, wait_until

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run


class Recorder:
    def __init__(self) -> None:
        self.events = []

    def on_event(self, event) -> None:
        self.events.append(event)

    def ends(self):
        return [e.data["status"] for e in self.events if e.type is EventType.RUN_END]


class Sleeper:
    name = "sleeper"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = 0

    async def run(self, input):
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def wait_idle(manager) -> None:
    await wait_until(lambda: not manager.admission.in_use and not manager.runs, "the slot to be freed", timeout=5)


async def test_client_cancel_frees_slot_and_ends_cancelled(serve, channel_to):
    agent, recorder = Sleeper(), Recorder()
    server = await serve(agent, sinks=[recorder], max_concurrency=1)
    call = stub(channel_to(server.address)).Invoke(pb.InvokeRequest(input=pb.Payload(text="x")))
    await agent.started.wait()
    call.cancel()
    await wait_idle(server.manager)
    assert agent.cancelled == 1
    assert recorder.ends() == [RunStatus.CANCELLED]


async def test_stream_cancel_frees_slot(serve, channel_to):
    agent, recorder = Sleeper(), Recorder()
    server = await serve(agent, sinks=[recorder], max_concurrency=1)
    call = stub(channel_to(server.address)).InvokeStream(pb.InvokeRequest(input=pb.Payload(text="x")))
    first = await call.read()
    assert first.WhichOneof("event") == "started"
    call.cancel()
    await wait_idle(server.manager)
    assert recorder.ends() == [RunStatus.CANCELLED]


async def test_deadline_frees_slot_and_ends_timeout(serve, channel_to):
    agent, recorder = Sleeper(), Recorder()
    server = await serve(agent, sinks=[recorder], max_concurrency=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(channel_to(server.address)).Invoke(pb.InvokeRequest(input=pb.Payload(text="x")), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_idle(server.manager)
    assert recorder.ends() == [RunStatus.TIMEOUT]


async def test_request_timeout_is_deadline_exceeded_with_run_id(serve, channel_to):
    agent, recorder = Sleeper(), Recorder()
    server = await serve(agent, sinks=[recorder])
    request = pb.InvokeRequest(input=pb.Payload(text="x"))
    request.timeout.FromMilliseconds(200)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(channel_to(server.address)).Invoke(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "time limit of 0.2s" in err.value.details()
    assert dict(err.value.trailing_metadata())["agent-runtime-run-id"]
    assert recorder.ends() == [RunStatus.TIMEOUT]
    await wait_idle(server.manager)


async def test_cancel_run_by_id(serve, channel_to):
    agent, recorder = Sleeper(), Recorder()
    server = await serve(agent, sinks=[recorder])
    client = stub(channel_to(server.address))
    call = client.InvokeStream(pb.InvokeRequest(input=pb.Payload(text="x")))
    run_id = (await call.read()).run_id
    assert (await client.CancelRun(pb.CancelRunRequest(run_id=run_id))).cancelled
    assert not (await client.CancelRun(pb.CancelRunRequest(run_id="nope"))).cancelled
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            events.append(await call.read())
    assert err.value.code() == grpc.StatusCode.CANCELLED
    assert events[-1].ended.status == pb.RUN_STATUS_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.CancelRun(pb.CancelRunRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await wait_idle(server.manager)


async def test_agent_ignoring_cancellation_is_abandoned_and_slot_freed(caplog):
    release = asyncio.Event()

    async def stubborn(input):
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass
        return "finally"

    recorder = Recorder()
    manager = SessionManager(stubborn, max_concurrency=1, cancel_grace=0.1, sinks=[recorder])
    async with manager.session(user_id="u") as session:
        async with session.run("x", timeout=0.1) as runner:
            with pytest.raises(RunTimeout):
                await runner.result()
    assert manager.admission.in_use == 0 and recorder.ends() == [RunStatus.TIMEOUT]
    assert "ignored cancellation" in caplog.text
    assert len(manager._abandoned) == 1
    release.set()
    await wait_until(lambda: not manager._abandoned, "the abandoned agent to end")
    assert not manager._abandoned and recorder.ends() == [RunStatus.TIMEOUT]


async def test_python_cancel_of_result_waiter():
    agent, recorder = Sleeper(), Recorder()
    manager = SessionManager(agent, sinks=[recorder])

    async def one_run():
        async with manager.session() as session:
            async with session.run("x") as runner:
                await runner.result()

    task = asyncio.ensure_future(one_run())
    await agent.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorder.ends() == [RunStatus.CANCELLED] and manager.admission.in_use == 0
    assert agent.cancelled == 1


async def test_python_cancel_while_streaming_result():
    agent, recorder = Sleeper(), Recorder()
    manager = SessionManager(agent, sinks=[recorder])
    async with manager.session() as session:
        async with session.run("x") as runner:
            stream = runner.result_stream()
            reader = asyncio.ensure_future(stream.__anext__())
            await agent.started.wait()
            assert runner.cancel()
            with pytest.raises(RunCancelled):
                await reader
    assert recorder.ends() == [RunStatus.CANCELLED] and manager.admission.in_use == 0
