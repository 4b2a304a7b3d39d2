"""A real MCP server for the tests, built with the SDK's MCPServer (v1's FastMCP).

::

    python -m tests.support.mcp_server                  # stdio
    python -m tests.support.mcp_server --http           # streamable HTTP on 127.0.0.1

Over HTTP it binds a free port itself (port 0, so no test ever races another for a
port), prints ``PORT <n>`` on stdout and then serves ``/mcp`` until it is killed.
``--port <n>`` binds that port instead: a test restarts a server where it was.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("jetagent-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(structured_output=False)
def echo(text: str, times: int = 1) -> str:
    """Repeat a text (an unstructured answer: text content only)."""
    return " ".join([text] * times)


@server.tool(structured_output=False)
def lines() -> list[str]:
    """Answer with several text blocks."""
    return ["first", "second"]


@server.tool()
def fail(message: str) -> str:
    """Raise, so the server answers with isError and the message."""
    raise ToolError(message)


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def pid() -> int:
    """The server process's id (lets tests kill it and watch a reconnect)."""
    return os.getpid()


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of the call."""
    os._exit(3)


@server.tool(structured_output=False)
def getenv(name: str) -> str:
    """An environment variable of the server process, or '<unset>'."""
    return os.environ.get(name, "<unset>")


@server.tool(structured_output=False)
def header(name: str, ctx: Context) -> str:
    """A header of the HTTP request that carried this call, or '<none>'."""
    return (ctx.headers or {}).get(name.lower(), "<none>")


@server.tool(name="files.delete")
def delete_file(path: str) -> str:
    """Delete a file (a dotted MCP name, and a tool that needs approval)."""
    return f"deleted {path}"


async def _serve_http(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the default).")
    options = parser.parse_args()
    if options.http:
        asyncio.run(_serve_http(options.port))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
