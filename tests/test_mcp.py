"""Tools served by MCP servers: real local servers over stdio and streamable HTTP.

The server is ``tests/support/mcp_server.py`` (the SDK's MCPServer): started by the
connector as a stdio subprocess, or by a fixture over HTTP on 127.0.0.1 with a port the
server picks itself. Tools are run with ``ToolBox``, as the tools worker runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from capabilities.tools import _mcp_session
from capabilities.tools.capability import tools_capability
from capabilities.tools.mcp import (
    McpConfig,
    McpConnectionError,
    McpConnections,
    load_config,
    mcp_tools,
    tool_name,
)
from jetagent import StepOutput
from jetagent.errors import ConfigError
from jetagent.testing import step_context
from jetagent.worker.tools import ToolBox

ROOT = Path(__file__).resolve().parents[1]
SERVER_MODULE = "tests.support.mcp_server"


def stdio(**extra: Any) -> dict[str, Any]:
    """A stdio server entry that starts the test server."""
    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", SERVER_MODULE],
        "cwd": str(ROOT),
        **extra,
    }


def config(**servers: dict[str, Any]) -> McpConfig:
    return McpConfig.model_validate({"servers": servers})


@pytest.fixture
async def files() -> AsyncIterator[McpConnections]:
    """One stdio server, ``files``, whose calls time out after 6 s (a call that must
    restart the server includes its start-up, seconds on a loaded machine)."""
    async with McpConnections(config(files=stdio(timeout_s=6))) as connections:
        yield connections


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (read from /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def gone(pid: int, deadline_s: float = 10.0) -> bool:
    """Wait until the process is gone; False if it is still there at the deadline."""
    deadline = time.monotonic() + deadline_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def children(marker: str = SERVER_MODULE) -> list[int]:
    """Live child processes of this test whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


# --- configuration ---------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mcp.toml"
    path.write_text(text)
    return path


def test_config_file_is_read_with_variables_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEARCH_TOKEN", "s3cret")
    path = write(
        tmp_path,
        """
        [servers.files]
        transport = "stdio"
        command = "python"
        args = ["-m", "my_mcp_server"]
        env = {SOME_VAR = "x"}
        tools = ["read_file", "delete_file"]
        requires_approval = ["delete_file"]
        timeout_s = 5

        [servers.search]
        transport = "http"
        url = "http://127.0.0.1:8765/mcp"
        headers = {Authorization = "Bearer ${SEARCH_TOKEN}"}
        required = true
        """,
    )
    loaded = load_config(path)
    files, search = loaded.servers["files"], loaded.servers["search"]
    assert files.transport == "stdio"
    assert files.env == {"SOME_VAR": "x"}
    assert files.timeout_s == 5
    assert files.needs_approval("delete_file")
    assert not files.needs_approval("read_file")
    assert search.transport == "http"
    assert search.headers == {"Authorization": "Bearer s3cret"}
    assert search.required


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[servers.files]\ntransport = "stdio"\n', "servers.files.command: Field required"),
        (
            '[servers.files]\ntransport = "stdio"\ncommand = "x"\ncomand = "y"\n',
            "servers.files.comand: Extra inputs are not permitted",
        ),
        ('[servers.files]\ncommand = "x"\n', "servers.files.transport: missing"),
        (
            '[servers.files]\ntransport = "sse"\ncommand = "x"\n',
            "servers.files.transport: 'sse' is not 'stdio' or 'http'",
        ),
        (
            '[servers.search]\ntransport = "http"\nurl = "127.0.0.1:80"\n',
            "servers.search.url: must be an http:// or https:// URL",
        ),
        (
            '[servers.search]\ntransport = "http"\nurl = "http://h/mcp"\n'
            'headers = {Authorization = "Bearer ${JETAGENT_TEST_UNSET_VAR}"}\n',
            "servers.search.headers.Authorization: ${JETAGENT_TEST_UNSET_VAR} is not set",
        ),
        (
            '[servers.files]\ntransport = "stdio"\ncommand = "x"\ntimeout_s = 0\n',
            "servers.files.timeout_s: Input should be greater than 0",
        ),
        (
            '[servers.files]\ntransport = "stdio"\ncommand = "x"\n'
            'tools = ["a"]\nrequires_approval = ["b"]\n',
            "servers.files: requires_approval names tools not in `tools`: b",
        ),
        ('[servers.a__b]\ntransport = "stdio"\ncommand = "x"\n', "servers.a__b: a server name"),
        ("[servers.files\n", "not valid TOML"),
        ('[server.files]\ntransport = "stdio"\n', "server: Extra inputs are not permitted"),
    ],
)
def test_config_mistakes_name_the_file_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"MCP config {path}: ")
    assert message in str(caught.value)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read it"):
        load_config(tmp_path / "nope.toml")


