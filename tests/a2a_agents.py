"""The agents the A2A tests talk to: as runtime agents (`a2a_agents:words`, served by
`agent-runtime serve`) and the same behaviour as an a2a-sdk `AgentExecutor` in the
SDK's own reference server (`reference_server`), so both are held to one client test.

`words` streams the words of its input one by one, each with its trailing space;
an input starting `pause=S ` waits S seconds before each word.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
from a2a.helpers.proto_helpers import new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events.event_queue_v2 import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.tasks import InMemoryTaskStore
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import a2a_pb2 as a2a
from a2a.types import a2a_pb2_grpc
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


async def reference_server() -> tuple[grpc.aio.Server, a2a.AgentCard, DefaultRequestHandler]:
    """The a2a-sdk's own server (its request handler, task store and gRPC handler) on
    127.0.0.1:0 with `WordsExecutor`: (server, card, handler); stop the server and
    `aclose` the handler."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    card = a2a.AgentCard(
        name="words", description="streams words", version="1.0",
        supported_interfaces=[a2a.AgentInterface(url=f"127.0.0.1:{port}", protocol_binding="GRPC",
                                                 protocol_version="1.0")],
        capabilities=a2a.AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"], default_output_modes=["text/plain"],
        skills=[a2a.AgentSkill(id="words", name="words", description="streams words", tags=["words"])])
    handler = DefaultRequestHandler(WordsExecutor(), InMemoryTaskStore(), card)
    a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), server)
    await server.start()
    return server, card, handler
