"""Background runs (`InvokeRequest.background`): Invoke answers with the run id once the
run has a slot, the run goes on without its caller (and beyond the call's deadline),
and its end is read with GetRun or WatchRun, on any replica sharing a store."""

from __future__ import annotations

import grpc
import pytest

import agents_for_tests
from conftest import runtime_pb2, stub
from redis_store import eventually, redis_server  # noqa: F401
from test_get_run import ended_record, request
from test_watch_run import watch


def background(text: str, **fields) -> runtime_pb2.InvokeRequest:
    return request(text, background=True, **fields)


async def test_invoke_answers_at_once_and_the_run_goes_on(serve, channel_to):
    server = await serve(agents_for_tests.slow)
    channel = channel_to(server.address)
    reply = await stub(channel).Invoke(background("0.5", user_id="u1", session_id="s1"), timeout=0.2)
    assert reply.run_id and reply.session_id == "s1" and not reply.HasField("output")
    info = await stub(channel).GetRun(runtime_pb2.GetRunRequest(run_id=reply.run_id, user_id="u1"))
    assert info.running
    await channel.close()  # nobody waits for it now, and the call's 0.2 s deadline has no say
    info = await ended_record(stub(channel_to(server.address)), reply.run_id, "u1")
    assert info.result.status == runtime_pb2.RUN_STATUS_OK and info.result.output.text == "slept 0.5s"


async def test_a_failing_background_run_is_recorded(serve, channel_to):
    server = await serve(agents_for_tests.failing)
    runtime = stub(channel_to(server.address))
    reply = await runtime.Invoke(background("x"))
    info = await ended_record(runtime, reply.run_id)
    assert info.result.status == runtime_pb2.RUN_STATUS_ERROR and "ValueError" in info.result.error


async def test_a_background_run_is_admitted_as_any_run(serve, channel_to):
    server = await serve(agents_for_tests.slow, max_concurrency=1, max_queue=0)
    runtime = stub(channel_to(server.address))
    first = await runtime.Invoke(background("0.3"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await runtime.Invoke(background("0.3"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await ended_record(runtime, first.run_id)
    second = await eventually(lambda: _admitted(runtime), "a free slot")
    assert (await ended_record(runtime, second.run_id)).result.output.text == "slept 0.3s"


async def _admitted(runtime) -> runtime_pb2.InvokeResponse | None:
    try:
        return await runtime.Invoke(background("0.3"))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return None


async def test_invoke_stream_refuses_background(serve, channel_to):
    server = await serve(agents_for_tests.upper)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub(channel_to(server.address)).InvokeStream(background("hi")):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "background runs are started with Invoke; read their events with WatchRun"


async def test_a_drain_lets_a_background_run_finish(serve, channel_to):
    server = await serve(agents_for_tests.slow)
    runtime = stub(channel_to(server.address))
    reply = await runtime.Invoke(background("0.3"))
    record = server.runs.get  # the server's own registry outlives its gRPC port
    await server.stop(drain_timeout=10)
    info = await record(reply.run_id)
    assert info is not None and info.end is not None
    assert runtime_pb2.InvokeEvent.FromString(info.end).ended.status == runtime_pb2.RUN_STATUS_OK


async def test_a_background_run_is_watched_from_another_replica(redis_server, server_process, channel_to):  # noqa: F811
    replicas = [server_process("--agent", "agents_for_tests:paced_stream", "--store-url", redis_server.url)
                for _ in range(2)]
    a, b = (stub(channel_to(replica.address)) for replica in replicas)
    reply = await a.Invoke(background("20", user_id="u1"))
    events = await watch(b, reply.run_id, user_id="u1")
    assert [event.seq for event in events] == list(range(22))
    assert "".join(e.chunk.text for e in events if e.HasField("chunk")) == "".join(f"{i} " for i in range(20))
    assert events[-1].ended.output.text == "".join(f"{i} " for i in range(20))
