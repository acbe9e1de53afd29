"""The AgentRuntime servicer: a thin skin over SessionManager.

Each RPC is one session and one run; domain errors become status codes in
`status.abort` and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

import grpc

from .._proto.agent_runtime.v1 import runtime_pb2 as pb
from ..errors import AgentRuntimeError, InvalidInput, PermissionDenied, RunLost, RunNotFound, StoreRequired, TooLarge
from ..events import RunStatus
from ..config import ServerConfig
from ..runner import Runner
from ..session import SessionManager
from ..store.idempotency import Claims, MemoryClaims, held_by, holder
from ..store.runs import MemoryRuns, RunRecord, RunRegistry
from ..store.streams import RedisEvents
from . import auth, messages
from .status import abort, abort_unexpected, write

logger = logging.getLogger("agent_runtime.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AgentRuntime"].full_name
# Seconds past its queue_timeout by which a run that holds an idempotency key has started.
START_GRACE = 5.0


def _timeout(requested: float | None, remaining: float | None) -> float | None:
    """The run's time limit: the request's, bounded by the client's deadline, `remaining`
    seconds away (None: no deadline).

    The run ends a little before that deadline (1/10 of the time left, at most
    10 ms), so its DEADLINE_EXCEEDED with the run id still reaches the client: at
    the deadline itself gRPC has ended the call and no status can be sent."""
    if remaining is None:
        return requested
    remaining -= min(remaining / 10, 0.01)
    return remaining if requested is None else min(requested, remaining)


def unread(manager: SessionManager, agent: str, method: Any) -> Any:
    """`method` as a gated method's stand-in (request-streaming, so gRPC has read
    nothing when it runs): for `agent`, or the only one when empty, the call is refused
    unread while admission refuses every run; its request is read and handed to `method`
    only if a slot has come free since the call arrived."""
    async def stand_in(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        refused = manager.admission.refusal("", manager.agent(agent or None).name)
        if refused is not None:
            await abort(context, refused)
        request = await context.read()
        if request is grpc.aio.EOF:
            await abort(context, InvalidInput("the call carried no request message"))
        return await method(request, context)

    return stand_in


def check_owner(runner: Runner, user_id: str, operator: bool) -> None:
    """A run started with a user_id is only that user's (or the operator's) to act on."""
    if runner.user_id and user_id != runner.user_id and not operator:
        raise PermissionDenied(f"run {runner.run_id} belongs to another user_id; only it, or the operator, "
                               "may act on it")


class AgentRuntimeServicer:
    def __init__(self, manager: SessionManager, operator: Any = None,
                 max_message_bytes: int = ServerConfig.max_message_bytes, runs: RunRegistry | None = None,
                 events: RedisEvents | None = None, claims: Claims | None = None) -> None:
        """`operator`: the operator's token (auth.operator_token), None when there is none;
        `max_message_bytes`: the largest reply gRPC will send; `runs` answers GetRun: the
        shared store's registry, or this replica's (made and added to the manager's sinks
        when none is given); `events` (the store's run events) answers WatchRun; `claims`
        holds idempotency keys."""
        self.manager = manager
        self.operator = operator
        self.max_message_bytes = max_message_bytes
        if runs is None:
            runs = MemoryRuns(messages.encoded_event)
            manager.add_sink(runs)
        self.runs = runs
        self.events = events
        self.claims = claims if claims is not None else MemoryClaims()
        self._background: set[asyncio.Task] = set()

    def _reply(self, runner: Runner, output: Any) -> pb.InvokeResponse:
        """Invoke's reply, made before the run ends: one gRPC would not send (too large)
        fails the run with the status its caller gets, instead of a run logged ok."""
        reply = messages.invoke_response(runner, output)
        size = reply.ByteSize()
        if size > self.max_message_bytes:
            raise TooLarge(f"the reply ({size} bytes) is over the server's max_message_bytes "
                           f"({self.max_message_bytes})", run_id=runner.run_id)
        return reply

    async def _start_background(self, runner: Runner) -> pb.InvokeResponse:
        """Admit the run (a refusal is the caller's, as for any run), then let it go on in a
        task of its own, and answer with its ids."""
        await runner.__aenter__()
        task = asyncio.get_running_loop().create_task(runner.result())
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return messages.started_response(runner)

    async def _idempotent(self, request: Any, runner: Runner) -> pb.InvokeResponse:
        """The first run with its idempotency key (per user_id) runs; a repeat within the key's
        TTL answers as that run does: its ids at once when in the background, else its result
        once it has ended."""
        key, user_id = request.idempotency_key, runner.user_id
        mine = holder(runner.run_id, runner.agent.name, runner.session_id)
        first = await self.claims.claim(user_id, key, mine)
        if first is None:
            try:
                if request.background:
                    return await self._start_background(runner)
                return await runner.result(self._reply)
            except BaseException:
                if runner.context is None:  # refused before it began: the key is free again
                    await self.claims.release(user_id, key, mine)
                raise
        run_id, agent, session_id = held_by(first)
        if request.background:
            return pb.InvokeResponse(run_id=run_id, agent=agent, session_id=session_id)
        return messages.ended_response(await self._end_of(run_id), agent, session_id)

    async def _end_of(self, run_id: str) -> bytes:
        """The encoded end event of run `run_id`, begun by another call (on any replica), read
        from the run registry every 5 to 100 ms. RunLost when the run is still unknown once it
        could have waited its queue_timeout and started."""
        loop = asyncio.get_running_loop()
        unknown_until = loop.time() + self.manager.admission.queue_timeout + START_GRACE
        delay = 0.005
        while True:
            record = await self.runs.get(run_id)
            if record is not None and record.end is not None:
                return record.end
            if record is None and loop.time() > unknown_until:
                raise RunLost(f"run {run_id}, which holds this idempotency key, did not start; retry",
                              run_id=run_id)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _background_done(self, task: asyncio.Task) -> None:
        """Forget a background run; how it ended is in its end event (GetRun), not here."""
        self._background.discard(task)
        if not task.cancelled():
            task.exception()

    def _run(self, request: Any, context: grpc.aio.ServicerContext, streamed: bool = False) -> Runner:
        """The run `request` asks for, in the caller's session (a Session has nothing to
        enter or leave, so none is made). It is admitted as it starts: while every slot and
        the queue are taken, calls of a one-agent server are refused before they are read
        (`unread_handlers`), so only a per-user cap or a several-agent server refuses here."""
        agent, session_id, user_id, input, metadata, timeout = messages.run_request(request)
        if streamed and request.idempotency_key:
            raise InvalidInput("idempotency_key is for Invoke (a background Invoke, then WatchRun, streams "
                               "an idempotent run)")
        if request.background:  # a background run outlives its call: the deadline does not bound it
            if streamed:
                raise InvalidInput("background runs are started with Invoke; read their events with WatchRun")
        else:
            remaining = context.time_remaining()
            if remaining is not None:  # without a deadline, `_timeout` has nothing to do: a call less
                timeout = _timeout(timeout, remaining)
        manager = self.manager
        return Runner(manager, manager.agent(agent), input, user_id, session_id, metadata, timeout)

    async def Invoke(self, request: Any, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
        runner = None
        try:
            runner = self._run(request, context)
            if request.idempotency_key:
                return await self._idempotent(request, runner)
            if request.background:
                return await self._start_background(runner)
            return await runner.result(self._reply)
        except AgentRuntimeError as exc:
            await abort(context, exc)
        except Exception as exc:
            await abort_unexpected(context, exc, runner.run_id if runner is not None else "")

    async def InvokeStream(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        runner = None
        try:
            async with self._run(request, context, streamed=True) as runner:
                async for batch in runner.event_batches():
                    for event in batch:
                        await write(context, messages.event_message(event))
                if runner.status is not RunStatus.OK:
                    await runner.result()  # raises the run's error, for its status code
        except AgentRuntimeError as exc:
            await abort(context, exc)
        except Exception as exc:
            await abort_unexpected(context, exc, runner.run_id if runner is not None else "")

    async def ListAgents(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ListAgentsResponse:
        return pb.ListAgentsResponse(agents=[messages.agent_info(spec) for spec in self.manager.agents.values()])

    async def CancelRun(self, request: Any, context: grpc.aio.ServicerContext) -> pb.CancelRunResponse:
        """Cancels a run on this replica: its owner's (the user_id it was started with) or,
        with the operator's token, anyone's; False when it is not running here."""
        try:
            run_id, user_id = messages.cancel_request(request)
            runner = self.manager.runs.get(run_id)
            if runner is None:
                return pb.CancelRunResponse(cancelled=False)
            check_owner(runner, user_id, auth.is_operator(self.operator, context.invocation_metadata()))
        except AgentRuntimeError as exc:
            await abort(context, exc)
        return pb.CancelRunResponse(cancelled=runner.cancel())

    async def _record(self, request: Any) -> RunRecord:
        """The record of the run `request` names. A run started with a user_id is NOT_FOUND for
        any other user_id, as an unknown one is: a caller learns nothing of other users' runs,
        not even that they exist."""
        if isinstance(request, messages.MalformedRequest) or not request.run_id:
            raise InvalidInput("run_id is required")
        if len(request.run_id) > messages.MAX_ID_CHARS:
            raise InvalidInput(f"run_id is longer than {messages.MAX_ID_CHARS} characters")
        record = await self.runs.get(request.run_id)
        if record is None or (record.user_id and record.user_id != request.user_id):
            raise RunNotFound(f"no run {request.run_id!r} is known")
        return record

    async def GetRun(self, request: Any, context: grpc.aio.ServicerContext) -> pb.RunInfo:
        try:
            return messages.run_info(await self._record(request))
        except AgentRuntimeError as exc:
            await abort(context, exc)

    async def WatchRun(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Writes the events as the store keeps them, already encoded (no response serializer)."""
        try:
            if self.events is None:
                raise StoreRequired("WatchRun needs the replicas to share a store (store_url)")
            record = await self._record(request)
            after = request.after_seq if request.HasField("after_seq") else -1
            async for event in self.events.watch(record, after, lambda: self.runs.get(record.run_id)):
                await write(context, event)
        except AgentRuntimeError as exc:
            await abort(context, exc)


def method_handlers(servicer: AgentRuntimeServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Handlers with request parsing that maps undecodable bytes to INVALID_ARGUMENT.
    WatchRun answers with events already encoded: it has no response serializer."""
    parse = messages.parser
    return {
        "Invoke": grpc.unary_unary_rpc_method_handler(
            servicer.Invoke, request_deserializer=parse(pb.InvokeRequest),
            response_serializer=pb.InvokeResponse.SerializeToString),
        "InvokeStream": grpc.unary_stream_rpc_method_handler(
            servicer.InvokeStream, request_deserializer=parse(pb.InvokeRequest),
            response_serializer=pb.InvokeEvent.SerializeToString),
        "ListAgents": grpc.unary_unary_rpc_method_handler(
            servicer.ListAgents, request_deserializer=parse(pb.ListAgentsRequest),
            response_serializer=pb.ListAgentsResponse.SerializeToString),
        "CancelRun": grpc.unary_unary_rpc_method_handler(
            servicer.CancelRun, request_deserializer=parse(pb.CancelRunRequest),
            response_serializer=pb.CancelRunResponse.SerializeToString),
        "GetRun": grpc.unary_unary_rpc_method_handler(
            servicer.GetRun, request_deserializer=parse(pb.GetRunRequest),
            response_serializer=pb.RunInfo.SerializeToString),
        "WatchRun": grpc.unary_stream_rpc_method_handler(
            servicer.WatchRun, request_deserializer=parse(pb.WatchRunRequest)),
    }


def unread_handlers(servicer: AgentRuntimeServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Stand-ins for Invoke and InvokeStream while admission refuses every run (gated by
    `Admission.closed`): request-streaming handlers, so gRPC does not read the
    request before they run, and shedding load costs less than serving it. For a server
    of one agent only, the agent a refusal is counted for: so while it refuses, a request
    that names an unknown agent, or is not valid, is refused too (it is not read)."""
    parse = messages.parser(pb.InvokeRequest)
    return {
        "Invoke": grpc.stream_unary_rpc_method_handler(
            unread(servicer.manager, "", servicer.Invoke), request_deserializer=parse,
            response_serializer=pb.InvokeResponse.SerializeToString),
        "InvokeStream": grpc.stream_stream_rpc_method_handler(
            unread(servicer.manager, "", servicer.InvokeStream), request_deserializer=parse,
            response_serializer=pb.InvokeEvent.SerializeToString),
    }
