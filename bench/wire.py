"""Request bodies for h2load: gRPC length-prefixed messages and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from agent_runtime._proto.agent_runtime.v1 import runtime_pb2 as pb

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
JSON_HEADERS = ("content-type: application/json",)
INVOKE = "/agent_runtime.v1.AgentRuntime/Invoke"
INVOKE_STREAM = "/agent_runtime.v1.AgentRuntime/InvokeStream"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message: flag byte 0, 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def invoke_body(text: str, agent: str = "") -> bytes:
    return grpc_frame(pb.InvokeRequest(agent=agent, input=pb.Payload(text=text)).SerializeToString())


def health_body(service: str = "") -> bytes:
    from grpc_health.v1 import health_pb2

    return grpc_frame(health_pb2.HealthCheckRequest(service=service).SerializeToString())


def json_body(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


def write(directory: Path, name: str, body: bytes) -> Path:
    path = directory / name
    path.write_bytes(body)
    return path
