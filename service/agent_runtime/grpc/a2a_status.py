"""A2A's gRPC error model: a status whose `grpc-status-details-bin` carries a
`google.rpc.Status` with an `ErrorInfo` (and a `RetryInfo` for a refusal over capacity).

A2A's own errors (task not found, not cancelable...) keep the code and reason
the a2a-sdk gives them, in the `a2a-protocol.org` domain, so its client raises
its own exception classes; the runtime's errors keep the code of the one table
in status.py, with a reason of their own in the `agent-runtime` domain (invalid
input is A2A's INVALID_PARAMS). The run id and retry pushback go along in the
trailing metadata as on every other service.
"""

from __future__ import annotations

import asyncio
import re

import grpc
from a2a.utils.errors import A2A_ERROR_MAPPING, A2AError, InvalidParamsError
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from ..errors import AgentRuntimeError, InvalidInput, Overloaded
from .status import status_code, trailing_metadata

A2A_DOMAIN = "a2a-protocol.org"
RUNTIME_DOMAIN = "agent-runtime"
DETAILS_KEY = "grpc-status-details-bin"


def _reason(exc: AgentRuntimeError) -> str:
    """`Overloaded` -> OVERLOADED, `AgentNotFound` -> AGENT_NOT_FOUND."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def described(exc: AgentRuntimeError | A2AError, code: grpc.StatusCode | None = None
              ) -> tuple[grpc.StatusCode, str, tuple[tuple[str, object], ...]]:
    """The code (`code` when given), message and trailing metadata (details included)
    that `exc` ends a call with."""
    metadata: tuple[tuple[str, object], ...] = ()
    if isinstance(exc, InvalidInput):
        exc = InvalidParamsError(exc.message)
    if isinstance(exc, A2AError):
        mapping = A2A_ERROR_MAPPING.get(type(exc))
        code = code or (grpc.StatusCode[mapping.grpc_status] if mapping else grpc.StatusCode.INTERNAL)
        info = error_details_pb2.ErrorInfo(reason=mapping.reason if mapping else "INTERNAL_ERROR",
                                           domain=A2A_DOMAIN)
        message, details = exc.message, [_packed(info)]
    else:
        code, message = code or status_code(exc), exc.message
        details = [_packed(error_details_pb2.ErrorInfo(reason=_reason(exc), domain=RUNTIME_DOMAIN,
                                                       metadata={"run_id": exc.run_id} if exc.run_id else {}))]
        if isinstance(exc, Overloaded):
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(exc.retry_after * 1000) or 1)
            details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
        metadata = trailing_metadata(exc)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return code, message, (*metadata, (DETAILS_KEY, status.SerializeToString()))


async def abort(context: grpc.aio.ServicerContext, exc: AgentRuntimeError | A2AError,
                code: grpc.StatusCode | None = None) -> None:
    """End the call with the status of `exc` (or `code`) and its details; raises, as
    `context.abort` does. A call gRPC has already ended has no status to send: it is cancelled."""
    if context.done():
        raise asyncio.CancelledError
    code, message, metadata = described(exc, code)
    await context.abort(code, message, (*(context.trailing_metadata() or ()), *metadata))
