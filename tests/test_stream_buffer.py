"""The caller's event buffer of a streamed run is bounded (issue 30, item 2): producers
that can wait are held back, one that cannot fails its run, and the run's slot covers
what its caller has not read yet."""

from __future__ import annotations

import grpc
import pytest

from agent_runtime import SessionManager, emit_chunk
from agent_runtime.errors import StreamOverflow
from agent_runtime.events import BUFFER_LIMIT, EVENT_BYTES, EventType, RunStatus
from conftest import runtime_pb2 as pb
from conftest import stub, wait_until

CHUNK = "x" * 1000
FLOOD = 3 * BUFFER_LIMIT // len(CHUNK)  # three buffers' worth, emitted without an await


async def flood(input):
    for _ in range(FLOOD):
        emit_chunk(CHUNK)
    return "flooded"


async def test_emit_chunk_from_a_coroutine_past_the_limit_fails_the_run():
    manager = SessionManager(flood)
    async with manager.session().run("go") as runner:
        batches = runner.event_batches()
        events = list(await batches.__anext__())  # run.start: the agent starts after it
        await wait_until(lambda: runner.status is not None, "the run to end")
        assert manager.buffered.value <= BUFFER_LIMIT + EVENT_BYTES + len("flooded")
        async for batch in batches:
            events += batch
        with pytest.raises(StreamOverflow, match="bytes of events unread"):
            await runner.result()
    chunks = [e for e in events if e.type is EventType.CHUNK]
    assert 0 < len(chunks) <= BUFFER_LIMIT // (EVENT_BYTES + len(CHUNK))
    assert events[-1].type is EventType.RUN_END and events[-1].data["status"] is RunStatus.ERROR
    assert manager.buffered.value == 0 and manager.admission.in_use == 0


async def test_the_flood_over_grpc_is_resource_exhausted(serve, channel_to):
    server = await serve(flood)
    chunks = 0
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for event in stub(channel_to(server.address)).InvokeStream(
                pb.InvokeRequest(input=pb.Payload(text="go")), timeout=30):
            chunks += event.HasField("chunk")
    assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "await stream_chunk" in failed.value.details()
    assert 0 < chunks < FLOOD
    await wait_until(lambda: server.manager.admission.in_use == 0, "the slot to be free")
    assert server.manager.buffered.value == 0


async def test_a_worker_thread_emitting_into_a_full_stream_waits_and_the_loop_does_not():
    emitted = []

    def plain(input):
        for i in range(2000):
            emitted.append(i)
            emit_chunk(str(i))
        return "done"

    manager = SessionManager(plain)
    async with manager.session().run("go") as runner:
        batches = runner.event_batches()
        events = list(await batches.__anext__())
        await wait_until(lambda: len(emitted) >= 256, "the stream to fill up")
        assert len(emitted) < 300, "the worker thread went on past the buffer's high-water mark"
        assert runner.status is None
        async for batch in batches:
            events += batch
    assert [e.data["chunk"] for e in events if e.type is EventType.CHUNK] == [str(i) for i in range(2000)]
    assert runner.status is RunStatus.OK and manager.buffered.value == 0


async def test_a_streamed_run_keeps_its_slot_until_its_caller_has_read_its_events():
    async def quick(input):
        for i in range(100):
            emit_chunk(str(i))
        return "done"

    manager = SessionManager(quick, max_concurrency=1)
    async with manager.session().run("go") as runner:
        batches = runner.event_batches()
        await batches.__anext__()
        await wait_until(lambda: runner.status is RunStatus.OK, "the agent to finish")
        assert manager.admission.in_use == 1 and manager.buffered.value > 0
        async for batch in batches:
            pass
        assert manager.admission.in_use == 0 and manager.buffered.value == 0


async def test_a_caller_that_leaves_gives_back_the_slot_and_the_buffer():
    async def quick(input):
        for i in range(100):
            emit_chunk(str(i))
        return "done"

    manager = SessionManager(quick, max_concurrency=1)
    async with manager.session().run("go") as runner:
        batches = runner.event_batches()
        await batches.__anext__()
        await wait_until(lambda: runner.status is RunStatus.OK, "the agent to finish")
        await batches.aclose()
    assert manager.admission.in_use == 0 and manager.buffered.value == 0