def test_tool_names_are_valid_jetagent_names() -> None:
    assert tool_name("files", "read_file") == "files__read_file"
    assert tool_name("files", "dir.list") == "files__dir_list"
    long = tool_name("files", "x" * 100)
    assert len(long) == 64
    assert long.startswith("files__xxx")
    assert long != tool_name("files", "x" * 101)  # the hash keeps long names apart


async def test_no_config_means_no_tools() -> None:
    tools, connections = await mcp_tools(None)
    assert tools == []
    await connections.aclose()


# --- stdio server ----------------------------------------------------------------


async def test_tools_are_listed_and_registered_with_their_schemas(
    files: McpConnections,
) -> None:
    tools = {t.name: t for t in files.tools}
    assert {"files__add", "files__echo", "files__files_delete"} <= set(tools)
    add = tools["files__add"]
    # The server's inputSchema is the tool's JSON Schema, validated with jsonschema.
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert add.parameters["required"] == ["a", "b"]
    assert add.arguments is None
    assert add.description == "Add two integers."
    assert add.timeout_s == 6
    assert add.runs_in == "loop"
    assert add.registration().spec.parameters == add.parameters


async def test_a_call_returns_the_result(files: McpConnections) -> None:
    box = ToolBox.of(files.tools)
    # Structured content when the server gives it, else the text content joined.
    assert await box.run("files__add", {"a": 2, "b": 3}) == {"result": {"result": 5}}
    assert await box.run("files__echo", {"text": "hi", "times": 2}) == {"result": "hi hi"}
    assert await box.run("files__lines", {}) == {"result": "first\nsecond"}


async def test_invalid_arguments_are_rejected_before_the_call(files: McpConnections) -> None:
    box = ToolBox.of(files.tools)
    answer = await box.run("files__add", {"a": "two"})
    assert answer == {
        "error": "invalid arguments for files__add: "
        "arguments: 'b' is a required property; a: 'two' is not of type 'integer'"
    }
    # (The server would have said "Error executing tool add: 2 validation errors".)


async def test_an_unknown_tool_is_a_tool_error(files: McpConnections) -> None:
    answer = await ToolBox.of(files.tools).run("files__nope", {})
    assert answer["error"].startswith("unknown tool 'files__nope'; available tools: files__add")


async def test_a_failing_tool_is_a_tool_error_with_the_servers_message(
    files: McpConnections,
) -> None:
    answer = await ToolBox.of(files.tools).run("files__fail", {"message": "disk on fire"})
    assert answer == {
        "error": "files__fail failed: McpToolError: Error executing tool fail: disk on fire"
    }


async def test_a_slow_tool_times_out_and_the_session_stays_usable(
    files: McpConnections,
) -> None:
    box = ToolBox.of(files.tools)
    started = time.monotonic()
    assert await box.run("files__sleep", {"seconds": 30}) == {
        "error": "files__sleep did not finish within 6 s"
    }
    assert time.monotonic() - started < 15
    assert await box.run("files__add", {"a": 1, "b": 1}) == {"result": {"result": 2}}


async def test_allow_list_and_approval_are_honoured() -> None:
    servers = config(
        files=stdio(tools=["add", "files.delete"], requires_approval=["files.delete"]),
        strict=stdio(tools=["echo"], requires_approval=True),
    )
    async with McpConnections(servers) as connections:
        tools = {t.name: t for t in connections.tools}
        assert sorted(tools) == ["files__add", "files__files_delete", "strict__echo"]
        assert tools["files__files_delete"].registration().requires_approval
        assert not tools["files__add"].registration().requires_approval
        assert tools["strict__echo"].requires_approval
        # A tool outside the allow-list is not there to call.
        answer = await ToolBox.of(connections.tools).run("files__echo", {"text": "x"})
        assert answer["error"].startswith("unknown tool 'files__echo'")


