"""Tools from a real MCP server (tests/mcp_facts_server.py, official `mcp` SDK),
over stdio and streamable HTTP, called by a model-backed Agent."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest
from conftest import runtime_pb2, stub

from agent_runtime import Agent, MCPServer, ProviderUnavailable, SessionManager

FACTS = str(Path(__file__).with_name("mcp_facts_server.py"))


@pytest.fixture
async def facts_http():
    """The facts MCP server over streamable HTTP; its URL."""
    proc = await asyncio.create_subprocess_exec(sys.executable, FACTS, "--http",
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("port "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        proc.kill()
        await proc.wait()


def facts_agent(fake_llm, *servers: MCPServer) -> Agent:
    return Agent(name="facts", model="openai/gpt-test", base_url=fake_llm.base_url, api_key="k",
                 mcp_servers=servers)


async def ask(server, question: str) -> list[runtime_pb2.InvokeEvent]:
    return [e async for e in stub(server).InvokeStream(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text=question)))]


async def test_stdio_mcp_tool_is_called(fake_llm, serve, channel_to):
    fake_llm.call(("capital", {"country": "Norway"})).reply("Oslo it is")
    server = await serve(facts_agent(fake_llm, MCPServer(command=sys.executable, args=[FACTS])))
    events = await ask(channel_to(server.address), "Capital of Norway?")
    assert events[-1].ended.output.text == "Oslo it is"
    tool_ended = [e.tool_ended for e in events if e.HasField("tool_ended")]
    assert [(t.tool, t.status, t.result.string_value) for t in tool_ended] == [
        ("capital", runtime_pb2.RUN_STATUS_OK, "Oslo")]
    offered = {t["function"]["name"]: t["function"] for t in fake_llm.requests[0]["tools"]}
    assert set(offered) == {"capital", "refuse", "server_pid", "caller_header", "crash"}
    assert offered["capital"]["description"] == "The capital city of a country."
    assert offered["capital"]["parameters"]["required"] == ["country"]
    assert fake_llm.requests[1]["messages"][-1]["content"] == "Oslo"


async def test_http_mcp_tool_and_its_failure(fake_llm, serve, channel_to, facts_http):
    fake_llm.call(("capital", {"country": "France"}), ("refuse", {"reason": "not today"})).reply("Paris")
    server = await serve(facts_agent(fake_llm, MCPServer(url=facts_http, tools=["capital", "refuse"])))
    events = await ask(channel_to(server.address), "Capital of France?")
    assert events[-1].ended.output.text == "Paris"
    results = {m["tool_call_id"]: m["content"] for m in fake_llm.requests[1]["messages"] if m["role"] == "tool"}
    assert results["call_0"] == "Paris"
    assert results["call_1"].startswith("Error: MCPToolError:") and "not today" in results["call_1"]


async def test_mcp_tool_filter_and_headers(fake_llm, facts_http):
    fake_llm.call(("caller_header", {"name": "authorization"})).reply("ok")
    agent = facts_agent(fake_llm, MCPServer(url=facts_http, tools=["capital", "caller_header"],
                                            headers={"authorization": "Bearer t"}))
    try:
        await agent.run("hi")
    finally:
        await agent.aclose()
    assert [t["function"]["name"] for t in fake_llm.requests[0]["tools"]] == ["capital", "caller_header"]
    assert fake_llm.requests[1]["messages"][-1]["content"] == "Bearer t"


async def test_unreachable_mcp_server_is_unavailable(fake_llm, serve, channel_to):
    port = fake_llm.port  # a port where no MCP server listens
    await fake_llm.close()
    server = await serve(facts_agent(fake_llm, MCPServer(url=f"http://127.0.0.1:{port}/mcp", timeout=5)))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details().startswith(f"cannot use MCP server http://127.0.0.1:{port}/mcp")
    assert server.manager.admission.in_use == 0


def test_mcp_server_needs_one_transport():
    with pytest.raises(ValueError, match="exactly one of `url`"):
        MCPServer()
    with pytest.raises(ValueError, match="exactly one of `url`"):
        MCPServer(url="http://x/mcp", command="python")


async def ask_in_python(manager: SessionManager, question: str = "?") -> str:
    async with manager.session() as session, session.run(question) as runner:
        return await runner.result()


async def test_runs_share_one_stdio_server_and_reconnect_when_it_dies(fake_llm):
    manager = SessionManager(facts_agent(fake_llm, MCPServer(command=sys.executable, args=[FACTS])))
    try:
        pids = []
        for script in ("server_pid", "server_pid", "crash", "server_pid"):
            fake_llm.call((script, {})).reply("ok")
            await ask_in_python(manager)
            pids.append(fake_llm.requests[-1]["messages"][-1]["content"])
    finally:
        await manager.aclose()
    first, second, crashed, after = pids
    assert first == second and first.isdigit()
    assert crashed == "Error: MCPError: Connection closed"
    assert after.isdigit() and after != first


async def test_mcp_server_that_never_answers(fake_llm):
    hung = MCPServer(command=sys.executable, args=["-c", "import time; time.sleep(60)"], timeout=0.5)
    agent = facts_agent(fake_llm, hung)
    try:
        with pytest.raises(ProviderUnavailable, match=r"MCP server .* did not answer within 0.5s"):
            await agent.run("x")
    finally:
        await agent.aclose()
    assert fake_llm.requests == []
