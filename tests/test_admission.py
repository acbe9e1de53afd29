"""Admission: the semaphore never overshoots, the queue is bounded, refusals are immediate."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent_runtime import Draining, Overloaded, SessionManager
from agent_runtime.admission import Admission
from conftest import runtime_pb2 as pb
from conftest import stub, wait_until

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run


def gated():
    """An agent named `blocked` whose runs wait until its gate (an asyncio.Event) is set."""
    gate = asyncio.Event()

    async def blocked(input):
        await gate.wait()
        return input

    return blocked, gate


class Gauge:
    """An agent that measures how many runs are inside it at once."""

    def __init__(self, delay: float = 0.01) -> None:
        self.inside = 0
        self.peak = 0
        self.calls = 0
        self.delay = delay
        self.name = "gauge"

    async def run(self, input):
        self.inside += 1
        self.calls += 1
        self.peak = max(self.peak, self.inside)
        try:
            await asyncio.sleep(self.delay)
            return input
        finally:
            self.inside -= 1


async def test_200_concurrent_grpc_runs_never_exceed_4(serve, channel_to):
    agent = Gauge()
    server = await serve(agent, max_concurrency=4, max_queue=200)
    client = stub(channel_to(server.address))
    replies = await asyncio.gather(*(client.Invoke(pb.InvokeRequest(input=pb.Payload(text=str(i))))
                                     for i in range(200)))
    assert sorted(int(r.output.text) for r in replies) == list(range(200))
    assert agent.peak == 4 and agent.calls == 200
    admission = server.manager.admission
    assert admission.in_use == 0 and admission.waiting == 0 and admission.running["gauge"] == 0
    assert not server.manager.runs


async def test_full_queue_is_refused_at_once_with_retry_hint(serve, channel_to):
    blocked, gate = gated()
    server = await serve(blocked, max_concurrency=2, max_queue=3)
    client = stub(channel_to(server.address))
    accepted = [asyncio.ensure_future(client.Invoke(pb.InvokeRequest(input=pb.Payload(text="x"))))
                for _ in range(5)]
    admission = server.manager.admission
    await wait_until(lambda: admission.in_use + admission.waiting >= 5, "5 runs admitted or queued")
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="x")), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue 3" in err.value.details()
        assert int(dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"]) >= 1
    assert admission.rejected == {"blocked": 3}  # each refusal counted once
    gate.set()
    assert len(await asyncio.gather(*accepted)) == 5
    assert admission.in_use == 0


async def test_over_capacity_a_server_of_one_agent_refuses_calls_unread(serve, channel_to):
    """While every slot and the queue are taken, a server of one agent refuses Invoke and
    InvokeStream before gRPC reads the request (so even bytes that are no request, or a
    request for an unknown agent, are RESOURCE_EXHAUSTED), counted for its agent; once a
    slot is free the same requests get their own answers."""
    blocked, gate = gated()
    server = await serve(blocked, max_concurrency=1, max_queue=0)
    channel = channel_to(server.address)
    client, raw = stub(channel), channel.unary_unary("/agent_runtime.v1.AgentRuntime/Invoke")
    holder = asyncio.ensure_future(client.Invoke(pb.InvokeRequest(input=pb.Payload(text="x"))))
    await wait_until(lambda: server.manager.admission.in_use, "the slot taken")
    unknown = pb.InvokeRequest(agent="nope", input=pb.Payload(text="x"))
    calls = [raw(b"\xff\xff\xff", timeout=10), client.Invoke(unknown, timeout=10),
             client.InvokeStream(unknown, timeout=10).read()]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue 0" in err.value.details()
        assert int(dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"]) >= 1
    assert server.manager.admission.rejected == {"blocked": 3}
    gate.set()
    assert (await holder).output.text == "x"
    for call, code in ((raw(b"\xff\xff\xff", timeout=10), grpc.StatusCode.INVALID_ARGUMENT),
                       (client.Invoke(unknown, timeout=10), grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code
    assert server.manager.admission.rejected == {"blocked": 3}
    assert server.manager.admission.in_use == 0


async def test_over_capacity_a_server_of_several_agents_checks_the_request_then_refuses(serve, channel_to):
    """With several agents a refusal is counted for the agent the request names, so the
    request is read and checked first: a request that is not valid gets its own status
    even while every slot is taken, a valid one RESOURCE_EXHAUSTED."""
    blocked, gate = gated()
    server = await serve({"blocked": blocked, "other": blocked}, max_concurrency=1, max_queue=0)
    client = stub(channel_to(server.address))
    holder = asyncio.ensure_future(client.Invoke(pb.InvokeRequest(agent="blocked", input=pb.Payload(text="x"))))
    await wait_until(lambda: server.manager.admission.in_use, "the slot taken")
    for request, code in ((pb.InvokeRequest(agent="other", metadata={"": "an empty key"}), grpc.StatusCode.INVALID_ARGUMENT),
                          (pb.InvokeRequest(agent="nope", input=pb.Payload(text="x")), grpc.StatusCode.NOT_FOUND),
                          (pb.InvokeRequest(agent="other", input=pb.Payload(text="x")), grpc.StatusCode.RESOURCE_EXHAUSTED)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.Invoke(request, timeout=10)
        assert err.value.code() == code
    gate.set()
    assert (await holder).output.text == "x"
    assert server.manager.admission.rejected == {"other": 1}
    assert server.manager.admission.in_use == 0


async def test_check_says_what_take_would_do_and_takes_nothing():
    admission = Admission(1, max_queue=1, per_user_limit=1)
    assert admission.check("ann", "a") is True
    assert admission.take("ann", "a") is True
    assert admission.check("bob", "a") is False  # would queue
    with pytest.raises(Overloaded, match="per-user limit 1"):
        admission.check("ann", "a")
    assert (admission.in_use, admission.waiting, admission._per_user) == (1, 0, {"ann": 1})
    waiter = asyncio.ensure_future(admission.acquire("bob", "a"))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="max_queue 1"):
        admission.check("cy", "a")
    assert isinstance(admission.refusal("cy", "a"), Overloaded)  # returned, not raised
    assert admission.rejected == {"a": 3}
    admission.release("ann", "a")
    assert await waiter >= 0 and admission.in_use == 1
    admission.release("bob", "a")
    admission.draining = True
    with pytest.raises(Draining):
        admission.check("", "a")
    assert isinstance(admission.refusal("", "a"), Draining)
    assert (admission.in_use, admission._per_user, admission.rejected) == (0, {}, {"a": 5})
    assert admission.refusal("", "b") is not None and admission.rejected["b"] == 1


async def test_queue_wait_limit(serve, channel_to):
    blocked, gate = gated()
    server = await serve(blocked, max_concurrency=1, max_queue=5, queue_timeout=0.2)
    client = stub(channel_to(server.address))
    first = asyncio.ensure_future(client.Invoke(pb.InvokeRequest(input=pb.Payload(text="x"))))
    await wait_until(lambda: server.manager.admission.in_use, "the slot taken")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="y")), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue wait limit" in err.value.details()
    gate.set()
    await first
    assert server.manager.admission.in_use == 0 and server.manager.admission.waiting == 0


async def test_fifo_handover_and_cancelled_waiter():
    admission = Admission(1, max_queue=10, queue_timeout=5)
    await admission.acquire("", "a")
    order = []

    async def waiter(tag):
        await admission.acquire("", "a")
        order.append(tag)
        admission.release("", "a")

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(4)]
    await wait_until(lambda: admission.waiting == 4, "four waiters queued")
    tasks[1].cancel()
    await wait_until(lambda: admission.waiting == 3, "the cancelled waiter to leave the queue")
    admission.release("", "a")
    await asyncio.gather(tasks[0], tasks[2], tasks[3])
    assert order == [0, 2, 3]
    assert admission.in_use == 0 and admission.waiting == 0 and admission.queued["a"] == 0


async def test_per_user_cap():
    admission = Admission(10, max_queue=10, per_user_limit=2)
    await admission.acquire("alice", "a")
    await admission.acquire("alice", "a")
    with pytest.raises(Overloaded, match="per-user limit 2"):
        await admission.acquire("alice", "a")
    await admission.acquire("bob", "a")
    admission.release("alice", "a")
    await admission.acquire("alice", "a")
    for user in ("alice", "alice", "bob"):
        admission.release(user, "a")
    assert admission.in_use == 0 and not admission._per_user


async def test_unlimited_and_draining():
    admission = Admission(0)
    for _ in range(1000):
        await admission.acquire("", "a")
    assert admission.in_use == 1000
    admission.draining = True
    with pytest.raises(Draining):
        await admission.acquire("", "a")


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError):
        Admission(-1)
    with pytest.raises(ValueError):
        SessionManager(lambda x: x, max_concurrency=2, queue_timeout=0)
