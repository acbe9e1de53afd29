"""A local OTLP trace receiver that counts the spans it is sent.

Contender (c) exports every span here; the count proves they were exported,
not dropped. Usage: `python -m bench.servers.otlp_sink [--protocol http/protobuf|grpc]`
(OTLP/HTTP by default, as contender (c) exports: see contenders.tracing_env);
announces its address, answers `stats` with {"spans": n, "requests": n}.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.server
import signal
import threading
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .sidechannel import announce, new_counts, serve_stats

_EMPTY_RESPONSE = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class SpanCount:
    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        spans = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        with self._lock:
            self.requests += 1
            self.spans += spans

    def stats(self) -> dict[str, int]:
        return {"spans": self.spans, "requests": self.requests}


class CountingTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, count: SpanCount) -> None:
        self.count = count

    async def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.count.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve_grpc(count: SpanCount) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(CountingTraceService(count), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def serve_http(count: SpanCount) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as exporters use it

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            ok = self.path == "/v1/traces"
            if ok:
                count.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(_EMPTY_RESPONSE)))
            self.end_headers()
            self.wfile.write(_EMPTY_RESPONSE)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    announce("127.0.0.1", server.server_address[1])
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=("http/protobuf", "grpc"), default="http/protobuf")
    args = parser.parse_args()
    count = SpanCount()
    serve_stats(new_counts(), count.stats)
    if args.protocol == "grpc":
        asyncio.run(serve_grpc(count))
    else:
        serve_http(count)


if __name__ == "__main__":
    main()
