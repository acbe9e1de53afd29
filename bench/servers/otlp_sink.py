"""A local OTLP/gRPC trace receiver that counts the spans it is sent.

Contender (c) exports every span here; the count proves they were exported,
not dropped. Usage: `python -m bench.servers.otlp_sink`; announces its address,
answers `stats` with {"spans": n, "requests": n}.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .sidechannel import announce, new_counts, serve_stats


class CountingTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0

    async def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests += 1
        self.spans += sum(len(scope.spans) for resource in request.resource_spans
                          for scope in resource.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve() -> None:
    service = CountingTraceService()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    serve_stats(new_counts(), lambda: {"spans": service.spans, "requests": service.requests})
    announce("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(serve())
