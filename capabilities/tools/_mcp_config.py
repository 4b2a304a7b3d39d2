"""The MCP configuration file (``JETAGENT_MCP``): its typed model, loading and tool names.

The format is documented in ``capabilities.tools.mcp``; this module validates it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from jetagent.errors import ConfigError

__all__ = [
    "HttpServerConfig",
    "McpConfig",
    "ServerConfig",
    "StdioServerConfig",
    "load_config",
    "tool_name",
]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# No "__" inside and no "_" at the end: then the first "__" of a served tool's name
# always ends the server's name, and no two servers can produce the same tool name.
_SERVER_NAME = r"^[A-Za-z][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*$"
_SERVER_NAME_RULE = (
    "a server name is letters, digits, '-' and single '_' "
    "(at most 32, starting with a letter, not ending with '_')"
)
_MAX_TOOL_NAME = 64  # jetagent tool names are subject tokens of at most 64 characters


def _expand(value: str) -> str:
    """Replace ``${NAME}`` with the variable from the worker's environment."""

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"${{{name}}} is not set in the environment")
        return os.environ[name]

    return _VARIABLE.sub(variable, value)


def _http_url(value: str) -> str:
    if not re.match(r"https?://[^/]", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


Expanded = Annotated[str, AfterValidator(_expand)]
"""A string in which ``${NAME}`` is read from the environment at start."""

ServerName = Annotated[str, Field(pattern=_SERVER_NAME, max_length=32)]


class _ServerBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: list[str] | None = None
    """The server's tools to serve, by their MCP names (default: every tool it lists)."""
    requires_approval: bool | list[str] = False
    """Tools (MCP names) whose calls wait for a human's approval; ``true`` means all."""
    timeout_s: PositiveFloat = 30.0
    """Seconds one call may take before the model is told it timed out."""
    startup_timeout_s: PositiveFloat = 30.0
    """Seconds to start or connect to the server and list its tools."""
    required: bool = False
    """When true, the worker does not start without this server; otherwise a server that
    cannot start is logged and its tools are left out."""

    @model_validator(mode="after")
    def _approval_within_allow_list(self) -> _ServerBase:
        if self.tools is not None and isinstance(self.requires_approval, list):
            outside = sorted(set(self.requires_approval) - set(self.tools))
            if outside:
                raise ValueError(
                    f"requires_approval names tools not in `tools`: {', '.join(outside)}"
                )
        return self

    def needs_approval(self, tool: str) -> bool:
        """Whether a call of the MCP tool ``tool`` waits for a human's approval."""
        if isinstance(self.requires_approval, bool):
            return self.requires_approval
        return tool in self.requires_approval


class StdioServerConfig(_ServerBase):
    """A server started as a subprocess, speaking MCP on its stdin and stdout."""

    transport: Literal["stdio"]
    command: Annotated[Expanded, Field(min_length=1)]
    args: list[Expanded] = []
    env: dict[str, Expanded] = {}
    """Variables given to the server; of the worker's own environment it gets only the
    MCP SDK's safe few (HOME, LOGNAME, PATH, SHELL, TERM, USER)."""
    cwd: Expanded | None = None


class HttpServerConfig(_ServerBase):
    """A server reached over MCP's streamable HTTP transport."""

    transport: Literal["http"]
    url: Annotated[Expanded, AfterValidator(_http_url)]
    headers: dict[str, Expanded] = {}


ServerConfig = Annotated[StdioServerConfig | HttpServerConfig, Field(discriminator="transport")]


class McpConfig(BaseModel):
    """The MCP servers whose tools the tools worker serves, by server name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: dict[ServerName, ServerConfig] = {}


def load_config(path: str | os.PathLike[str]) -> McpConfig:
    """Read and validate the TOML file at ``path``; a ConfigError names the file and field."""
    source = Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"MCP config {source}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"MCP config {source}: not valid TOML: {exc}") from None
    try:
        return McpConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"MCP config {source}: {problems}") from None


def _describe(error: ErrorDetails) -> str:
    loc: list[Any] = list(error["loc"])
    # The discriminated union puts the transport's tag in the location
    # (servers.files.stdio.command); the file has no such level.
    if len(loc) > 2 and loc[0] == "servers" and loc[2] in ("stdio", "http"):
        del loc[2]
    if loc and loc[-1] == "[key]":
        loc.pop()
        return f"{'.'.join(map(str, loc))}: {_SERVER_NAME_RULE}"
    where = ".".join(map(str, loc)) or "(top level)"
    if error["type"] == "union_tag_not_found":
        return f"{where}.transport: missing (use 'stdio' or 'http')"
    if error["type"] == "union_tag_invalid":
        return f"{where}.transport: {error['input'].get('transport')!r} is not 'stdio' or 'http'"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"


def tool_name(server: str, tool: str) -> str:
    """The jetagent name of the MCP tool ``tool`` of ``server``: ``<server>__<tool>``.

    Characters a jetagent tool name cannot hold (anything but letters, digits, ``_`` and
    ``-``; MCP names may also have ``.``) become ``_``; a name longer than 64 characters
    keeps its first 55 and ends with ``-`` and 8 hex digits of a hash of the full name.
    """
    full = f"{server}__{tool}"
    name = re.sub(r"[^A-Za-z0-9_-]", "_", full)
    if len(name) > _MAX_TOOL_NAME:
        digest = hashlib.sha256(full.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_TOOL_NAME - 9]}-{digest}"
    return name