async def test_only_configured_variables_reach_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JETAGENT_TEST_SECRET", "worker-only")
    async with McpConnections(config(files=stdio(env={"GREETING": "hello"}))) as connections:
        box = ToolBox.of(connections.tools)
        assert await box.run("files__getenv", {"name": "GREETING"}) == {"result": "hello"}
        assert await box.run("files__getenv", {"name": "JETAGENT_TEST_SECRET"}) == {
            "result": "<unset>"
        }


async def test_a_server_that_cannot_start_is_reported_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servers = config(
        files=stdio(),
        missing={"transport": "stdio", "command": str(ROOT / "no-such-server")},
        # Starts, but never speaks MCP: it must not hold up the worker, nor survive.
        mute={
            "transport": "stdio",
            "command": sys.executable,
            "args": ["-c", "import time; time.sleep(61)"],
            "startup_timeout_s": 0.5,
        },
    )
    with caplog.at_level(logging.ERROR, logger="capabilities.tools.mcp"):
        tools, connections = await mcp_tools_of(servers)
    try:
        assert sorted(connections.failures) == ["missing", "mute"]
        assert "No such file or directory" in connections.failures["missing"]
        assert connections.failures["mute"] == "did not start within 0.5 s"
        assert children("time.sleep(61)") == []
        assert "MCP server 'missing' cannot start" in caplog.text
        assert {t.name.partition("__")[0] for t in tools} == {"files"}
        assert await ToolBox.of(tools).run("files__add", {"a": 1, "b": 2}) == {
            "result": {"result": 3}
        }
    finally:
        await connections.aclose()


async def mcp_tools_of(servers: McpConfig) -> tuple[list[Any], McpConnections]:
    connections = McpConnections(servers)
    return await connections.start(), connections


async def test_a_required_server_that_cannot_start_stops_the_start() -> None:
    servers = config(
        files=stdio(),
        missing={"transport": "stdio", "command": str(ROOT / "no-such-server"), "required": True},
    )
    with pytest.raises(McpConnectionError, match=r"'missing': required, but cannot start"):
        await McpConnections(servers).start()
    # The servers that did start are stopped again.
    deadline = time.monotonic() + 10
    while children():
        assert time.monotonic() < deadline, "a stdio server outlived the failed start"
        await asyncio.sleep(0.05)


async def test_a_broken_connection_is_reopened_once(files: McpConnections) -> None:
    box = ToolBox.of(files.tools)
    first = (await box.run("files__pid", {}))["result"]["result"]
    # The server dies between calls: the next call restarts it and succeeds.
    os.kill(first, signal.SIGKILL)
    assert await gone(first)
    answer = await box.run("files__pid", {})
    assert "result" in answer, answer
    second = answer["result"]["result"]
    assert second != first
    # A call that kills its server each time is retried once, then reported.
    answer = await box.run("files__crash", {})
    assert answer == {
        "error": "files__crash failed: McpConnectionError: MCP server 'files': "
        "crash failed after a reconnect: Connection closed"
    }
    added = await box.run("files__add", {"a": 1, "b": 2})
    assert added.get("result") == {"result": 3}, added


async def test_calls_run_concurrently_and_share_one_reconnect(files: McpConnections) -> None:
    box = ToolBox.of(files.tools)
    # Five calls of 0.5 s on one session overlap: one after another they would take at
    # least 2.5 s (the margin below that is for a loaded machine).
    started = time.monotonic()
    answers = await asyncio.gather(*(box.run("files__sleep", {"seconds": 0.5}) for _ in range(5)))
    assert all(a == {"result": {"result": "slept 0.5"}} for a in answers)
    assert time.monotonic() - started < 2.4
    # Calls that find the server dead together start one new server, not five.
    first = (await box.run("files__pid", {}))["result"]["result"]
    os.kill(first, signal.SIGKILL)
    assert await gone(first)
    pids = await asyncio.gather(*(box.run("files__pid", {}) for _ in range(5)))
    assert len({p["result"]["result"] for p in pids}) == 1
    assert len(children()) == 1


async def test_the_stdio_server_is_gone_after_aclose() -> None:
    tools, connections = await mcp_tools_of(config(files=stdio()))
    pid = (await ToolBox.of(tools).run("files__pid", {}))["result"]["result"]
    assert alive(pid)
    await connections.aclose()
    assert await gone(pid)
    await connections.aclose()  # idempotent
    # A call after closing is a tool error, not a crash.
    answer = await ToolBox.of(tools).run("files__pid", {})
    assert "McpConnectionError" in answer["error"]


