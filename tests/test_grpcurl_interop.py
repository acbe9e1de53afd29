"""Real grpcurl with JSON input: our API unary and streaming with structured input, and
Redpanda's InvokeAgent (both service names), all through reflection."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

import interop_agents


async def grpcurl_json(grpcurl: str, address: str, method: str, request: dict, *args: str) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        grpcurl, "-plaintext", "-format-error", *args, "-d", json.dumps(request), address, method,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    decoder, text, messages = json.JSONDecoder(), out.decode().strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].lstrip()
    return messages


async def test_unary_with_structured_json_input(serve, grpcurl):
    server = await serve(interop_agents.whoami)
    [reply] = await grpcurl_json(grpcurl, server.address, "agent_runtime.v1.AgentRuntime/Invoke",
                                 {"input": {"structured": {"order": 42, "items": ["a", "b"]}},
                                  "metadata": {"tenant": "acme"}, "timeout": "5s"})
    assert reply["output"]["structured"]["input"] == {"order": 42, "items": ["a", "b"]}
    assert reply["output"]["structured"]["metadata"] == {"tenant": "acme"}


async def test_streaming_with_structured_json_input(serve, grpcurl):
    server = await serve()
    events = await grpcurl_json(grpcurl, server.address, "agent_runtime.v1.AgentRuntime/InvokeStream",
                                {"input": {"structured": {"tool": "reverse", "arguments": {"text": "grpcurl"}}}})
    kinds = [next(k for k in e if k not in ("run_id", "seq", "time")) for e in events]
    assert kinds == ["started", "tool_started", "tool_ended", "ended"]
    assert events[-1]["ended"]["output"] == {"text": "lrucprg"}


@pytest.mark.parametrize("service", ["AgentRuntime", "Runtime"])
async def test_redpanda_invoke_agent_with_json(serve, grpcurl, service):
    server = await serve(interop_agents.whoami)
    blob = base64.b64encode(b"\x00\xff").decode()
    request = {"message": {
        "structured": {"struct_value": {"fields": {"blob": {"bytes_value": blob},
                                                   "n": {"integer_value": "7"}}}},
        "metadata": {"fields": {"source": {"string_value": "grpcurl"}}}},
        "trace_context": {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
                          "trace_flags": "01"}}
    [reply] = await grpcurl_json(grpcurl, server.address, f"redpanda.runtime.v1alpha1.{service}/InvokeAgent",
                                 request)
    out = reply["message"]["structured"]["struct_value"]["fields"]
    assert out["input"]["struct_value"]["fields"]["blob"] == {"bytes_value": blob}
    assert out["input"]["struct_value"]["fields"]["n"] == {"integer_value": "7"}
    assert out["metadata"]["struct_value"]["fields"]["source"] == {"string_value": "grpcurl"}
    assert reply["trace"]["spans"][0]["name"] == "invoke_agent whoami"
