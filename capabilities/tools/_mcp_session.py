"""One MCP server's live session: opened, kept, reconnected and closed by a task of its own.

The SDK's client is built on anyio: its transport and session are task groups and cancel
scopes that must be left by the task that entered them. Calls arrive on the worker's step
tasks and a reconnect can start from any of them, so each session is entered and left by
a *holder* task this module owns; callers only send requests on it. A holder lives until
its session is closed (``aclose`` or a reconnect), and is always awaited.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, CallToolResult, Implementation
from mcp_types import Tool as McpTool

from capabilities.tools._mcp_config import HttpServerConfig, ServerConfig
from jetagent.errors import JetagentError

__all__ = ["McpConnectionError", "McpError", "McpToolError", "ServerSession", "describe"]

log = logging.getLogger("capabilities.tools.mcp")

_CLIENT_INFO = Implementation(name="jetagent", version="0.1.0")
_MODE = "auto"  # the SDK's default: the 2026 protocol, or initialize with older servers
_CLOSE_TIMEOUT_S = 10.0  # the SDK stops a stdio server within ~6 s (stdin, SIGTERM, SIGKILL)
_LIST_PAGE_CAP = 100  # a server whose tool listing never ends cannot hang the start
# The SDK's defaults for MCP over HTTP: a long read, as a server may hold a stream open.
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# What a broken connection looks like when it is not the SDK's CONNECTION_CLOSED answer.
_BROKEN = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    httpx2.TransportError,
    OSError,
)


class McpError(JetagentError):
    """Base of the errors of tools served by MCP servers."""


class McpConnectionError(McpError):
    """An MCP server could not be started, reached or kept connected."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"MCP server {server!r}: {message}")
        self.server = server


class McpToolError(McpError):
    """An MCP server answered a call with an error (``isError``, or a JSON-RPC error).

    The message is the server's own, so the model reads why its call failed.
    """

    def __init__(self, server: str, tool: str, message: str) -> None:
        super().__init__(message)
        self.server = server
        self.tool = tool


def _lost(exc: MCPError) -> bool:
    """Whether an error may mean the session is gone, rather than answer the call.

    A streamable HTTP server that no longer knows an (initialize-era, pre-2026) session
    answers 404, and the spec says to start a new one; the SDK hands that on as
    INVALID_REQUEST with whatever message the server chose ("Session not found",
    "Session terminated"). A server runs no request it calls invalid, so sending it
    again on a new session cannot run a tool twice.
    """
    return exc.code in (CONNECTION_CLOSED, INVALID_REQUEST)


def describe(exc: BaseException) -> str:
    """A one-line account of a failure; anyio task groups wrap it in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ServerSession:
    """The session with one configured server, reconnected when a call finds it broken."""

    def __init__(self, name: str, config: ServerConfig) -> None:
        self.name = name
        self.config = config
        self._lock = asyncio.Lock()
        self._client: Client | None = None
        self._stop: asyncio.Event | None = None
        self._holder: asyncio.Task[None] | None = None
        self._generation = 0
        self._closed = False

    async def list_tools(self) -> list[McpTool]:
        """Every tool the server lists (following pages), connecting first if need be."""
        _, client = await self._current()
        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(_LIST_PAGE_CAP):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                return tools
        log.warning("MCP server %r: tool listing cut at %d pages", self.name, _LIST_PAGE_CAP)
        return tools

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call ``tool``; a broken connection is reopened and the call sent once more.

        Only a connection failure is retried: the server's own answers, errors included,
        are final. A call the server ran before its connection broke may run twice.
        """
        failure = ""
        for attempt in range(2):
            generation, client = await self._current()
            try:
                return await client.call_tool(tool, arguments)
            except MCPError as exc:
                if not _lost(exc):
                    raise McpToolError(self.name, tool, exc.message) from None
                failure = exc.message
            except _BROKEN as exc:
                failure = describe(exc)
            except Exception as exc:  # anything else the SDK raises is this call's failure
                raise McpToolError(self.name, tool, describe(exc)) from None
            if attempt == 0:
                log.warning("MCP server %r: %s; reconnecting", self.name, failure)
            await self._drop(generation)
        raise McpConnectionError(self.name, f"{tool} failed after a reconnect: {failure}")

    async def aclose(self) -> None:
        """Close the session (and stop a stdio server); later calls fail. Idempotent."""
        self._closed = True
        async with self._lock:
            await self._close_current()

    async def _current(self) -> tuple[int, Client]:
        # One lock: concurrent calls that find the session broken reconnect it once.
        async with self._lock:
            if self._closed:
                raise McpConnectionError(self.name, "the connection is closed")
            if self._client is None:
                self._client = await self._open()
                self._generation += 1
            return self._generation, self._client

    async def _drop(self, generation: int) -> None:
        async with self._lock:
            if generation == self._generation:  # nobody has reconnected since it broke
                await self._close_current()

    async def _open(self) -> Client:
        ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        holder = asyncio.create_task(self._hold(ready, stop), name=f"mcp-server-{self.name}")
        timeout = self.config.startup_timeout_s
        try:
            async with asyncio.timeout(timeout) as deadline:
                client = await ready
        except BaseException as exc:  # failed, too slow or cancelled: the holder must end too
            stop.set()
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
            if ready.done() and not ready.cancelled():
                ready.exception()  # retrieved here, so asyncio does not report it as lost
            if deadline.expired():
                raise McpConnectionError(self.name, f"did not start within {timeout:g} s") from None
            if isinstance(exc, Exception):
                raise McpConnectionError(self.name, f"cannot connect: {describe(exc)}") from None
            raise
        self._stop, self._holder = stop, holder
        return client

    async def _hold(self, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        """Enter the session, hand it to ``_open`` and leave it when told to, in this task."""
        try:
            async with AsyncExitStack() as stack:
                client = await stack.enter_async_context(self._client_for(stack))
                if not ready.done():
                    ready.set_result(client)
                await stop.wait()
        except Exception as exc:  # reported to the waiting opener, or logged: never raised here
            if not ready.done():
                ready.set_exception(exc)
            elif not stop.is_set():
                log.warning("MCP server %r: connection lost: %s", self.name, describe(exc))
        finally:
            if not ready.done():
                ready.cancel()

    def _client_for(self, stack: AsyncExitStack) -> Client:
        if isinstance(self.config, HttpServerConfig):
            http = httpx2.AsyncClient(headers=self.config.headers, timeout=_HTTP_TIMEOUT)
            stack.push_async_callback(http.aclose)
            return Client(
                streamable_http_client(self.config.url, http_client=http),
                client_info=_CLIENT_INFO,
                mode=_MODE,
            )
        server = StdioServerParameters(
            command=self.config.command,
            args=self.config.args,
            env=self.config.env,
            cwd=self.config.cwd,
        )
        return Client(server, client_info=_CLIENT_INFO, mode=_MODE)

    async def _close_current(self) -> None:
        stop, holder = self._stop, self._holder
        self._client = self._stop = self._holder = None
        if stop is None or holder is None:
            return
        stop.set()
        try:
            # On a timeout, or when the closer is cancelled, wait_for cancels the holder
            # and waits for it: the SDK still stops a stdio server under cancellation.
            await asyncio.wait_for(holder, _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("MCP server %r: did not close within %g s", self.name, _CLOSE_TIMEOUT_S)
