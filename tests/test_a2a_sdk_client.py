"""The official a2a-sdk client (its gRPC transport, its ClientFactory) against a real
`agent-runtime serve` subprocess, its card fetched from /.well-known/agent-card.json;
and the same tests against the a2a-sdk's own reference server with an executor that
does what the served agent does, so our behaviour is held to the SDK's."""

from __future__ import annotations

from typing import Any, AsyncIterator

import grpc
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types import a2a_pb2 as a2a
from a2a.utils.constants import TransportProtocol
from a2a_agents import reference_server
from conftest import free_port

State = a2a.TaskState


def _factory(streaming: bool = True) -> ClientFactory:
    return ClientFactory(ClientConfig(streaming=streaming, supported_protocol_bindings=[TransportProtocol.GRPC],
                                      grpc_channel_factory=grpc.aio.insecure_channel))


class Target:
    """A server under test and how a client is made for it."""

    def __init__(self, card_url: str = "", card: a2a.AgentCard | None = None) -> None:
        self.card_url = card_url
        self.card = card
        self.clients: list[Any] = []

    async def client(self, streaming: bool = True) -> Any:
        factory = _factory(streaming)
        client = (await factory.create_from_url(self.card_url) if self.card_url else factory.create(self.card))
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


@pytest.fixture(params=["agent-runtime", "a2a-sdk-reference"])
async def target(request, server_process) -> AsyncIterator[Target]:
    if request.param == "agent-runtime":
        metrics_port = free_port()
        server_process("--agent", "a2a_agents:words", "--metrics-port", str(metrics_port))
        target = Target(card_url=f"http://127.0.0.1:{metrics_port}")
        yield target
        await target.close()
        return
    server, card, handler = await reference_server()
    target = Target(card=card)
    yield target
    await target.close()
    await handler.aclose()
    await server.stop(grace=0)


def message(text: str, **fields: Any) -> a2a.SendMessageRequest:
    return a2a.SendMessageRequest(message=a2a.Message(message_id=f"m-{id(text)}", role=a2a.Role.ROLE_USER,
                                                      parts=[a2a.Part(text=text)], **fields))


def artifact_text(task: a2a.Task) -> str:
    return "".join(part.text for artifact in task.artifacts for part in artifact.parts)


async def _first(stream: AsyncIterator[a2a.StreamResponse], kind: str) -> a2a.StreamResponse:
    async for response in stream:
        if response.WhichOneof("payload") == kind:
            return response
    raise AssertionError(f"the stream ended without a {kind}")


async def test_send_returns_the_completed_task(target):
    client = await target.client(streaming=False)
    [response] = [r async for r in client.send_message(message("one two three"))]
    task = response.task
    assert task.status.state == State.TASK_STATE_COMPLETED
    assert artifact_text(task) == "one two three"
    assert task.id and task.context_id


async def test_stream_artifact_chunks_join_to_the_output(target):
    client = await target.client()
    responses = [r async for r in client.send_message(message("alpha beta gamma delta"))]
    updates = [r.artifact_update for r in responses if r.WhichOneof("payload") == "artifact_update"]
    assert "".join(part.text for u in updates for part in u.artifact.parts) == "alpha beta gamma delta"
    assert [u.append for u in updates] == [False, True, True, True]
    states = [r.status_update.status.state for r in responses if r.WhichOneof("payload") == "status_update"]
    assert State.TASK_STATE_WORKING in states and states[-1] == State.TASK_STATE_COMPLETED


async def test_get_and_list_find_the_task(target):
    client = await target.client(streaming=False)
    [response] = [r async for r in client.send_message(message("find me"))]
    task_id = response.task.id
    got = await client.get_task(a2a.GetTaskRequest(id=task_id))
    assert got.status.state == State.TASK_STATE_COMPLETED and artifact_text(got) == "find me"
    listed = await client.list_tasks(a2a.ListTasksRequest(include_artifacts=True))
    assert task_id in [task.id for task in listed.tasks]
    same_context = await client.list_tasks(a2a.ListTasksRequest(context_id=response.task.context_id))
    assert [task.id for task in same_context.tasks] == [task_id]


async def test_cancel_a_slow_task(target):
    client = await target.client()
    stream = client.send_message(message("pause=0.5 " + "word " * 40))
    first = await _first(stream, "artifact_update")
    task_id = first.artifact_update.task_id
    cancelled = await client.cancel_task(a2a.CancelTaskRequest(id=task_id))
    assert cancelled.status.state == State.TASK_STATE_CANCELED
    got = await client.get_task(a2a.GetTaskRequest(id=task_id))
    assert got.status.state == State.TASK_STATE_CANCELED
    await stream.aclose()


async def test_a_second_client_subscribes_to_a_running_task(target):
    sender, watcher = await target.client(), await target.client()
    text = "pause=0.1 " + " ".join(f"w{i}" for i in range(12))
    stream = sender.send_message(message(text))
    first = await _first(stream, "artifact_update")
    task_id = first.artifact_update.task_id
    seen = [r async for r in watcher.subscribe(a2a.SubscribeToTaskRequest(id=task_id))]
    assert seen[0].WhichOneof("payload") == "task" and seen[0].task.id == task_id
    later = "".join(part.text for r in seen[1:] if r.WhichOneof("payload") == "artifact_update"
                    for part in r.artifact_update.artifact.parts)
    expected = " ".join(f"w{i}" for i in range(12))
    assert expected.endswith(later) and artifact_text(seen[0].task) + later == expected
    assert seen[-1].status_update.status.state == State.TASK_STATE_COMPLETED
    rest = [r async for r in stream]
    assert rest[-1].status_update.status.state == State.TASK_STATE_COMPLETED


async def test_unknown_task_is_the_sdks_task_not_found(target):
    from a2a.utils.errors import TaskNotFoundError

    client = await target.client()
    with pytest.raises(TaskNotFoundError):
        await client.get_task(a2a.GetTaskRequest(id="no-such-task"))


async def test_cancel_of_a_finished_task_is_not_cancelable(target):
    from a2a.utils.errors import TaskNotCancelableError

    client = await target.client(streaming=False)
    [response] = [r async for r in client.send_message(message("done"))]
    with pytest.raises(TaskNotCancelableError):
        await client.cancel_task(a2a.CancelTaskRequest(id=response.task.id))
