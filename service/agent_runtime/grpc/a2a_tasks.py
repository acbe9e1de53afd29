"""A2A tasks: each follows the runs it is made of, and recent ones are kept.

A task is a run (task id = the id of its first run, context id = the session id);
a task the agent left `input-required` goes on in a new run of the same session
when its caller answers. A `TaskRecord` holds the task's snapshot (an a2a `Task`),
turns the run's events into A2A stream responses and hands them to the task's
subscribers. Records are found through a `TaskStore`: `RecentTasks` keeps a bounded
number in process; a shared store (the run registry) can stand in for it later.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, AsyncIterator, Protocol

from a2a.types import a2a_pb2 as a2a
from google.protobuf import json_format

from ..context import new_id
from ..errors import AgentError, Overloaded
from ..events import EventType, RunEvent
from ..runner import Runner
from . import messages
from .a2a_parts import output_part

State = a2a.TaskState
TERMINAL = frozenset((State.TASK_STATE_COMPLETED, State.TASK_STATE_FAILED, State.TASK_STATE_CANCELED,
                      State.TASK_STATE_REJECTED))
# Events a subscriber may fall behind by before it is dropped (it can subscribe again).
SUBSCRIBER_BACKLOG = 1024
_END = None  # what a subscriber's queue ends with
_LAGGED = object()


def _status(state: int, text: str = "") -> a2a.TaskStatus:
    status = a2a.TaskStatus(state=state)
    status.timestamp.GetCurrentTime()
    if text:
        status.message.CopyFrom(a2a.Message(message_id=new_id(), role=a2a.Role.ROLE_AGENT,
                                            parts=[a2a.Part(text=text)]))
    return status


def event_metadata(event: RunEvent) -> dict[str, Any]:
    """An event as status-update metadata: the runtime's own InvokeEvent in its JSON form."""
    return {"agent_runtime.event": json_format.MessageToDict(messages.event_message(event))}


