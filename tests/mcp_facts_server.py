"""A real MCP server (official `mcp` SDK) for tests: stdio by default, or
streamable HTTP on 127.0.0.1 with `--http` (prints `port N` when listening)."""

import asyncio
import os
import socket
import sys

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("facts")
CAPITALS = {"france": "Paris", "norway": "Oslo"}


@server.tool()
def capital(country: str) -> str:
    """The capital city of a country."""
    return CAPITALS.get(country.lower(), "unknown")


@server.tool()
def refuse(reason: str) -> str:
    """Always fails with `reason`."""
    raise ToolError(reason)


@server.tool()
def server_pid() -> int:
    """The process id of this server."""
    return os.getpid()


@server.tool()
def caller_header(name: str, ctx: Context) -> str:
    """A header of the HTTP request that called this tool ("" on stdio)."""
    return (ctx.headers or {}).get(name, "")


@server.tool()
def crash() -> str:
    """End this server's process at once."""
    os._exit(3)


async def serve_http() -> None:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections made before uvicorn runs wait in the backlog, not refused
    app = server.streamable_http_app()
    http = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    print(f"port {sock.getsockname()[1]}", flush=True)
    await http.serve(sockets=[sock])


if __name__ == "__main__":
    if "--http" in sys.argv:
        asyncio.run(serve_http())
    else:
        server.run()
