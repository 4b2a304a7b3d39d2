"""Plugins: how capabilities, tools and the projection service plug into the platform.

The core never imports ``capabilities`` or ``projections`` (docs/ARCHITECTURE.md, "Which
part may know which"): it finds them through entry points of installed distributions,
jetagent's own and a deployment's, in four groups::

    [project.entry-points."jetagent.capabilities"]   # name = factory(CapabilityContext)
    summarize = "mypkg.caps:summarize_capabilities"    #        -> CapabilitySpecs
    [project.entry-points."jetagent.tools"]          # name = a Tool, or a list of Tools
    mine = "mypkg.tools:TOOLS"
    [project.entry-points."jetagent.projections"]    # name = factory(nc, settings)
    projections = "mypkg.views:Service"              #        -> a ProjectionService
    [project.entry-points."jetagent.mcp"]            # the MCP client (JETAGENT_MCP)
    tools = "mypkg.mcp:mcp_tools"

``jetagent worker NAME`` serves the spec named ``NAME`` that the capability entry point
``NAME`` makes, and ``jetagent up`` starts a worker for every capability entry point.
``JETAGENT_CAPABILITIES`` and ``JETAGENT_TOOLS`` (``module:attr,…``) add more without a
package, resolved by the same :func:`load`.
"""

from __future__ import annotations

import asyncio
import os
import pkgutil
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol

from jetagent.errors import ConfigError
from jetagent.models import ModelCatalog
from jetagent.worker import CapabilitySpec
from jetagent.worker.tools import Tool

__all__ = [
    "CAPABILITIES",
    "MCP",
    "PROJECTIONS",
    "TOOLS",
    "CapabilityContext",
    "CapabilityFactory",
    "McpClient",
    "ProjectionFactory",
    "ProjectionService",
    "configured",
    "installed",
    "load",
    "tools",
]

CAPABILITIES = "jetagent.capabilities"
"""Entry points ``name = factory``: ``factory(CapabilityContext)`` returns CapabilitySpecs."""
TOOLS = "jetagent.tools"
"""Entry points ``name = tools``: a :class:`~jetagent.worker.tools.Tool` or a list of them."""
PROJECTIONS = "jetagent.projections"
"""Entry points ``name = factory``: ``factory(nc, settings)`` makes a ProjectionService."""
MCP = "jetagent.mcp"
"""The entry point ``tools = mcp_tools``: the client of MCP servers (an :data:`McpClient`)."""

_HINT = (
    "the module must be importable by every process that serves or starts it "
    "(install it, or add its folder to PYTHONPATH)"
)


def _describe(ref: EntryPoint | str, setting: str | None) -> str:
    if isinstance(ref, str):
        return f"{setting} entry {ref!r}"
    source = f", from {ref.dist.name}" if ref.dist is not None else ""
    return f"entry point {ref.name!r} of {ref.group} ({ref.value}{source})"


def load(ref: EntryPoint | str, *, setting: str | None = None) -> Any:
    """The object an entry point, or a ``module:attr`` reference given in the environment
    variable ``setting``, names (``pkgutil.resolve_name`` reads the reference).

    Every plugin is loaded here. A module that cannot be imported, or a name it lacks,
    is a :class:`~jetagent.errors.ConfigError` naming the entry point or the entry and
    what went wrong, raised at the service's start.
    """
    error: Exception
    try:
        if isinstance(ref, EntryPoint):
            return ref.load()
        return pkgutil.resolve_name(ref.strip())
    except ImportError as exc:
        reason, error = f"{exc} — {_HINT}", exc
    except (AttributeError, ValueError) as exc:  # no such name; not a module:attr reference
        reason, error = str(exc), exc
    except Exception as exc:  # the module itself failed while being imported
        reason, error = f"{type(exc).__name__}: {exc}", exc
    raise ConfigError(f"{_describe(ref, setting)}: {reason}") from error


def installed(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, in the order the distributions list them.

    A name two distributions both declare is a ConfigError: which one serves would
    depend on the order of ``sys.path``.
    """
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=group):
        other = found.get(entry.name)
        if other is not None and other.value != entry.value:
            raise ConfigError(
                f"{_describe(entry, None)} and {_describe(other, None)} have the same name: "
                "uninstall one, or rename it"
            )
        found.setdefault(entry.name, entry)
    return found


def configured(setting: str) -> list[str]:
    """The ``module:attr`` references in the environment variable ``setting`` (comma-separated)."""
    return [ref.strip() for ref in os.environ.get(setting, "").split(",") if ref.strip()]


def tools() -> list[Tool]:
    """The deployment's tools: every ``jetagent.tools`` entry point, then ``JETAGENT_TOOLS``.

    Raises ConfigError when one cannot be loaded or is not a Tool (nor a list of them).
    """
    refs: list[tuple[EntryPoint | str, str | None]] = [
        *((entry, None) for entry in installed(TOOLS).values()),
        *((ref, "JETAGENT_TOOLS") for ref in configured("JETAGENT_TOOLS")),
    ]
    found: list[Tool] = []
    for ref, setting in refs:
        value = load(ref, setting=setting)
        items = list(value) if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, Tool):
                raise ConfigError(f"{_describe(ref, setting)}: {item!r} is not a jetagent Tool")
        found.extend(items)
    return found


@dataclass(frozen=True, kw_only=True)
class CapabilityContext:
    """What a capability factory is given (``factory(context)`` returns CapabilitySpecs)."""

    catalog: ModelCatalog
    """The model catalog of this deployment (``JETAGENT_MODELS``)."""
    only_tools: Sequence[str] | None = None
    """``jetagent worker tools --only NAME``: serve only these dedicated tools."""
    tool_processes: int | None = None
    """Size of the pool running ``runs_in="process"`` tools (``JETAGENT_TOOL_PROCESSES``)."""
    extra_tools: Sequence[Tool] = ()
    """Tools this process adds to :meth:`tools` (the configured MCP servers')."""

    def tools(self) -> list[Tool]:
        """The tools to serve: the installed and configured ones (:func:`tools`), then
        :attr:`extra_tools`. Loaded when asked, so only a capability that serves tools
        fails on a tool module that cannot be imported."""
        return [*tools(), *self.extra_tools]


CapabilityFactory = Callable[[CapabilityContext], Iterable[CapabilitySpec]]
"""What a ``jetagent.capabilities`` entry point (or ``JETAGENT_CAPABILITIES`` entry) names."""


class _Closing(Protocol):
    async def aclose(self) -> None: ...


McpClient = Callable[[str], Awaitable[tuple[list[Tool], _Closing]]]
"""``mcp_tools(path)``: start the MCP servers the TOML file at ``path`` describes; their
tools, and the connections to close when the worker stops."""


class _Counts(Protocol):
    @property
    def poison(self) -> Mapping[str, int]: ...


class ProjectionService(Protocol):
    """What ``jetagent projections run`` and ``rebuild`` drive."""

    @property
    def views(self) -> Sized:
        """The session views held (counted after a rebuild)."""

    @property
    def positions(self) -> Mapping[str, int]:
        """Stream name → the last sequence applied."""

    @property
    def metrics(self) -> _Counts:
        """The metric totals; ``poison``: per stream, messages that were not valid events."""

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the streams and serve the metrics until ``stop`` is set."""

    async def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Replay every stream from its start (``progress(done, total)``); the events read."""


ProjectionFactory = Callable[[Any, Any], ProjectionService]
"""What a ``jetagent.projections`` entry point names: ``factory(nc, settings)``."""
