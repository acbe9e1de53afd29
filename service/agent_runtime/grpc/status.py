"""The one table from domain errors to gRPC status codes, and the abort that uses it."""

from __future__ import annotations

import asyncio
import logging

import grpc

from ..errors import (AgentError, AgentNotFound, AgentRuntimeError, Draining, EventsExpired, InputRequired,
                      InvalidInput, Overloaded, PermissionDenied, ProviderRejected, ProviderUnavailable, RunCancelled,
                      RunLost, RunNotFound, RunTimeout, ServerMisconfigured, StoreRequired, StoreUnavailable,
                      StreamOverflow, TooLarge, Unauthenticated)

logger = logging.getLogger("agent_runtime.grpc")

RUN_ID_KEY = "agent-runtime-run-id"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
NO_RETRY = "-1"  # a negative pushback: gRPC clients (grpc core's retry policy too) never retry the call

STATUS_CODES: dict[type[AgentRuntimeError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    AgentNotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Draining: grpc.StatusCode.UNAVAILABLE,
    RunTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    RunCancelled: grpc.StatusCode.CANCELLED,
    StreamOverflow: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AgentError: grpc.StatusCode.INTERNAL,
    ProviderUnavailable: grpc.StatusCode.UNAVAILABLE,
    ProviderRejected: grpc.StatusCode.INVALID_ARGUMENT,
    ServerMisconfigured: grpc.StatusCode.FAILED_PRECONDITION,
    RunNotFound: grpc.StatusCode.NOT_FOUND,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    StoreRequired: grpc.StatusCode.FAILED_PRECONDITION,
    RunLost: grpc.StatusCode.UNAVAILABLE,
    EventsExpired: grpc.StatusCode.OUT_OF_RANGE,
    InputRequired: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(exc: AgentRuntimeError) -> grpc.StatusCode:
    code = STATUS_CODES.get(type(exc))
    if code is not None:
        return code
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def trailing_metadata(exc: AgentRuntimeError) -> tuple[tuple[str, str], ...]:
    """The run id and a do-not-retry pushback for a run that started (it has a run id):
    retried, the agent would run again and repeat what it did; the retry hint of a
    refusal, which ran nothing (Overloaded; Draining retries at the client's backoff)."""
    if exc.run_id:
        return ((RUN_ID_KEY, exc.run_id), (RETRY_PUSHBACK_KEY, NO_RETRY))
    if isinstance(exc, Overloaded):
        return ((RETRY_PUSHBACK_KEY, str(int(exc.retry_after * 1000) or 1)),)
    return ()


async def abort(context: grpc.aio.ServicerContext, exc: AgentRuntimeError) -> None:
    """End the call with the status of `exc`; raises, as `context.abort` does. Trailing
    metadata set before (the trace id, say) is kept.

    Not `set_code` and a return, which is cheaper (no AbortError through every frame):
    a unary call that returns sends a message before its status, and a client that has
    received one never retries the call, so refusals would no longer be retried on
    another replica or after the server's pushback. A call gRPC has already ended
    (its deadline passed, its client left; also while the status was on its way)
    has no status to send: it is cancelled."""
    if context.done():
        raise asyncio.CancelledError
    metadata = trailing_metadata(exc)
    kept = context.trailing_metadata()
    if kept:
        metadata = (*kept, *metadata)
    try:
        await context.abort(status_code(exc), exc.message, metadata)
    except grpc.aio.AbortError as aborted:
        # gRPC keeps the error on the call's state, and its traceback holds the frames that
        # hold the call: one reference cycle per abort, left to the cyclic GC. Its
        # traceback is dropped once gRPC has caught it.
        asyncio.get_running_loop().call_soon(aborted.with_traceback, None)
        raise
    except Exception:  # gRPC ended the call while the status was being sent
        if not context.done():
            raise
        raise asyncio.CancelledError from None


async def write(context: grpc.aio.ServicerContext, message: object) -> None:
    """`context.write` for streamed replies. gRPC reports a call whose client has left
    (or reset it) as a failed write, sometimes before `context.done()` says so: that is
    the caller gone, so the call is cancelled (its run ends cancelled, as when the
    caller leaves between writes), not logged as a failure of the runtime."""
    try:
        await context.write(message)
    except asyncio.CancelledError:
        raise
    except Exception:
        raise asyncio.CancelledError from None


async def abort_unexpected(context: grpc.aio.ServicerContext, exc: Exception, run_id: str = "") -> None:
    """End the call for a failure of the runtime itself (`unexpected`); raises. A call
    gRPC has already ended (its client left while a message was on its way, which gRPC
    reports as a failed write) is cancelled, not logged as the runtime's failure."""
    if context.done():
        raise asyncio.CancelledError
    await abort(context, unexpected(exc, run_id))


def unexpected(exc: Exception, run_id: str = "") -> AgentError:
    """A failure of the runtime itself as the caller sees it: a safe message and the
    run id; the stack goes to the log (never to the caller)."""
    logger.error("call failed unexpectedly (run %s)", run_id or "not started", exc_info=exc)
    where = f" in run {run_id}" if run_id else ""
    return AgentError(f"internal error{where}; see the server log", run_id=run_id)
