"""Tools served by Model Context Protocol servers, run by the tools worker like built-ins.

::

    tools, mcp = await mcp_tools(os.environ.get("JETAGENT_MCP"))
    try:
        ...  # tools_capability(tools): serve them
    finally:
        await mcp.aclose()

    # or: async with McpConnections(load_config(path)) as mcp: ... mcp.tools ...

The servers are described in a TOML file, named by ``JETAGENT_MCP``::

    [servers.files]
    transport = "stdio"                  # stdio | http (streamable HTTP)
    command = "python"
    args = ["-m", "my_mcp_server"]
    env = {SOME_VAR = "x"}               # the server's environment (see below)
    cwd = "/srv/files"                   # optional working folder
    tools = ["read_file", "delete_file"] # optional allow-list (default: every tool it lists)
    requires_approval = ["delete_file"]  # calls that wait for a human (or `true`: all)
    timeout_s = 30                       # per call (default 30)
    startup_timeout_s = 30               # to start, connect and list tools (default 30)
    required = false                     # true: the worker does not start without it

    [servers.search]
    transport = "http"
    url = "http://127.0.0.1:8765/mcp"
    headers = {Authorization = "Bearer ${SEARCH_TOKEN}"}

- ``${NAME}`` in ``command``, ``args``, ``env``, ``cwd``, ``url`` and ``headers`` is read
  from the worker's environment at start; an unset variable is a configuration error.
- A stdio server gets ``env`` plus only the MCP SDK's safe few of the worker's own
  variables (HOME, LOGNAME, PATH, SHELL, TERM, USER): no credential of the worker leaks
  into it unless configured.
- Server names are letters, digits, ``-`` and single ``_`` (at most 32, starting with a
  letter, not ending with ``_``). The file is validated at start; a mistake raises
  ``ConfigError`` naming the file and the field (``servers.files.command: Field required``).

**Tool names.** The MCP tool ``read_file`` of server ``files`` is the jetagent tool
``files__read_file``. Characters a jetagent name cannot hold (MCP names may contain
``.``) become ``_``; names longer than 64 characters are cut to 55 and end with ``-``
and 8 hex digits of a hash of the full name. ``tools`` and ``requires_approval`` use
the server's own names. Because a server name has no ``__`` and does not end in ``_``,
two servers can never produce the same name.

**Calls.** A tool's JSON Schema is the server's ``inputSchema``, so its arguments are
validated (jsonschema) before anything is sent, with the timeout and approval rules of
built-in tools. The answer is the call's structured content when the server gives one,
else its text content joined by newlines (other content is named in brackets,
``[image image/png]``). A call the server answers with ``isError`` raises
``McpToolError`` with the server's message, which ``ToolBox`` turns into a tool error the
model reads. A call that finds the connection broken, or its HTTP session forgotten by
a restarted server, reconnects (restarting a stdio server) and is sent once more; a
call the server ran before its connection broke may run twice.

**Lifecycle.** Sessions live from ``start()`` to ``aclose()`` (or the ``async with``
block) — for as long as the worker. Servers start concurrently; one that cannot start
is logged, listed in ``failures`` and its tools are left out, unless it is ``required``.
Each worker replica runs its own stdio servers. Tools are listed once, at start.

Errors (part of jetagent's tree, under ``JetagentError``)::

    McpError
     ├── McpConnectionError   a server could not be started, reached or kept connected
     └── McpToolError         a server answered a call with an error
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import jsonschema
from mcp_types import CallToolResult, ContentBlock, EmbeddedResource, TextResourceContents
from mcp_types import Tool as McpTool

from capabilities.tools._mcp_config import (
    HttpServerConfig,
    McpConfig,
    ServerConfig,
    StdioServerConfig,
    load_config,
    tool_name,
)
from capabilities.tools._mcp_session import (
    McpConnectionError,
    McpError,
    McpToolError,
    ServerSession,
    describe,
)
from jetagent.worker.tools import Tool

__all__ = [
    "HttpServerConfig",
    "McpConfig",
    "McpConnectionError",
    "McpConnections",
    "McpError",
    "McpToolError",
    "StdioServerConfig",
    "load_config",
    "mcp_tools",
    "tool_name",
]

log = logging.getLogger("capabilities.tools.mcp")


async def mcp_tools(
    path: str | os.PathLike[str] | None,
) -> tuple[list[Tool], McpConnections]:
    """Start the MCP servers configured in the TOML file at ``path`` and list their tools.

    Without a path there are no servers and no tools. The caller owns the connections:
    ``await connections.aclose()`` when the worker stops. Raises ``ConfigError`` for an
    invalid file, ``McpConnectionError`` when a ``required`` server cannot start.
    """
    connections = McpConnections(load_config(path) if path else McpConfig())
    return await connections.start(), connections


class McpConnections:
    """The live sessions with the configured MCP servers and the tools they serve."""

    def __init__(self, config: McpConfig) -> None:
        self.config = config
        self.tools: list[Tool] = []
        """The tools served, once started."""
        self.failures: dict[str, str] = {}
        """Servers that could not start (or list their tools), with the reason."""
        self._sessions: dict[str, ServerSession] = {}
        self._started = False

    async def start(self) -> list[Tool]:
        """Connect to every server (concurrently) and return the tools to serve.

        Idempotent. A server that fails is logged and left out, unless it is
        ``required``: then everything is closed again and ``McpConnectionError`` raised.
        """
        if self._started:
            return self.tools
        self._started = True
        servers = self.config.servers
        try:
            found = await asyncio.gather(*(self._start_one(n, c) for n, c in servers.items()))
        except BaseException:  # cancelled mid-start: the servers that did start stop again
            await self.aclose()
            raise
        missing = sorted(n for n in self.failures if servers[n].required)
        if missing:
            await self.aclose()
            first, others = missing[0], missing[1:]
            also = f" (nor can required {', '.join(others)})" if others else ""
            raise McpConnectionError(
                first, f"required, but cannot start: {self.failures[first]}{also}"
            )
        names: set[str] = set()
        for tool in (t for tools in found for t in tools):
            if tool.name in names:  # two MCP names that differ only in a '.' and a '_'
                log.warning("MCP tool %s is listed twice; serving the first", tool.name)
                continue
            names.add(tool.name)
            self.tools.append(tool)
        return self.tools

    async def aclose(self) -> None:
        """Close every session and stop every stdio server. Idempotent."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.aclose() for s in sessions))

    async def __aenter__(self) -> McpConnections:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start_one(self, name: str, config: ServerConfig) -> list[Tool]:
        session = ServerSession(name, config)
        self._sessions[name] = session
        try:
            async with asyncio.timeout(config.startup_timeout_s):
                listed = await session.list_tools()
        except TimeoutError:
            reason = f"did not list its tools within {config.startup_timeout_s:g} s"
        except McpError as exc:
            reason = str(exc).removeprefix(f"MCP server {name!r}: ")
        except Exception as exc:  # a server's failure must not stop the others or the worker
            reason = describe(exc)
        else:
            return _register(session, config, listed)
        self.failures[name] = reason
        log.error("MCP server %r cannot start: %s; its tools are not served", name, reason)
        await session.aclose()
        self._sessions.pop(name, None)
        return []


