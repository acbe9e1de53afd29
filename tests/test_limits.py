"""Server-side limits with clear codes: concurrent streams per connection and
message size both ways."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from agent_runtime import EventType, RuntimeServer, ServerConfig, current_run
from conftest import runtime_pb2 as pb
from conftest import stub


class Gauge:
    """A slow agent that records how many runs of each user execute at once."""

    name = "gauge"

    def __init__(self) -> None:
        self.now: Counter = Counter()
        self.peak: Counter = Counter()

    async def run(self, input):
        user = current_run().user_id
        self.now[user] += 1
        self.peak[user] = max(self.peak[user], self.now[user])
        try:
            await asyncio.sleep(float(input))
            return "done"
        finally:
            self.now[user] -= 1


async def code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("limit", [2, 0])
async def test_max_concurrent_streams_bounds_calls_per_connection(serve, limit):
    """Over the limit, a client either waits to send a call or has it refused with
    UNAVAILABLE (HTTP/2 REFUSED_STREAM: never seen by the server, safe to retry);
    each connection has its own allowance. Without a limit, all five run at once."""
    agent = Gauge()
    server = await serve(agent, max_concurrency=32, max_concurrent_streams=limit)
    channels = [grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(2)]
    try:
        clients = [stub(channel) for channel in channels]

        def call(i: int, seconds: str):
            request = pb.InvokeRequest(user_id=f"connection-{i}", input=pb.Payload(text=seconds))
            return code_of(clients[i].Invoke(request, timeout=30))

        assert [await call(i, "0") for i in (0, 1)] == [grpc.StatusCode.OK] * 2  # connected
        codes = await asyncio.gather(*(call(i, "0.2") for i in (0, 1) for _ in range(5)))
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        assert codes.count(grpc.StatusCode.OK) >= 4
        assert agent.peak == {"connection-0": limit or 5, "connection-1": limit or 5}
        assert server.manager.admission.in_use == 0
    finally:
        for channel in channels:
            await channel.close()


def test_max_concurrent_streams_is_bounded_by_default():
    """Unlimited, one connection's HEADERS-only streams took a server past 500 MB (issue 30)."""
    assert ServerConfig().max_concurrent_streams == 1000
    assert ("grpc.max_concurrent_streams", 1000) in RuntimeServer(config=ServerConfig()).grpc_options()


@pytest.mark.parametrize("streaming", [False, True])
async def test_oversized_output_is_resource_exhausted_and_frees_the_slot(serve, channel_to, streaming):
    limit = 64 * 1024

    async def big(input):
        return "x" * (limit + 1)

    async def big_stream(input):
        yield "x" * (limit + 1)

    server = await serve(big_stream if streaming else big, max_message_bytes=limit)
    client = stub(channel_to(server.address))
    request = pb.InvokeRequest(input=pb.Payload(text="go"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            async for _ in client.InvokeStream(request, timeout=10):
                pass
        else:
            await client.Invoke(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.manager.admission.in_use == 0
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="y" * limit)), timeout=10)
    assert too_big.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_reply_too_large_to_send_ends_its_run_with_the_callers_status(serve, channel_to, caplog):
    """A request of exactly max_message_bytes to the echo agent: its reply is larger. The
    run was logged ok, and gRPC logged a traceback (issue 30, item 4)."""
    from agent_runtime.events import RunStatus

    ends = []

    class Ends:
        event_types = {EventType.RUN_END}

        def on_event(self, event):
            ends.append(event.data["status"])

    limit = 64 * 1024
    server = await serve(sinks=[Ends()], max_message_bytes=limit)
    client = stub(channel_to(server.address))
    text = "y" * (limit - 8)  # the request, with its field tags and lengths, is exactly `limit` bytes
    assert pb.InvokeRequest(input=pb.Payload(text=text)).ByteSize() == limit
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text=text)), timeout=10)
    assert too_big.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the server's max_message_bytes" in too_big.value.details()
    assert ends == [RunStatus.ERROR]
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    assert server.manager.admission.in_use == 0
