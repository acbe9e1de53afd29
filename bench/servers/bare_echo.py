"""Contender (a): a bare grpc.aio echo server, the floor of what Python gRPC costs.

It speaks the runtime's own AgentRuntime messages, so the same request bytes
drive both: Invoke echoes the input text; InvokeStream sends one chunk per
word. Like `agent-runtime serve` it runs on uvloop when that is installed.
Usage: `python -m bench.servers.bare_echo [--port N] [--loop uvloop|asyncio]`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any, AsyncIterator

import grpc

from agent_runtime._proto.agent_runtime.v1 import runtime_pb2 as pb

from .counting import counted_all
from .sidechannel import announce, new_counts, serve_stats

SERVICE = "agent_runtime.v1.AgentRuntime"


async def invoke(request: Any, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
    return pb.InvokeResponse(output=pb.Payload(text=request.input.text))


async def invoke_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.InvokeEvent]:
    for word in request.input.text.split():
        yield pb.InvokeEvent(chunk=pb.Payload(text=word))


def handlers(invoke: Any = invoke, invoke_stream: Any = invoke_stream) -> dict[str, grpc.RpcMethodHandler]:
    """Plain handlers of the two Invoke methods (echo by default; tests hand in others)."""
    return {
        "Invoke": grpc.unary_unary_rpc_method_handler(
            invoke, request_deserializer=pb.InvokeRequest.FromString,
            response_serializer=pb.InvokeResponse.SerializeToString),
        "InvokeStream": grpc.unary_stream_rpc_method_handler(
            invoke_stream, request_deserializer=pb.InvokeRequest.FromString,
            response_serializer=pb.InvokeEvent.SerializeToString),
    }


async def serve(host: str, port: int) -> None:
    counts = new_counts()
    methods = counted_all(handlers(), counts)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_registered_method_handlers(SERVICE, methods)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    serve_stats(counts)
    announce(host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=0)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.new_event_loop()
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=lambda: new_loop(args.loop)) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
