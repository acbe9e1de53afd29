"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, loading proto/ at run time, no
generated code) calls Invoke, InvokeStream and Redpanda's InvokeAgent on a real server."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("node and the npm packages of tests/node are needed: run scripts/install-test-deps")
    return path


async def node_client(node: str, address: str, mode: str, request: dict) -> tuple[int, list[dict]]:
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "client.js"), address, mode, json.dumps(request),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (0, 2), err.decode()
    return proc.returncode, [json.loads(line) for line in out.splitlines()]


async def test_invoke_text(serve, node):
    server = await serve()
    rc, [reply] = await node_client(node, server.address, "invoke",
                                    {"input": {"text": "hello from node"}, "session_id": "n1"})
    assert rc == 0
    assert reply["output"]["text"] == "hello from node"
    assert reply["session_id"] == "n1" and len(reply["run_id"]) == 32


async def test_invoke_binary(serve, node):
    server = await serve()
    rc, [reply] = await node_client(node, server.address, "invoke",
                                    {"input": {"binary": {"data": {"$base64": "AAH/"}, "media_type": "x/y"}}})
    assert base64.b64decode(reply["output"]["binary"]["data"]) == b"\x00\x01\xff"
    assert reply["output"]["binary"]["media_type"] == "x/y"


async def test_invoke_stream_with_structured_input(serve, node):
    server = await serve()
    request = {"input": {"structured": {"structValue": {"fields": {
        "tool": {"stringValue": "reverse"},
        "arguments": {"structValue": {"fields": {"text": {"stringValue": "abc"}}}}}}}}}
    rc, events = await node_client(node, server.address, "stream", request)
    assert rc == 0
    assert [e["event"] for e in events] == ["started", "tool_started", "tool_ended", "ended"]
    assert events[-1]["ended"]["status"] == "RUN_STATUS_OK"
    assert events[-1]["ended"]["output"]["text"] == "cba"
    assert [int(e.get("seq", 0)) for e in events] == [0, 1, 2, 3]


async def test_stream_of_text_chunks(serve, node):
    server = await serve()
    rc, events = await node_client(node, server.address, "stream", {"input": {"text": "a b c"}})
    assert "".join(e["chunk"]["text"] for e in events if e["event"] == "chunk") == "a b c"


async def test_errors_reach_node_as_status_codes(serve, node):
    server = await serve()
    rc, [reply] = await node_client(node, server.address, "invoke", {"input": {"text": "x"}, "agent": "nope"})
    assert rc == 2
    assert reply["error"]["code"] == 5  # NOT_FOUND
    assert "no agent named 'nope'" in reply["error"]["details"]


async def test_redpanda_invoke_agent(serve, node):
    server = await serve()
    request = {"message": {"bytes": {"$base64": base64.b64encode(b"hi node").decode()},
                           "metadata": {"fields": {"k": {"string_value": "v"}}}}}
    rc, [reply] = await node_client(node, server.address, "redpanda", request)
    assert base64.b64decode(reply["message"]["bytes"]) == b"hi node"
    assert reply["message"]["metadata"]["fields"]["k"]["string_value"] == "v"
