"""Idempotency keys: a repeat of a key (per user_id) within its TTL attaches to the first
run (same run id, same result) instead of starting a second, in one replica and across
replicas sharing a store; the same key sent to two replicas at once starts one run."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import agents_for_tests
from conftest import runtime_pb2, stub
from redis_store import redis_server  # noqa: F401
from test_get_run import ended_record, request


def keyed(text: str, key: str = "k1", **fields) -> runtime_pb2.InvokeRequest:
    return request(text, idempotency_key=key, **fields)


async def test_a_repeat_attaches_to_the_first_run(serve, channel_to):
    server = await serve(agents_for_tests.whoami)
    runtime = stub(channel_to(server.address))
    first, again = await asyncio.gather(runtime.Invoke(keyed("x", user_id="u1")),
                                        runtime.Invoke(keyed("x", user_id="u1")))
    assert first.run_id == again.run_id and first.output == again.output
    assert first.output.structured.struct_value["run_id"] == first.run_id
    later = await runtime.Invoke(keyed("x", user_id="u1"))
    assert later.run_id == first.run_id and later.session_id == first.session_id
    other_user = await runtime.Invoke(keyed("x", user_id="u2"))
    other_key = await runtime.Invoke(keyed("x", "k2", user_id="u1"))
    assert len({first.run_id, other_user.run_id, other_key.run_id}) == 3


async def test_a_background_repeat_answers_with_the_first_run_id(serve, channel_to):
    server = await serve(agents_for_tests.slow)
    runtime = stub(channel_to(server.address))
    first = await runtime.Invoke(keyed("0.2", background=True, session_id="s1"))
    again = await runtime.Invoke(keyed("0.2", background=True))
    assert (again.run_id, again.session_id) == (first.run_id, "s1")
    waited = await runtime.Invoke(keyed("0.2"))  # a foreground repeat waits for the first run's end
    assert (waited.run_id, waited.output.text) == (first.run_id, "slept 0.2s")
    assert (await ended_record(runtime, first.run_id)).result.output.text == "slept 0.2s"


async def test_a_repeat_of_a_failed_run_gets_its_error(serve, channel_to):
    server = await serve(agents_for_tests.failing)
    runtime = stub(channel_to(server.address))
    errors = []
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await runtime.Invoke(keyed("x"))
        errors.append(failed.value)
    assert [e.code() for e in errors] == [grpc.StatusCode.INTERNAL] * 2
    assert errors[0].details() == errors[1].details()
    assert len({dict(e.trailing_metadata())["agent-runtime-run-id"] for e in errors}) == 1


async def test_a_refused_first_run_frees_its_key(serve, channel_to):
    server = await serve(agents_for_tests.slow, per_user_limit=1)  # refused after the key is claimed
    runtime = stub(channel_to(server.address))
    holder = await runtime.Invoke(request("0.3", background=True, user_id="u1"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await runtime.Invoke(keyed("0.01", user_id="u1"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await ended_record(runtime, holder.run_id, "u1")
    reply = await runtime.Invoke(keyed("0.01", user_id="u1"))  # the key was given up: this one runs
    assert reply.output.text == "slept 0.01s" and reply.run_id != holder.run_id


@pytest.mark.parametrize("fields, message", [
    ({"idempotency_key": "k" * 257}, "idempotency_key is longer than 256 characters"),
])
async def test_bad_keys_are_invalid(serve, channel_to, fields, message):
    server = await serve(agents_for_tests.upper)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(channel_to(server.address)).Invoke(request("x", **fields))
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


async def test_invoke_stream_refuses_a_key(serve, channel_to):
    server = await serve(agents_for_tests.upper)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub(channel_to(server.address)).InvokeStream(keyed("x")):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("idempotency_key is for Invoke")


async def test_the_same_key_on_two_replicas_at_once_starts_one_run(redis_server, server_process, channel_to):  # noqa: F811
    replicas = [server_process("--agent", "agents_for_tests:whoami", "--store-url", redis_server.url)
                for _ in range(2)]
    a, b = (stub(channel_to(replica.address)) for replica in replicas)
    for attempt in range(10):
        key = f"key-{attempt}"
        replies = await asyncio.gather(a.Invoke(keyed("x", key, user_id="u1"), timeout=30),
                                       b.Invoke(keyed("x", key, user_id="u1"), timeout=30))
        assert replies[0].run_id == replies[1].run_id and replies[0].output == replies[1].output
    again = await b.Invoke(keyed("x", "key-0", user_id="u1"), timeout=30)
    assert again.run_id != "" and again.output.structured.struct_value["run_id"] == again.run_id


async def test_a_key_held_by_a_run_that_never_started_is_unavailable(serve, channel_to):
    from agent_runtime.grpc.servicer import START_GRACE
    from agent_runtime.store.idempotency import holder

    server = await serve(agents_for_tests.upper, queue_timeout=0.05)
    await server.claims.claim("u1", "k1", holder("0" * 32, "upper", "s1"))  # as a replica lost at once would
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await stub(channel_to(server.address)).Invoke(keyed("x", user_id="u1"), timeout=START_GRACE + 10)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert lost.value.details() == f"run {'0' * 32}, which holds this idempotency key, did not start; retry"
