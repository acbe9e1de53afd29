"""Server-side status counting for gRPC handlers: the proof that calls succeeded.

h2load sees HTTP 200 for every gRPC call, failed or not (the status is in the
trailers), so the servers count final statuses themselves. The same wrapper
goes around the bare grpc.aio handlers and the runtime's, so its small cost
cancels out of every ratio. A handler that returns normally ends with the code
it set on its context (grpc-status 0 when it set none); one that aborts has set
the code it is counted under.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Mapping

import grpc

_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]


def _returned(context: grpc.aio.ServicerContext) -> int:
    code = context.code()
    if code is None:
        return 0
    return code.value[0] if isinstance(code, grpc.StatusCode) else int(code)


def _code(context: grpc.aio.ServicerContext, error: BaseException) -> int:
    """The status a failed call ended with: the code it aborted with; CANCELLED when the
    client went away (its task is cancelled, its stream closed); UNKNOWN for any other exception."""
    code = context.code()
    if code is not None:
        return code.value[0] if isinstance(code, grpc.StatusCode) else int(code)
    gone = isinstance(error, (asyncio.CancelledError, GeneratorExit)) or context.cancelled()
    return _CANCELLED if gone else _UNKNOWN


def _counted_behavior(behavior: Any, counts: list[int]) -> Any:
    if inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for message in behavior(request, context):
                    yield message
            except BaseException as error:
                counts[_code(context, error)] += 1
                raise
            counts[_returned(context)] += 1

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response = await behavior(request, context)
        except BaseException as error:
            counts[_code(context, error)] += 1
            raise
        counts[_returned(context)] += 1
        return response

    return call


def counted(handler: grpc.RpcMethodHandler, counts: list[int]) -> grpc.RpcMethodHandler:
    """`handler` with every finished call counted in `counts` by its status code."""
    field = (("stream_" if handler.request_streaming else "unary_")
             + ("stream" if handler.response_streaming else "unary"))
    return handler._replace(**{field: _counted_behavior(getattr(handler, field), counts)})


def counted_all(handlers: Mapping[str, grpc.RpcMethodHandler], counts: list[int]) -> dict[str, grpc.RpcMethodHandler]:
    return {name: counted(handler, counts) for name, handler in handlers.items()}