def _register(
    session: ServerSession, config: ServerConfig, listed: Sequence[McpTool]
) -> list[Tool]:
    wanted = None if config.tools is None else set(config.tools)
    if wanted is not None:
        absent = sorted(wanted - {t.name for t in listed})
        if absent:
            log.warning("MCP server %r does not list %s", session.name, ", ".join(absent))
    tools = []
    for remote in listed:
        if wanted is not None and remote.name not in wanted:
            continue
        try:
            jsonschema.Draft202012Validator.check_schema(remote.input_schema)
        except jsonschema.SchemaError as exc:
            log.warning(
                "MCP tool %r of server %r has an invalid inputSchema (%s); not served",
                remote.name,
                session.name,
                exc.message,
            )
            continue
        tools.append(
            Tool(
                name=tool_name(session.name, remote.name),
                description=remote.description or remote.title or remote.name,
                function=_caller(session, remote.name),
                parameters=dict(remote.input_schema),
                arguments=None,  # Tool.validate checks the arguments against `parameters`
                requires_approval=config.needs_approval(remote.name),
                timeout_s=config.timeout_s,
                runs_in="loop",
            )
        )
    return tools


def _caller(session: ServerSession, remote: str) -> Callable[..., Awaitable[Any]]:
    async def call(**arguments: Any) -> Any:
        return _answer(session.name, remote, await session.call_tool(remote, arguments))

    call.__name__ = call.__qualname__ = remote
    return call


def _answer(server: str, tool: str, result: CallToolResult) -> Any:
    """The JSON-able answer of a call, or McpToolError with the server's message."""
    text = "\n".join(_text(block) for block in result.content)
    if result.is_error:
        raise McpToolError(server, tool, text or f"{tool} reported an error")
    if result.structured_content is not None:
        return result.structured_content
    return text


def _text(block: ContentBlock) -> str:
    if block.type == "text":
        return block.text
    if isinstance(block, EmbeddedResource):
        resource = block.resource
        if isinstance(resource, TextResourceContents):
            return resource.text
        return f"[resource {resource.uri} {resource.mime_type or ''}]".replace(" ]", "]")
    if block.type == "resource_link":
        return f"[resource {block.uri}]"
    return f"[{block.type} {block.mime_type}]"
