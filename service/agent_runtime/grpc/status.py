"""The one table from domain errors to gRPC status codes, and the call status set from it."""

from __future__ import annotations

import asyncio
import logging

import grpc

from ..errors import (AgentError, AgentNotFound, AgentRuntimeError, Draining, InvalidInput,
                      Overloaded, ProviderRejected, ProviderUnavailable, RunCancelled, RunTimeout,
                      Unauthenticated)

logger = logging.getLogger("agent_runtime.grpc")

RUN_ID_KEY = "agent-runtime-run-id"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

STATUS_CODES: dict[type[AgentRuntimeError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    AgentNotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Draining: grpc.StatusCode.UNAVAILABLE,
    RunTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    RunCancelled: grpc.StatusCode.CANCELLED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    AgentError: grpc.StatusCode.INTERNAL,
    ProviderUnavailable: grpc.StatusCode.UNAVAILABLE,
    ProviderRejected: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_code(exc: AgentRuntimeError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def trailing_metadata(exc: AgentRuntimeError) -> tuple[tuple[str, str], ...]:
    """The run id of a failed run, and the retry hint of a refused one."""
    metadata = []
    if exc.run_id:
        metadata.append((RUN_ID_KEY, exc.run_id))
    if isinstance(exc, Overloaded):
        metadata.append((RETRY_PUSHBACK_KEY, str(max(1, round(exc.retry_after * 1000)))))
    return tuple(metadata)


def set_status(context: grpc.aio.ServicerContext, exc: AgentRuntimeError) -> None:
    """Have the call end with the status of `exc` when its handler returns, which it
    should do next. Trailing metadata set before (the trace id, say) is kept.

    Not `context.abort`: its AbortError, raised through every frame of the handler and
    of grpc.aio, made refusing a call cost more than serving one. (A unary call that
    returns with an error status also sends an empty message, which clients discard,
    as they do for any server that uses `set_code`.) A call gRPC has already ended
    (its deadline passed, its client left) has no status to send: it is cancelled."""
    if context.done():
        raise asyncio.CancelledError
    context.set_code(status_code(exc))
    context.set_details(exc.message)
    context.set_trailing_metadata((*(context.trailing_metadata() or ()), *trailing_metadata(exc)))


def unexpected(exc: Exception, run_id: str = "") -> AgentError:
    """A failure of the runtime itself as the caller sees it: a safe message and the
    run id; the stack goes to the log (never to the caller)."""
    logger.error("call failed unexpectedly (run %s)", run_id or "not started", exc_info=exc)
    where = f" in run {run_id}" if run_id else ""
    return AgentError(f"internal error{where}; see the server log", run_id=run_id)
