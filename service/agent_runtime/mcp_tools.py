"""Tools from MCP servers, through the official `mcp` SDK.

`MCPServer(url="http://host:port/mcp")` (streamable HTTP) or
`MCPServer(command="python", args=["server.py"])` (stdio) in an Agent's
`mcp_servers`: the first run connects and lists the server's tools, which the
model then sees as ordinary `Tool`s; later and concurrent runs share that
connection (a stdio server is started once, not per run). A connection that
fails or is lost is made again by the next run; `aclose()` (called when the
server stops) ends it. `mcp` is imported when an MCPServer is made, not with
the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import ProviderUnavailable
from .tools import Tool

logger = logging.getLogger("agent_runtime.mcp")

MAX_TOOL_PAGES = 100
CLOSE_TIMEOUT = 10.0  # the SDK's stdio shutdown waits up to ~6s for the server to exit


class MCPToolError(Exception):
    """The MCP server reported the tool call as failed; the message is its text."""


@dataclass(frozen=True)
class MCPServer:
    """Where an agent's MCP tools come from: `url` (streamable HTTP) or `command` (stdio).

    `tools` keeps only the named tools; `headers` go with every HTTP request;
    `env` is added to the stdio server's (minimal) environment; `timeout` bounds
    connecting and each tool call.
    """

    url: str = ""
    command: str = ""
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tools: Sequence[str] | None = None
    timeout: float = 30.0
    _connections: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection]" = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False, compare=False)
    _retired: set[asyncio.Task] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.command):
            raise ValueError("an MCPServer needs exactly one of `url` (streamable HTTP) or `command` (stdio)")
        if self.timeout <= 0:
            raise ValueError("MCPServer timeout must be > 0")
        try:
            import mcp.client.client  # noqa: F401  (loaded now, not inside the first run)
        except ImportError:
            raise ValueError("MCP tools need the `mcp` package: pip install 'agent-runtime[mcp]'") from None
        object.__setattr__(self, "args", tuple(self.args))

    @property
    def label(self) -> str:
        return self.url or " ".join([self.command, *self.args])

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        import mcp
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        if self.command:
            return mcp.StdioServerParameters(command=self.command, args=list(self.args),
                                             env=dict(self.env) or None, cwd=self.cwd)
        if not self.headers:
            return self.url
        http = create_mcp_http_client(headers=dict(self.headers))
        stack.push_async_callback(http.aclose)
        return streamable_http_client(self.url, http_client=http)

    async def list_tools(self) -> list[Tool]:
        """The server's tools, over this event loop's connection (made when there is none)."""
        loop = asyncio.get_running_loop()
        connection = self._connections.get(loop)
        if connection is None or connection.stale or connection.task.done():
            connection = self._connections[loop] = _Connection(self, loop)
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(connection.ready)
        except TimeoutError:
            connection.retire()
            connection.task.cancel()
            raise ProviderUnavailable(f"MCP server {self.label} did not answer within {self.timeout:g}s") from None

    async def aclose(self) -> None:
        """End this event loop's connections; idempotent."""
        loop = asyncio.get_running_loop()
        connection = self._connections.pop(loop, None)
        if connection is not None:
            await connection.close()
        retired = [task for task in self._retired if task.get_loop() is loop]
        if retired:
            await asyncio.wait(retired, timeout=CLOSE_TIMEOUT)


class _Connection:
    """One live MCP client session, held open by a task of its own (with a fresh
    context, so it belongs to no run) until `close()`."""

    def __init__(self, server: MCPServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.ready: asyncio.Future[list[Tool]] = loop.create_future()
        self.closing = asyncio.Event()
        self.stale = False
        self.task = loop.create_task(self._hold(), context=contextvars.Context())

    def retire(self) -> None:
        """The connection broke: let it close in the background; the next run connects anew."""
        if not self.stale:
            self.stale = True
            self.closing.set()
            retired = self.server._retired
            retired.add(self.task)
            self.task.add_done_callback(retired.discard)

    async def _hold(self) -> None:
        import mcp

        server = self.server
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await stack.enter_async_context(
                    mcp.Client(server._transport(stack), read_timeout_seconds=server.timeout))
                listed = await _list_tools(client)
                wanted = None if server.tools is None else set(server.tools)
                self.ready.set_result([self._tool(client, spec) for spec in listed
                                       if wanted is None or spec.name in wanted])
                await self.closing.wait()
        except Exception as exc:
            if self.ready.done():
                logger.warning("connection to MCP server %s lost: %s: %s", server.label, type(exc).__name__, exc)
            else:
                self._fail(f"cannot use MCP server {server.label}: {type(exc).__name__}: {exc}")
        finally:
            self._fail(f"connection to MCP server {server.label} was closed")

    def _fail(self, message: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ProviderUnavailable(message))
            self.ready.exception()  # retrieved: a failure nobody waited for is no unhandled error

    def _tool(self, client: Any, spec: Any) -> Tool:
        """An MCP tool as a Tool whose call goes over this connection."""
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED

        name = spec.name

        async def call(**arguments: Any) -> Any:
            """The text the server wrote for the model; else its structured result; else
            its content blocks (images, resources) as JSON."""
            try:
                result = await client.call_tool(name, arguments)
            except Exception as exc:
                if not isinstance(exc, MCPError) or exc.code == CONNECTION_CLOSED:
                    self.retire()
                raise
            texts = [block.text for block in result.content if getattr(block, "type", "") == "text"]
            if result.is_error:
                raise MCPToolError("\n".join(texts) or f"MCP tool {name!r} failed")
            if texts and len(texts) == len(result.content):
                return "\n".join(texts)
            if result.structured_content is not None:
                return result.structured_content
            return [block.model_dump(mode="json", exclude_none=True) for block in result.content]

        schema = dict(spec.input_schema or {"type": "object", "properties": {}})
        return Tool(name, spec.description or "", schema, call)

    async def close(self) -> None:
        """Disconnect (the SDK's orderly shutdown), cancelling it if it takes too long."""
        self.closing.set()
        done, _ = await asyncio.wait((self.task,), timeout=CLOSE_TIMEOUT)
        if not done:
            self.task.cancel()


async def _list_tools(client: Any) -> list[Any]:
    tools, cursor = [], None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


