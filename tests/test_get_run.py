"""GetRun: a run's record (running, then its end: status, output, error), from the
replica that ran it when no store is configured, and from any replica sharing a
Redis; only for the user_id that started it; NOT_FOUND for unknown runs."""

from __future__ import annotations

import os

import grpc
import pytest

import agents_for_tests
from conftest import runtime_pb2, stub
from redis_store import RedisServer, eventually, redis_server  # noqa: F401

OK, ERROR = runtime_pb2.RUN_STATUS_OK, runtime_pb2.RUN_STATUS_ERROR


def request(text: str, **fields) -> runtime_pb2.InvokeRequest:
    return runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text=text), **fields)


async def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def ended_record(runtime, run_id: str, user_id: str = "") -> runtime_pb2.RunInfo:
    """The run's record once it says the run has ended (a shared store follows a run within a
    round trip)."""
    async def ended() -> runtime_pb2.RunInfo | None:
        try:
            info = await runtime.GetRun(runtime_pb2.GetRunRequest(run_id=run_id, user_id=user_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None
        return None if info.running else info

    return await eventually(ended, f"run {run_id} to be recorded as ended")


async def test_get_run_in_process(serve, channel_to):
    server = await serve({"upper": agents_for_tests.upper, "failing": agents_for_tests.failing})
    runtime = stub(channel_to(server.address))
    reply = await runtime.Invoke(request("hi", agent="upper", user_id="u1", session_id="s1"))
    info = await ended_record(runtime, reply.run_id, "u1")
    assert (info.run_id, info.agent, info.session_id, info.running) == (reply.run_id, "upper", "s1", False)
    assert info.result.status == OK and info.result.output.text == "HI"
    assert info.created.ToNanoseconds() <= info.ended.ToNanoseconds()
    assert info.replica.endswith(f":{os.getpid()}")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await runtime.Invoke(request("x", agent="failing"))
    run_id = dict(failed.value.trailing_metadata())["agent-runtime-run-id"]
    info = await ended_record(runtime, run_id, "anyone")  # started without a user_id: anyone sees it
    assert info.result.status == ERROR and "failed with ValueError" in info.result.error
    assert not info.result.HasField("output")


async def test_a_run_in_progress_is_running(serve, channel_to):
    server = await serve(agents_for_tests.slow)
    runtime = stub(channel_to(server.address))
    call = runtime.InvokeStream(request("30", user_id="u1"))
    started = await call.read()
    info = await runtime.GetRun(runtime_pb2.GetRunRequest(run_id=started.run_id, user_id="u1"))
    assert info.running and not info.HasField("result") and not info.HasField("ended")
    assert info.created.ToNanoseconds() > 0
    call.cancel()
    info = await ended_record(runtime, started.run_id, "u1")
    assert info.result.status == runtime_pb2.RUN_STATUS_CANCELLED


async def test_only_the_starting_user_sees_a_run(serve, channel_to):
    server = await serve(agents_for_tests.upper)
    runtime = stub(channel_to(server.address))
    reply = await runtime.Invoke(request("hi", user_id="alice"))
    await ended_record(runtime, reply.run_id, "alice")
    for user in ("bob", ""):
        code = await status_of(runtime.GetRun(runtime_pb2.GetRunRequest(run_id=reply.run_id, user_id=user)))
        assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("run_id, code", [
    ("0" * 32, grpc.StatusCode.NOT_FOUND),
    ("", grpc.StatusCode.INVALID_ARGUMENT),
    ("x" * 257, grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_bad_or_unknown_run_ids(serve, channel_to, run_id, code):
    server = await serve(agents_for_tests.upper)
    runtime = stub(channel_to(server.address))
    assert await status_of(runtime.GetRun(runtime_pb2.GetRunRequest(run_id=run_id))) == code


async def test_undecodable_request_is_invalid_argument(serve, channel_to):
    server = await serve(agents_for_tests.upper)
    get_run = channel_to(server.address).unary_unary("/agent_runtime.v1.AgentRuntime/GetRun")
    assert await status_of(get_run(b"\xff\xff\xff")) == grpc.StatusCode.INVALID_ARGUMENT


async def test_any_replica_answers_for_a_run_of_another(redis_server, server_process, channel_to):  # noqa: F811
    replicas = [server_process("--agent", "agents_for_tests:upper", "--store-url", redis_server.url)
                for _ in range(2)]
    a, b = (stub(channel_to(replica.address)) for replica in replicas)
    reply = await a.Invoke(request("hi", user_id="u1", session_id="s1"))
    info = await ended_record(b, reply.run_id, "u1")
    assert (info.agent, info.session_id, info.result.status, info.result.output.text) == ("upper", "s1", OK, "HI")
    assert info.replica.endswith(f":{replicas[0].proc.pid}")
    code = await status_of(b.GetRun(runtime_pb2.GetRunRequest(run_id=reply.run_id, user_id="u2")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_the_holder_renews_the_lease_of_a_run_in_progress(redis_server, serve, channel_to):  # noqa: F811
    server = await serve(agents_for_tests.slow, store_url=redis_server.url, store_lease=0.3)
    runtime = stub(channel_to(server.address))
    call = runtime.InvokeStream(request("30"))
    started = await call.read()
    key = server.store.key("run", started.run_id)

    async def lease() -> float:
        return float(await server.store.redis.hget(key, "lease") or 0)

    first = await eventually(lease, "the run's record")
    assert (await runtime.GetRun(runtime_pb2.GetRunRequest(run_id=started.run_id))).running

    async def renewed() -> bool:
        return await lease() > first

    await eventually(renewed, "the lease to be renewed", timeout=5)
    call.cancel()


async def test_a_store_outage_fails_get_run_fast_and_runs_go_on(tmp_path, serve, channel_to):
    redis = RedisServer(tmp_path)
    server = await serve(agents_for_tests.upper, store_url=redis.url)
    runtime = stub(channel_to(server.address))
    reply = await runtime.Invoke(request("before"))
    await ended_record(runtime, reply.run_id)
    redis.stop()
    assert (await runtime.Invoke(request("during"), timeout=10)).output.text == "DURING"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await runtime.GetRun(runtime_pb2.GetRunRequest(run_id=reply.run_id), timeout=20)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith("the run store is unavailable: ")