class TaskRecord:
    """One task: its snapshot, its owner (the caller's user id) and agent, the run it
    is in now (None between runs and once it has ended) and its subscribers."""

    def __init__(self, task_id: str, context_id: str, owner: str, agent: str) -> None:
        self.task = a2a.Task(id=task_id, context_id=context_id, status=_status(State.TASK_STATE_SUBMITTED))
        self.owner = owner
        self.agent = agent
        self.runner: Runner | None = None
        self.answering = False  # a message to this task (waiting for input) is being admitted
        self.updated = time.time()
        self._subscribers: set[asyncio.Queue] = set()
        self._chunked = False
        # The text of the snapshot's last part while a run's chunks are text: joined when the
        # snapshot is read, not once a chunk (a token) as it comes.
        self._text: list[str] | None = None
        self._text_pending = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def state(self) -> int:
        return self.task.status.state

    def start(self, runner: Runner, message: a2a.Message) -> a2a.StreamResponse:
        """The task enters `runner`'s run with the caller's `message`; the task as it stands."""
        self._join_text()
        self.runner = runner
        self._chunked, self._text = False, None
        self._idle.clear()
        turn = self.task.history.add()
        turn.CopyFrom(message)
        turn.task_id, turn.context_id = self.task.id, self.task.context_id
        if not turn.message_id:
            turn.message_id = new_id()
        self._touch()
        return a2a.StreamResponse(task=self.task)

    def on_event(self, event: RunEvent) -> list[a2a.StreamResponse]:
        """The stream responses of one run event (none for run.end, see `finish`); they
        are applied to the snapshot and handed to the subscribers."""
        kind = event.type
        if kind is EventType.CHUNK:
            responses = [self._artifact(event.data["chunk"], last=False)]
        elif kind is EventType.RUN_END:
            output = event.data["output"]
            responses = [] if self._chunked or output is None or event.data["error"] else [
                self._artifact(output, last=True)]
        else:
            responses = [self._status_update(State.TASK_STATE_WORKING, "", event_metadata(event))]
        for response in responses:
            self._publish(response)
        return responses

    def finish(self, state: int, text: str = "") -> a2a.StreamResponse:
        """The run ended: the task moves to `state` (its message `text`); subscribers end."""
        response = self._status_update(state, text, {})
        self._publish(response)
        self._join_text()
        self.runner = None
        for queue in self._subscribers:
            queue.put_nowait(_END)
        self._subscribers.clear()
        self._idle.set()
        return response

    async def wait_idle(self) -> None:
        """Until the task's current run has ended."""
        await self._idle.wait()

    def snapshot(self, history_length: int | None = None, artifacts: bool = True) -> a2a.Task:
        self._join_text()
        task = a2a.Task()
        task.CopyFrom(self.task)
        if history_length is not None:
            kept = list(task.history)[-history_length:] if history_length else []
            del task.history[:]
            task.history.extend(kept)
        if not artifacts:
            del task.artifacts[:]
        return task

    async def subscribe(self) -> AsyncIterator[a2a.StreamResponse]:
        """The task as it stands, then its updates until its run ends."""
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            yield a2a.StreamResponse(task=self.snapshot())
            while True:
                response = await queue.get()
                if response is _END:
                    return
                if response is _LAGGED:
                    raise Overloaded(f"this subscriber fell more than {SUBSCRIBER_BACKLOG} events behind "
                                     f"task {self.id} and was dropped; subscribe again", retry_after=0)
                yield response
        finally:
            self._subscribers.discard(queue)

    def _publish(self, response: a2a.StreamResponse) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() >= SUBSCRIBER_BACKLOG:
                self._subscribers.discard(queue)
                queue.put_nowait(_LAGGED)
            else:
                queue.put_nowait(response)

    def _join_text(self) -> None:
        """Write the text chunks joined so far into the snapshot's last part."""
        if self._text_pending:
            self.task.artifacts[-1].parts[-1].text = "".join(self._text)
            self._text_pending = False

    def _touch(self) -> None:
        self.updated = time.time()

    def _status_update(self, state: int, text: str, metadata: dict[str, Any]) -> a2a.StreamResponse:
        status = _status(state, text)
        self.task.status.CopyFrom(status)
        self._touch()
        update = a2a.TaskStatusUpdateEvent(task_id=self.task.id, context_id=self.task.context_id, status=status)
        if metadata:
            update.metadata.update(metadata)
        return a2a.StreamResponse(status_update=update)

    def _artifact(self, output: Any, last: bool) -> a2a.StreamResponse:
        """An artifact update of the run's output: its first chunk starts the run's
        artifact (named by the run id), later ones are appended to it."""
        try:
            part = output_part(output)
        except (TypeError, ValueError) as exc:
            raise AgentError(f"the agent's output cannot be sent: {exc}", run_id=self.runner.run_id) from None
        append = self._chunked
        self._chunked = True
        artifact_id = self.runner.run_id
        text = part.WhichOneof("content") == "text"
        if append and text and self._text is not None:  # joins the last part's text
            self._text.append(part.text)
            self._text_pending = True
        else:
            self._join_text()
            if append:
                self.task.artifacts[-1].parts.append(part)
            else:
                self.task.artifacts.add(artifact_id=artifact_id, name="output", parts=[part])
            self._text = [part.text] if text else None
        self._touch()
        update = a2a.TaskArtifactUpdateEvent(
            task_id=self.task.id, context_id=self.task.context_id, append=append, last_chunk=last,
            artifact=a2a.Artifact(artifact_id=artifact_id, name="output", parts=[part]))
        return a2a.StreamResponse(artifact_update=update)


class TaskStore(Protocol):
    """Where tasks are found by id, and listed; a store shared by replicas can stand in."""

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def put(self, record: TaskRecord) -> None: ...

    async def list(self) -> list[TaskRecord]:
        """Every task kept, most recently updated first."""
        ...


class RecentTasks:
    """The `max_tasks` most recently updated tasks, in process; tasks in a run are
    never dropped (admission bounds how many there are)."""

    def __init__(self, max_tasks: int = 1000) -> None:
        if max_tasks < 1:
            raise ValueError("max_tasks must be >= 1")
        self.max_tasks = max_tasks
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    async def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    async def put(self, record: TaskRecord) -> None:
        records = self._records
        records[record.id] = record
        records.move_to_end(record.id)
        if len(records) > self.max_tasks:
            for task_id in [task_id for task_id, kept in records.items() if kept.runner is None]:
                del records[task_id]
                if len(records) <= self.max_tasks:
                    break

    async def list(self) -> list[TaskRecord]:
        return sorted(self._records.values(), key=lambda record: record.updated, reverse=True)
