"""A2A's gRPC binding (`lf.a2a.v1.A2AService`), served beside our own API for every agent.

A thin servicer over the SessionManager, as the AgentRuntime servicer is: each
message is one run (admitted, limited, observed and traced as an Invoke), and the
run's events become A2A task updates (a2a_tasks.py). The `tenant` of a request
(or its metadata key `agent`) picks the agent, defaulting as Invoke does. The
caller's bearer token (a hash of it, never the token) is the runs' user id, and
tasks are visible to that user only. Failures before a task exists (bad input,
an unknown agent, no capacity) are gRPC statuses with A2A error details
(a2a_status.py); once a task exists, how its run ended is the task's state.
Push notifications are not offered: those methods answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from contextlib import aclosing
from typing import Any, AsyncIterator

import grpc
from a2a.types import a2a_pb2 as a2a
from a2a.utils.errors import (A2AError, InvalidParamsError, PushNotificationNotSupportedError,
                              TaskNotCancelableError, TaskNotFoundError, UnsupportedOperationError)
from google.protobuf import json_format, message_factory

from ..errors import AgentError, AgentRuntimeError, Draining, InputRequired, InvalidInput, RunCancelled
from ..runner import Runner
from ..session import SessionManager
from . import messages
from .a2a_parts import message_input
from .a2a_status import abort
from .a2a_tasks import TERMINAL, State, TaskRecord, TaskStore
from .instrument import invocation_metadata
from .servicer import _timeout
from .status import unexpected, write

SERVICE_NAME = a2a.DESCRIPTOR.services_by_name["A2AService"].full_name
AGENT_KEY = "agent"  # request metadata key that names the agent when `tenant` does not
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
CANCEL_SLACK = 1.0  # seconds CancelTask waits for a cancelled task beyond the agent's cancel_grace


def caller(context: grpc.aio.ServicerContext) -> str:
    """The caller's user id: a hash of its bearer token ('' without one)."""
    for key, value in invocation_metadata(context):
        if key == "authorization" and isinstance(value, str):
            return "bearer:" + hashlib.sha256(value.partition(" ")[2].strip().encode()).hexdigest()[:16]
    return ""


def _metadata_text(struct: Any) -> dict[str, str]:
    """The string entries of a request's metadata, handed to the agent as run metadata."""
    return {key: value for key, value in json_format.MessageToDict(struct).items() if isinstance(value, str)}


