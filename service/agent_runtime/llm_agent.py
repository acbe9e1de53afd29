"""The tool loop of a model-backed `Agent`.

Send the conversation (instructions, the session's history, the new input) to
the model; run the tools it asks for, concurrently when it asks for several,
and send their results back; stop at a final answer, or fail after
`max_turns` model calls. A tool's failure (bad arguments, an exception, an
unknown tool name) is told to the model, which may correct itself; it does not
fail the run. Streamed runs stream the model's text as chunks.

Events: llm.start/llm.end around each model call (llm.end also when it fails:
finish_reason "error" or "cancelled" and the `error` message), tool.start/tool.end around each
tool call, chunk for each piece of text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Sequence

from .context import RunContext, current_run
from .errors import AgentError, AgentRuntimeError, InvalidInput, MaxTurnsExceeded
from .events import EventType
from .hooks import call_hook
from .llm import ModelResponse, ToolCallRequest
from .payload import Blob
from .tools import Tool, ToolArgumentsError, tool_events

if TYPE_CHECKING:
    from .agent import Agent

logger = logging.getLogger("agent_runtime.agent")


async def run_agent(agent: "Agent", input: Any) -> Any:
    """Run `agent` on `input` within the current run (if any) and return its answer."""
    run = current_run()
    await call_hook(agent.hooks, "on_run_start", run, agent, input)
    output, error = None, None
    try:
        output = await _run(agent, input, run)
        return output
    except BaseException as exc:
        error = exc
        raise
    finally:
        await call_hook(agent.hooks, "on_run_end", run, agent, output, error)


async def _run(agent: "Agent", input: Any, run: RunContext | None) -> Any:
    session = run.runner.session if run is not None and run.runner is not None else None
    tools = list(agent.tools)
    for server in agent.mcp_servers:
        tools += await server.list_tools()
    by_name = _by_name(agent, tools)
    history = await session.history(agent.name) if session is not None else []
    turn = [user_message(input)]
    messages = ([{"role": "system", "content": agent.instructions}] if agent.instructions else [])
    messages += history + turn
    for _ in range(agent.max_turns):
        response = await _ask_model(agent, run, messages, by_name)
        reply = response.message()
        messages.append(reply)
        turn.append(reply)
        if response.tool_calls:
            results = await _call_tools(agent, run, by_name, response.tool_calls)
            messages += results
            turn += results
            continue
        try:
            output = agent.parse_output(response.text)
        except ValueError as exc:
            correction = {"role": "user", "content": (
                f"That answer does not match the required JSON schema: {exc}\n"
                "Answer again with only a JSON value that matches it.")}
            messages.append(correction)
            turn.append(correction)
            continue
        if session is not None:
            await session.remember(agent.name, turn)
        return output
    raise MaxTurnsExceeded(f"agent {agent.name!r} reached max_turns ({agent.max_turns}) "
                           "without a final answer")


def _by_name(agent: "Agent", tools: Sequence[Tool]) -> dict[str, Tool]:
    by_name: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in by_name:
            raise AgentError(f"agent {agent.name!r} has two tools named {tool.name!r} "
                             "(an MCP server's tools may clash with its own)")
        by_name[tool.name] = tool
    return by_name


def user_message(input: Any) -> dict[str, Any]:
    """The run's input as a user message: text as it is, images as image parts,
    structured data as JSON text."""
    if isinstance(input, str):
        return {"role": "user", "content": input}
    if isinstance(input, Blob):
        if not input.media_type.startswith("image/"):
            raise InvalidInput(f"this agent takes text, JSON or images, not {input.media_type}")
        url = f"data:{input.media_type};base64,{base64.b64encode(input.data).decode()}"
        return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    return {"role": "user", "content": describe(input)}


def describe(value: Any) -> str:
    """A value as the text a model reads: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    return json.dumps(value, default=str, ensure_ascii=False)


def _emit(run: RunContext | None, type: EventType, data: dict[str, Any]) -> None:
    if run is not None and run.runner is not None:
        run.runner.emit(type, data)


async def _ask_model(agent: "Agent", run: RunContext | None, messages: list[dict[str, Any]],
                     tools: dict[str, Tool]) -> ModelResponse:
    model = agent.chat_model
    await call_hook(agent.hooks, "on_llm_start", run, agent, messages)
    streamed = run is not None and run.streaming and run.runner is not None and agent.output_type is None
    _emit(run, EventType.LLM_START, {"model": model.name})
    response, finish_reason, error = None, "error", ""
    try:
        response = await model.complete(
            messages, tools=[_schema(tool) for tool in tools.values()],
            response_format=agent.response_format,
            on_text=run.runner.stream_chunk if streamed else None)
        finish_reason = response.finish_reason
    except asyncio.CancelledError:
        finish_reason = error = "cancelled"
        raise
    except AgentRuntimeError as exc:
        error = exc.message
        raise
    finally:
        _emit(run, EventType.LLM_END, {
            "model": model.name, "finish_reason": finish_reason, "error": error,
            "input_tokens": response.input_tokens if response else 0,
            "output_tokens": response.output_tokens if response else 0})
    await call_hook(agent.hooks, "on_llm_end", run, agent, response)
    return response


def _schema(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": tool.name, "description": tool.description, "parameters": tool.parameters}}


async def _call_tools(agent: "Agent", run: RunContext | None, tools: dict[str, Tool],
                      calls: Sequence[ToolCallRequest]) -> list[dict[str, Any]]:
    """Run the requested calls (concurrently when several); their results as tool messages."""
    if len(calls) == 1:
        return [await _call_tool(agent, run, tools, calls[0])]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_call_tool(agent, run, tools, call)) for call in calls]
    except BaseExceptionGroup as failed:  # a hook raised: fail the run with its own error
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _call_tool(agent: "Agent", run: RunContext | None, tools: dict[str, Tool],
                     call: ToolCallRequest) -> dict[str, Any]:
    tool = tools.get(call.name)
    if tool is None:
        content = (f"Error: there is no tool named {call.name!r}; the tools are: "
                   f"{', '.join(tools) or 'none'}")
        with contextlib.suppress(LookupError), tool_events(call.name, call.id, call.arguments):
            raise LookupError(content)
        return _tool_message(call, content)
    await call_hook(agent.hooks, "on_tool_start", run, agent, tool, call.arguments)
    result, error = None, None
    try:
        result = await tool.invoke(call.arguments, call_id=call.id)
        content = describe(result)
    except ToolArgumentsError as exc:
        error, content = exc, f"Error: {exc}"
    except Exception as exc:
        logger.info("tool %r of agent %r failed: %s: %s", tool.name, agent.name, type(exc).__name__, exc)
        error, content = exc, f"Error: {type(exc).__name__}: {exc}"
    await call_hook(agent.hooks, "on_tool_end", run, agent, tool, result, error)
    return _tool_message(call, content)


def _tool_message(call: ToolCallRequest, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": content}
