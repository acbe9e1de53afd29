"""Events emitted from worker threads (plain-function agents, sync tools) reach the
caller at once, in order, also under asyncio's debug mode (issue 27, item 1).

They used to resolve the stream's event-loop future from the worker thread: the
chunks arrived when something else woke the loop (0.0 s, 1.6 s, 0.8 s late), and in
debug mode the stream hung until its deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf import json_format

from conftest import runtime_pb2 as pb
from conftest import stub

CHUNKS = 5


@pytest.mark.parametrize("debug", [False, True], ids=["default", "asyncio-debug"])
async def test_chunks_of_a_plain_function_agent_arrive_as_they_are_emitted(server_process, channel_to, debug):
    env = {"PYTHONASYNCIODEBUG": "1"} if debug else {}
    server = server_process("--agent", "thread_agents:ticker", env=env)
    call = stub(channel_to(server.address)).InvokeStream(
        pb.InvokeRequest(input=pb.Payload(text=f"{CHUNKS} 0.2")), timeout=30)
    delays = []
    ended = None
    async for event in call:
        if event.HasField("chunk"):
            delays.append(time.time() - float(event.chunk.text))
        elif event.HasField("ended"):
            ended = event.ended
    assert ended is not None and ended.status == pb.RUN_STATUS_OK
    assert len(delays) == CHUNKS
    assert max(delays) < 0.05, f"chunks arrived {[round(d, 3) for d in delays]} s after they were emitted"


async def test_a_sync_tool_emits_custom_events_in_order(serve, channel_to, caplog):
    """In debug mode asyncio refuses calls from other threads, which the unsafe path made."""
    import thread_agents

    asyncio.get_running_loop().set_debug(True)
    server = await serve(thread_agents.uses_progress)
    events = [event async for event in stub(channel_to(server.address)).InvokeStream(
        pb.InvokeRequest(input=pb.Payload(text="20 0.01")), timeout=10)]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds == ["started", "tool_started", *["custom"] * 20, "tool_ended", "ended"]
    assert [json_format.MessageToDict(e.custom.data)["step"] for e in events if e.HasField("custom")] == list(range(20))
    assert [event.seq for event in events] == list(range(len(events)))
    assert events[-1].ended.output.text == "20 steps"
    assert server.manager.admission.in_use == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
