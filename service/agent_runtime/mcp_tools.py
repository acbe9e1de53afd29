"""Tools from MCP servers, through the official `mcp` SDK.

`MCPServer(url="http://host:port/mcp")` (streamable HTTP) or
`MCPServer(command="python", args=["server.py"])` (stdio) in an Agent's
`mcp_servers`: each run connects, lists the server's tools and offers them to
the model as ordinary `Tool`s; the connection closes when the run ends (also
when it is cancelled). `mcp` is imported only when a run connects.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Sequence

from .errors import ProviderUnavailable
from .tools import Tool

MAX_TOOL_PAGES = 100


class MCPToolError(Exception):
    """The MCP server reported the tool call as failed; the message is its text."""


@dataclass(frozen=True)
class MCPServer:
    """Where an agent's MCP tools come from: `url` (streamable HTTP) or `command` (stdio).

    `tools` keeps only the named tools; `headers` go with every HTTP request;
    `env` is added to the stdio server's (minimal) environment.
    """

    url: str = ""
    command: str = ""
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tools: Sequence[str] | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.command):
            raise ValueError("an MCPServer needs exactly one of `url` (streamable HTTP) or `command` (stdio)")
        if self.timeout <= 0:
            raise ValueError("MCPServer timeout must be > 0")
        if importlib.util.find_spec("mcp") is None:
            raise ValueError("MCP tools need the `mcp` package: pip install 'agent-runtime[mcp]'")
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

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[list[Tool]]:
        """Connect, list the tools, and yield them; disconnect on exit."""
        import mcp

        async with contextlib.AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(
                    mcp.Client(self._transport(stack), read_timeout_seconds=self.timeout))
                listed = await _list_tools(client)
            except Exception as exc:
                raise ProviderUnavailable(f"cannot use MCP server {self.label}: "
                                          f"{type(exc).__name__}: {exc}") from exc
            wanted = None if self.tools is None else set(self.tools)
            yield [_as_tool(client, spec) for spec in listed if wanted is None or spec.name in wanted]


async def _list_tools(client: Any) -> list[Any]:
    tools, cursor = [], None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _as_tool(client: Any, spec: Any) -> Tool:
    name = spec.name

    async def call(**arguments: Any) -> Any:
        """The text the server wrote for the model; else its structured result; else
        its content blocks (images, resources) as JSON."""
        result = await client.call_tool(name, arguments)
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

