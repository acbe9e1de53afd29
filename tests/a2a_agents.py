"""The agents the A2A tests talk to: as runtime agents (`a2a_agents:words`, served by
`agent-runtime serve`) and the same behaviour as an a2a-sdk `AgentExecutor`, for the
SDK's own reference server, so both servers are held to one client test.

`words` streams the words of its input one by one, each with its trailing space;
an input starting `pause=S ` waits S seconds before each word.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from a2a.helpers.proto_helpers import new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events.event_queue_v2 import EventQueue
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types.a2a_pb2 import TaskState

from agent_runtime import InputRequired, current_run

_PAUSE = re.compile(r"pause=([0-9.]+)\s+")
_WORDS = re.compile(r"\S+\s*")


def plan(text: str) -> tuple[float, list[str]]:
    """The pause before each word, and the words (each with its trailing space)."""
    match = _PAUSE.match(text)
    pause = float(match.group(1)) if match else 0.0
    return pause, _WORDS.findall(text[match.end():] if match else text)


async def words(input: Any):
    pause, pieces = plan(str(input))
    for piece in pieces:
        if pause:
            await asyncio.sleep(pause)
        yield piece


async def ask_name(input: Any) -> Any:
    """Asks for a name first; greets whoever the answer names."""
    if "a2a.task_id" not in current_run().metadata:
        raise InputRequired("what is your name?")
    return f"hello {input}"


class WordsExecutor(AgentExecutor):
    """`words` for the reference server: its words as chunks of one artifact."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        if context.current_task is None:
            submitted = new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED,
                                 history=[context.message])
            await event_queue.enqueue_event(submitted)
        await updater.start_work()
        pause, pieces = plan(context.get_user_input())
        for index, piece in enumerate(pieces):
            if pause:
                await asyncio.sleep(pause)
            await updater.add_artifact([new_text_part(piece)], artifact_id="output", name="output",
                                       append=index > 0, last_chunk=index == len(pieces) - 1)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()
