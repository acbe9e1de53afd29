"""Per-run context lives in contextvars: concurrent runs never see each other's."""

from __future__ import annotations

import asyncio
import random

import pytest
from google.protobuf import json_format

from agent_runtime import SessionManager, current_run, tool
from conftest import runtime_pb2 as pb
from conftest import stub

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run


@tool
async def who_is_asking(tag: str) -> dict:
    """Report the run context as a tool sees it."""
    await asyncio.sleep(random.random() / 100)
    run = current_run()
    return {"tag": tag, "user": run.user_id, "run": run.run_id}


@tool
def who_is_asking_in_thread(tag: str) -> dict:
    """The same from a sync tool, which runs in a worker thread."""
    run = current_run()
    return {"tag": tag, "user": run.user_id, "run": run.run_id}


async def context_agent(input):
    run = current_run()
    await asyncio.sleep(random.random() / 100)
    seen_async = await who_is_asking.invoke({"tag": input})
    seen_thread = await who_is_asking_in_thread.invoke({"tag": input})
    after = current_run()
    return {"tag": input, "agent_user": run.user_id, "agent_run": run.run_id,
            "after_user": after.user_id, "tool": seen_async, "thread_tool": seen_thread,
            "session": run.session_id}


def check(result, user: str, run_id: str) -> None:
    assert result["agent_user"] == result["after_user"] == user
    assert result["agent_run"] == run_id
    for seen in (result["tool"], result["thread_tool"]):
        assert seen == {"tag": result["tag"], "user": user, "run": run_id}


async def test_python_runs_are_isolated():
    manager = SessionManager(context_agent, max_concurrency=8)

    async def one(i: int):
        user = f"user-{i % 7}"
        async with manager.session(user_id=user, session_id=f"s{i}") as session:
            async with session.run(str(i)) as runner:
                result = await runner.result()
                check(result, user, runner.run_id)
                assert result["session"] == f"s{i}"

    await asyncio.gather(*(one(i) for i in range(100)))
    assert current_run() is None


async def test_grpc_runs_are_isolated(serve, channel_to):
    server = await serve(context_agent, max_concurrency=16)
    client = stub(channel_to(server.address))

    async def one(i: int):
        user = f"user-{i}"
        reply = await client.Invoke(pb.InvokeRequest(user_id=user, input=pb.Payload(text=str(i))))
        result = json_format.MessageToDict(reply.output.structured)
        check(result, user, reply.run_id)

    await asyncio.gather(*(one(i) for i in range(60)))


async def test_metadata_reaches_the_agent(serve, channel_to):
    from agents_for_tests import whoami

    server = await serve(whoami)
    reply = await stub(channel_to(server.address)).Invoke(pb.InvokeRequest(
        user_id="u1", session_id="conv-9", metadata={"tenant": "acme"}, input=pb.Payload(text="x")))
    seen = reply.output.structured.struct_value
    assert seen["user_id"] == "u1" and seen["session_id"] == "conv-9" and seen["run_id"] == reply.run_id
    assert dict(seen["metadata"]) == {"tenant": "acme"}
    assert reply.session_id == "conv-9"