def _answers(method: Any) -> Any:
    """`method` under A2A's error model: a request that could not be decoded, A2A's errors
    and the runtime's end the call with their status and details; anything else is an
    internal error, its stack in the log and not in the reply."""
    @functools.wraps(method)
    async def answer(self: "A2AServicer", request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if isinstance(request, messages.MalformedRequest):
                raise InvalidInput(f"request is not a valid {method.__name__} request: {request.reason}")
            return await method(self, request, context)
        except (AgentRuntimeError, A2AError) as exc:
            await abort(context, exc)
        except Exception as exc:
            if context.done():  # gRPC ended the call (its client left): nothing to report
                raise asyncio.CancelledError from None
            await abort(context, unexpected(exc))

    return answer


class A2AServicer:
    def __init__(self, manager: SessionManager, card: a2a.AgentCard, tasks: TaskStore) -> None:
        self.manager = manager
        self.card = card
        self.tasks = tasks

    async def _task(self, task_id: str, context: grpc.aio.ServicerContext) -> TaskRecord:
        """The caller's task `task_id`; TaskNotFoundError when there is none (or not the caller's)."""
        if not task_id:
            raise InvalidParamsError("the task id is required")
        record = await self.tasks.get(task_id)
        if record is None or record.owner != caller(context):
            raise TaskNotFoundError(f"no task {task_id!r} (tasks are kept for a while, for their caller only)")
        return record

    async def _exchange(self, request: Any, context: grpc.aio.ServicerContext,
                        started: list[TaskRecord]) -> AsyncIterator[a2a.StreamResponse]:
        """One message: the run it starts (or continues its task with) and the updates of
        that task, whose record is put in `started`. Closed early (its caller went
        away), the run is cancelled and the task ends `canceled`."""
        message = request.message
        record = None
        metadata = messages.checked_metadata({**_metadata_text(request.metadata),
                                              **_metadata_text(message.metadata)})
        if message.task_id:
            record = await self._task(message.task_id, context)
            if record.state != State.TASK_STATE_INPUT_REQUIRED or record.answering:
                raise UnsupportedOperationError(
                    f"task {record.id} is {State.Name(record.state)}{' and being answered' if record.answering else ''}"
                    ": only a task waiting for input takes another message; start a new task for a new request")
            if message.context_id and message.context_id != record.task.context_id:
                raise InvalidParamsError(f"context {message.context_id!r} is not the context of task {record.id}")
            agent, session_id = record.agent, record.task.context_id
            metadata["a2a.task_id"] = record.id
        else:
            agent = request.tenant or metadata.get(AGENT_KEY, "")
            session_id = message.context_id
            if len(session_id) > messages.MAX_ID_CHARS:
                raise InvalidInput(f"context_id is longer than {messages.MAX_ID_CHARS} characters")
        answered = record
        if answered is not None:  # one answer at a time: claimed before the first await
            answered.answering = True
        try:
            input = message_input(message)
            user = caller(context)
            manager = self.manager
            runner = Runner(manager, manager.agent(agent or None), input, user, session_id, metadata,
                            _timeout(None, context.time_remaining()))
            async with runner:
                if record is None:
                    record = TaskRecord(runner.run_id, runner.session_id, user, runner.agent.name)
                started.append(record)
                await self.tasks.put(record)
                yield record.start(runner, message)
                try:
                    try:
                        async with aclosing(runner.event_batches()) as batches:
                            async for batch in batches:
                                for event in batch:
                                    for response in record.on_event(event):
                                        yield response
                        state, text = await self._outcome(runner, input)
                    except AgentError as exc:  # output with no A2A form: the run is cancelled as it is left
                        state, text = State.TASK_STATE_FAILED, exc.message
                    yield record.finish(state, text)
                finally:
                    if record.runner is runner:  # the caller went away, or the run could not be followed
                        record.finish(State.TASK_STATE_CANCELED, "the caller went away before the run ended")
                    await self.tasks.put(record)
        finally:
            if answered is not None:
                answered.answering = False

    async def _outcome(self, runner: Runner, input: Any) -> tuple[int, str]:
        """The state a run leaves its task in, and the message that goes with it."""
        try:
            await runner.result()
        except InputRequired as exc:
            if isinstance(input, str):  # the question joins the session's history, as an answer would
                await runner.session.remember(runner.agent.name, [{"role": "user", "content": input},
                                                                  {"role": "assistant", "content": exc.message}])
            return State.TASK_STATE_INPUT_REQUIRED, exc.message
        except (RunCancelled, Draining) as exc:
            return State.TASK_STATE_CANCELED, exc.message
        except AgentRuntimeError as exc:
            return State.TASK_STATE_FAILED, exc.message
        return State.TASK_STATE_COMPLETED, ""

    @_answers
    async def SendMessage(self, request: Any, context: grpc.aio.ServicerContext) -> a2a.SendMessageResponse:
        """The task once its run has ended (or waits for input)."""
        started: list[TaskRecord] = []
        async with aclosing(self._exchange(request, context, started)) as responses:
            async for _ in responses:
                pass
        configuration = request.configuration
        history = configuration.history_length if configuration.HasField("history_length") else None
        return a2a.SendMessageResponse(task=started[0].snapshot(history))

    @_answers
    async def SendStreamingMessage(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """The task, then its updates as its run goes."""
        async with aclosing(self._exchange(request, context, [])) as responses:
            async for response in responses:
                await write(context, response)

    @_answers
    async def GetTask(self, request: Any, context: grpc.aio.ServicerContext) -> a2a.Task:
        record = await self._task(request.id, context)
        return record.snapshot(request.history_length if request.HasField("history_length") else None)

    @_answers
    async def ListTasks(self, request: Any, context: grpc.aio.ServicerContext) -> a2a.ListTasksResponse:
        size = request.page_size if request.HasField("page_size") else DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidParamsError(f"page_size must be 1-{MAX_PAGE_SIZE}")
        try:
            start = int(request.page_token or 0)
        except ValueError:
            raise InvalidParamsError("page_token is not one this server gave") from None
        after = request.status_timestamp_after.ToNanoseconds() if request.HasField("status_timestamp_after") else None
        user = caller(context)
        found = [record for record in await self.tasks.list() if record.owner == user
                 and (not request.context_id or record.task.context_id == request.context_id)
                 and (not request.status or record.state == request.status)
                 and (after is None or record.task.status.timestamp.ToNanoseconds() > after)]
        history = request.history_length if request.HasField("history_length") else None
        page = found[start:start + size]
        return a2a.ListTasksResponse(
            tasks=[record.snapshot(history, request.include_artifacts) for record in page],
            next_page_token=str(start + size) if start + size < len(found) else "",
            page_size=size, total_size=len(found))

    @_answers
    async def CancelTask(self, request: Any, context: grpc.aio.ServicerContext) -> a2a.Task:
        record = await self._task(request.id, context)
        if record.state in TERMINAL:
            raise TaskNotCancelableError(f"task {record.id} has ended ({State.Name(record.state)})")
        runner = record.runner
        if runner is None:  # waiting for input: no run to stop
            record.finish(State.TASK_STATE_CANCELED, "cancelled while waiting for input")
            await self.tasks.put(record)
        else:
            self.manager.cancel_run(runner.run_id)
            # The agent ends or is abandoned within cancel_grace; the task ends when the call
            # that runs it has written the run's last events (it may wait on its client).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(record.wait_idle(), self.manager.cancel_grace + CANCEL_SLACK)
        return record.snapshot()

    @_answers
    async def SubscribeToTask(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        record = await self._task(request.id, context)
        if record.runner is None:
            raise UnsupportedOperationError(f"task {record.id} is {State.Name(record.state)}: there is no run "
                                            "to follow; GetTask gives its state")
        async with aclosing(record.subscribe()) as responses:
            async for response in responses:
                await write(context, response)

    async def GetExtendedAgentCard(self, request: Any, context: grpc.aio.ServicerContext) -> a2a.AgentCard:
        return self.card

    async def push_notifications(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context, PushNotificationNotSupportedError(
            "push notifications are not offered by this server (its agent card says push_notifications: "
            "false): follow a task with SendStreamingMessage or SubscribeToTask"), grpc.StatusCode.UNIMPLEMENTED)


def method_handlers(servicer: A2AServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Handlers of every method of the service, with request parsing that maps undecodable
    bytes to INVALID_ARGUMENT; the push-notification methods share one refusal."""
    handlers = {}
    for method in a2a.DESCRIPTOR.services_by_name["A2AService"].methods:
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name, servicer.push_notifications),
            request_deserializer=messages.parser(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString)
    return handlers