async def test_mcp_tools_reads_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        [servers.files]
        transport = "stdio"
        command = {str(sys.executable)!r}
        args = ["-m", "{SERVER_MODULE}"]
        cwd = {str(ROOT)!r}
        tools = ["echo"]
        """,
    )
    tools, connections = await mcp_tools(str(path))
    try:
        assert [t.name for t in tools] == ["files__echo"]
    finally:
        await connections.aclose()


async def test_the_tools_capability_serves_them_like_built_ins(files: McpConnections) -> None:
    spec = tools_capability(files.tools)
    registered = {t.spec.name: t for t in spec.tools}
    assert registered["files__add"].spec.parameters["required"] == ["a", "b"]
    assert spec.subjects is not None
    assert "{p}.wf.*.StepScheduled.tools.files__add" in spec.subjects
    step = step_context(
        workflow_id="wf",
        step_id="s1",
        tool="files__add",
        input={"tool": "files__add", "arguments": {"a": 4, "b": 5}},
    )
    output = await spec.handler(step)
    assert isinstance(output, StepOutput)
    assert output.output["result"] == {"result": 9}


# --- streamable HTTP server ----------------------------------------------------------


@contextlib.contextmanager
def running_http_server(*options: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The test server over streamable HTTP on 127.0.0.1: its /mcp URL and process."""
    process = subprocess.Popen(
        [sys.executable, "-m", SERVER_MODULE, "--http", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        # The server binds port 0 itself and says which port it got.
        line = process.stdout.readline()
        assert line.startswith("PORT "), f"the server said {line!r}"
        url = f"http://127.0.0.1:{int(line.split()[1])}/mcp"
        deadline = time.monotonic() + 20
        while True:  # ready once it answers HTTP at all
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the HTTP MCP server did not come up"
                time.sleep(0.05)
        yield url, process
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def http_server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with running_http_server() as running:
        yield running


async def test_http_transport(
    http_server: tuple[str, subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, process = http_server
    monkeypatch.setenv("JETAGENT_TEST_TOKEN", "s3cret")
    search = {
        "transport": "http",
        "url": url,
        "headers": {"Authorization": "Bearer ${JETAGENT_TEST_TOKEN}"},
        "timeout_s": 1,
    }
    async with McpConnections(config(search=search)) as connections:
        box = ToolBox.of(connections.tools)
        assert "search__add" in box.tools
        assert await box.run("search__add", {"a": 20, "b": 22}) == {"result": {"result": 42}}
        # Configured headers (with ${VAR} from the environment) go with every request.
        assert await box.run("search__header", {"name": "Authorization"}) == {
            "result": "Bearer s3cret"
        }
        assert (await box.run("search__fail", {"message": "nope"}))["error"].endswith(
            "McpToolError: Error executing tool fail: nope"
        )
        assert await box.run("search__sleep", {"seconds": 30}) == {
            "error": "search__sleep did not finish within 1 s"
        }
        assert await box.run("search__add", {"a": 1, "b": 1}) == {"result": {"result": 2}}
        # The server goes away: calls are tool errors, and the worker carries on.
        process.kill()
        process.wait(timeout=10)
        answer = await box.run("search__add", {"a": 1, "b": 1})
        assert "McpConnectionError" in answer["error"], answer


async def test_an_http_server_that_is_not_there_is_reported() -> None:
    # A port bound but not listening refuses connections for as long as it is held.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/mcp"
        unreachable = {"transport": "http", "url": url, "startup_timeout_s": 5}
        tools, connections = await mcp_tools_of(config(search=unreachable))
    try:
        assert tools == []
        assert "search" in connections.failures
    finally:
        await connections.aclose()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_http_server_that_restarts_is_reconnected(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "legacy" is the initialize era (before the 2026 protocol): the server keeps a
    # session per client, which a restart loses; the next call gets a 404 for it.
    monkeypatch.setattr(_mcp_session, "_MODE", mode)
    connections: McpConnections | None = None
    try:
        with running_http_server() as (url, _):
            connections = McpConnections(config(search={"transport": "http", "url": url}))
            box = ToolBox.of(await connections.start())
            assert await box.run("search__add", {"a": 1, "b": 2}) == {"result": {"result": 3}}
        # The server is gone; it comes back on the same port, the worker never left.
        with running_http_server("--port", str(urlsplit(url).port)) as (again, _):
            assert again == url
            assert await box.run("search__add", {"a": 2, "b": 2}) == {"result": {"result": 4}}
    finally:
        if connections is not None:
            await connections.aclose()
