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
