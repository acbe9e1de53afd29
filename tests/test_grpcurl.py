"""Real grpcurl, through reflection only: list, describe, invoke, health."""

from __future__ import annotations

import asyncio
import json


async def grpcurl_run(grpcurl: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(grpcurl, "-plaintext", *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_list_describe_invoke_health(serve, grpcurl):
    server = await serve()
    address = server.address
    services = (await grpcurl_run(grpcurl, address, "list")).split()
    assert services == ["agent_runtime.v1.AgentRuntime", "grpc.health.v1.Health",
                        "grpc.reflection.v1alpha.ServerReflection", "lf.a2a.v1.A2AService",
                        "redpanda.runtime.v1alpha1.AgentRuntime",
                        "redpanda.runtime.v1alpha1.Runtime"]
    described = await grpcurl_run(grpcurl, address, "describe", "agent_runtime.v1.AgentRuntime")
    assert "rpc InvokeStream ( .agent_runtime.v1.InvokeRequest ) returns ( stream .agent_runtime.v1.InvokeEvent )" in described
    message = await grpcurl_run(grpcurl, address, "describe", "agent_runtime.v1.Payload")
    assert "google.protobuf.Value structured = 2;" in message
    reply = json.loads(await grpcurl_run(grpcurl, "-d", '{"input": {"text": "hi there"}}', address,
                                         "agent_runtime.v1.AgentRuntime/Invoke"))
    assert reply["output"] == {"text": "hi there"} and reply["agent"] == "echo"
    stream = await grpcurl_run(grpcurl, "-d", '{"input": {"text": "hi there"}}', address,
                               "agent_runtime.v1.AgentRuntime/InvokeStream")
    events = [json.loads(chunk) for chunk in stream.replace("}\n{", "}\x00{").split("\x00")]
    assert [next(k for k in e if k not in ("run_id", "seq", "time")) for e in events] == [
        "started", "chunk", "chunk", "ended"]
    assert events[-1]["ended"]["status"] == "RUN_STATUS_OK"
    health = json.loads(await grpcurl_run(grpcurl, address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}


async def test_reflection_can_be_switched_off(serve, grpcurl):
    server = await serve(reflection=False)
    proc = await asyncio.create_subprocess_exec(grpcurl, "-plaintext", server.address, "list",
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0 and b"does not support the reflection API" in err


async def test_describe_answers_a_method_of_every_served_service(serve, grpcurl):
    """grpcio-reflection alone answers "Symbol not found" for a method (grpc/grpc#34743)."""
    server = await serve()
    address = server.address
    methods = {
        "agent_runtime.v1.AgentRuntime.Invoke": "rpc Invoke ( .agent_runtime.v1.InvokeRequest )",
        "grpc.health.v1.Health.Check": "rpc Check ( .grpc.health.v1.HealthCheckRequest )",
        "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo": "rpc ServerReflectionInfo ( stream",
        "redpanda.runtime.v1alpha1.AgentRuntime.InvokeAgent": "rpc InvokeAgent (",
        "redpanda.runtime.v1alpha1.Runtime.InvokeAgent": "rpc InvokeAgent (",
        "lf.a2a.v1.A2AService.SendMessage": "rpc SendMessage ( .lf.a2a.v1.SendMessageRequest )",
    }
    services = set((await grpcurl_run(grpcurl, address, "list")).split())
    assert services == {method.rsplit(".", 1)[0] for method in methods}
    for method, rpc in methods.items():
        described = await grpcurl_run(grpcurl, address, "describe", method)
        assert f"{method} is a method:" in described and rpc in described, described
    listed = await grpcurl_run(grpcurl, address, "list", "agent_runtime.v1.AgentRuntime")
    assert "agent_runtime.v1.AgentRuntime.Invoke" in listed.split()


async def test_describe_of_an_unknown_method_is_not_found(serve, grpcurl):
    server = await serve()
    proc = await asyncio.create_subprocess_exec(grpcurl, "-plaintext", server.address, "describe",
                                                "agent_runtime.v1.AgentRuntime.Nope",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0 and b"Symbol not found: agent_runtime.v1.AgentRuntime.Nope" in err
