"""The in-process task registry: bounded, never dropping a task in a run, and
subscribers that fall too far behind are dropped with a status they can act on."""

from __future__ import annotations

from typing import Any

import pytest
from a2a.types import a2a_pb2 as a2a

from agent_runtime import Overloaded
from agent_runtime.events import EventType, RunEvent
from agent_runtime.grpc.a2a_tasks import SUBSCRIBER_BACKLOG, RecentTasks, TaskRecord


class _Run:
    """What a record reads of the run it is in: its id."""

    run_id = "run-1"


def _record(task_id: str, running: bool = False) -> TaskRecord:
    record = TaskRecord(task_id, "ctx", "", "echo")
    if running:
        record.start(_Run(), a2a.Message(message_id="m", role=a2a.Role.ROLE_USER, parts=[a2a.Part(text="x")]))
    return record


def _chunk(text: Any) -> RunEvent:
    return RunEvent(None, 0, EventType.CHUNK, 0.0, {"chunk": text})


async def test_the_oldest_ended_tasks_are_dropped_first_and_running_ones_never():
    tasks = RecentTasks(max_tasks=2)
    running = _record("running", running=True)
    for record in (running, _record("a"), _record("b"), _record("c")):
        await tasks.put(record)
    assert sorted(record.id for record in await tasks.list()) == ["c", "running"]
    assert await tasks.get("running") is running and await tasks.get("a") is None
    with pytest.raises(ValueError):
        RecentTasks(max_tasks=0)


async def test_a_subscriber_that_falls_behind_is_dropped():
    record = _record("t", running=True)
    stream = record.subscribe()
    first = await anext(stream)
    assert first.task.id == "t"
    for _ in range(SUBSCRIBER_BACKLOG + 1):
        record.on_event(_chunk("x"))
    received = 0
    with pytest.raises(Overloaded, match="fell more than"):
        async for _ in stream:
            received += 1
    assert received == SUBSCRIBER_BACKLOG


async def test_text_chunks_are_one_part_in_the_task_and_one_update_each():
    record = _record("t", running=True)
    updates = [record.on_event(_chunk(piece))[0].artifact_update for piece in ("a ", "b ", "c")]
    assert [u.append for u in updates] == [False, True, True]
    assert [[p.text for p in u.artifact.parts] for u in updates] == [["a "], ["b "], ["c"]]
    record.on_event(_chunk({"n": 1}))
    record.on_event(_chunk("d"))
    parts = record.snapshot().artifacts[0].parts
    assert [p.WhichOneof("content") for p in parts] == ["text", "data", "text"]
    assert (parts[0].text, parts[2].text) == ("a b c", "d")
