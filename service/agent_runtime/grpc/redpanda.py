"""Redpanda's agent runtime protocol (`redpanda.runtime.v1alpha1`), served beside our own API.

One servicer answers both names the protocol has had: `AgentRuntime` (current)
and `Runtime` (its first version). Like the AgentRuntime servicer, each call is
one run through the SessionManager (its session named by its run id), so both
protocols share the same admission limits. What it does better than Redpanda's
own runtime: bytes values at any depth work, the Message metadata reaches the agent
(`RunContext.metadata`), a run that fails is answered on `AgentRuntime` with the
input message flagged by the protocol's `error` field (so a pipeline can route
it), and SIGTERM drains. Failures before a run starts (bad request, over
capacity, draining) are gRPC statuses on both, with the usual retry hint; while
admission refuses every run, a call is refused before its request is read
(`unread_handlers`), as our own Invoke is.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc

from .._proto.redpanda.runtime.v1alpha1 import agent_pb2 as pb
from .._proto.redpanda.runtime.v1alpha1 import runtime_pb2
from ..errors import AgentRuntimeError, InvalidInput
from ..events import RunStatus
from ..runner import Runner
from ..session import SessionManager
from . import messages
from .redpanda_messages import failed_message, message_input, message_metadata, output_message
from .redpanda_trace import SpanCollector, recorder
from .servicer import _timeout, unread
from .status import RUN_ID_KEY, abort, abort_unexpected

AGENT_RUNTIME_SERVICE = pb.DESCRIPTOR.services_by_name["AgentRuntime"].full_name
RUNTIME_SERVICE = runtime_pb2.DESCRIPTOR.services_by_name["Runtime"].full_name


class RedpandaRuntimeServicer:
    """InvokeAgent for one served agent (`agent`, or the only one when empty).

    With the server's OpenTelemetry `tracer_provider` (an SDK one), callers get the
    run's real spans; without, spans built from the run's events.
    """

    def __init__(self, manager: SessionManager, agent: str = "", *, tracer_provider: Any = None) -> None:
        self.manager = manager
        self.agent = manager.agent(agent or None).name
        self.traced = hasattr(tracer_provider, "add_span_processor")
        if self.traced:
            tracer_provider.add_span_processor(SpanCollector())

    async def InvokeAgent(self, request: Any, context: grpc.aio.ServicerContext) -> pb.InvokeAgentResponse:
        """The current protocol: a failed run comes back in `message.error`."""
        return await self._invoke(request, context, failure_in_message=True)

    async def InvokeAgentV0(self, request: Any, context: grpc.aio.ServicerContext) -> pb.InvokeAgentResponse:
        """The first protocol version (service `Runtime`): a failed run is a gRPC status."""
        return await self._invoke(request, context, failure_in_message=False)

    async def _invoke(self, request: Any, context: grpc.aio.ServicerContext, *,
                      failure_in_message: bool) -> pb.InvokeAgentResponse:
        runner = None
        try:
            if isinstance(request, messages.MalformedRequest):
                raise InvalidInput(f"request is not a valid InvokeAgentRequest: {request.reason}")
            spans = recorder(request, self.traced)
            message = request.message
            input, metadata = message_input(message), message_metadata(message)
            with spans.scope() if spans is not None else contextlib.nullcontext():
                # A run of no session of its own: its session is named by its run id, as a
                # run on our own API that names none.
                manager = self.manager
                async with Runner(manager, manager.agent(self.agent), input, "", "", metadata,
                                  _timeout(None, context.time_remaining())) as runner:
                    if spans is not None:
                        spans.record(runner)
                    context.set_trailing_metadata((*(context.trailing_metadata() or ()),
                                                   (RUN_ID_KEY, runner.run_id)))
                    try:
                        output = await runner.result()
                        reply = output_message(output, message, runner.run_id)
                    except AgentRuntimeError as exc:
                        if not (failure_in_message and _ran(runner)):
                            raise
                        reply = failed_message(message, exc.message)
            return pb.InvokeAgentResponse(message=reply, trace=spans.trace() if spans is not None else None)
        except AgentRuntimeError as exc:
            await abort(context, exc)
        except Exception as exc:
            await abort_unexpected(context, exc, runner.run_id if runner is not None else "")


def _ran(runner: Runner) -> bool:
    """The run itself failed (agent error, time limit, unsendable output), as opposed
    to being refused or cancelled by its caller."""
    return runner.status is not None and runner.status is not RunStatus.CANCELLED


def method_handlers(servicer: RedpandaRuntimeServicer) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    """Handlers by service name, with request parsing that maps undecodable bytes to INVALID_ARGUMENT."""
    return _handlers(grpc.unary_unary_rpc_method_handler, servicer.InvokeAgent, servicer.InvokeAgentV0)


def unread_handlers(servicer: RedpandaRuntimeServicer) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    """Stand-ins for both InvokeAgents while admission refuses every run (gated by
    `Admission.closed`, as `servicer.unread_handlers` are): request-streaming handlers,
    so a call is refused before gRPC reads its request."""
    manager, agent = servicer.manager, servicer.agent
    return _handlers(grpc.stream_unary_rpc_method_handler, unread(manager, agent, servicer.InvokeAgent),
                     unread(manager, agent, servicer.InvokeAgentV0))


def _handlers(make: Any, invoke: Any, invoke_v0: Any) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    def handler(method: Any) -> dict[str, grpc.RpcMethodHandler]:
        return {"InvokeAgent": make(method, request_deserializer=messages.parser(pb.InvokeAgentRequest),
                                    response_serializer=pb.InvokeAgentResponse.SerializeToString)}

    return {AGENT_RUNTIME_SERVICE: handler(invoke), RUNTIME_SERVICE: handler(invoke_v0)}
