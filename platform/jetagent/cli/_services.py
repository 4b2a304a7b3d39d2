"""What `jetagent up`, `jetagent worker` and `jetagent projections` run, found as plugins.

The capabilities, tools and projection service come from entry points
(:mod:`jetagent.plugins`); a deployment adds its own through the same groups of its own
package, or with ``JETAGENT_CAPABILITIES=module:factory,…``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from importlib.metadata import EntryPoint
from typing import Any

from jetagent import plugins
from jetagent.errors import ConfigError
from jetagent.models import ModelCatalog
from jetagent.plugins import CapabilityContext, McpClient, ProjectionFactory
from jetagent.worker import CapabilitySpec
from jetagent.worker.tools import Tool

__all__ = [
    "capability_names",
    "capability_specs",
    "dedicated_tool_names",
    "has_projections",
    "mcp_client",
    "projection_factory",
]


def capability_names() -> list[str]:
    """The installed capabilities (``jetagent up`` starts a worker for each)."""
    return list(plugins.installed(plugins.CAPABILITIES))


def dedicated_tool_names() -> list[str]:
    """The dedicated tools of the ``tools`` capability (installed or ``JETAGENT_TOOLS``):
    each needs a ``jetagent worker tools --only NAME``. Raises ConfigError when a tool
    module cannot be imported."""
    by_name = {t.name: t for t in plugins.tools() if t.capability == "tools"}
    return sorted(name for name, t in by_name.items() if t.dedicated)


def _arguments(factory: Any, context: CapabilityContext, what: str) -> tuple[Any, ...]:
    """``(context,)``, or ``()`` for a factory that takes no argument (as
    ``JETAGENT_CAPABILITIES`` factories did before the context existed)."""
    try:
        signature = inspect.signature(factory)
    except ValueError:  # no signature to look at (a builtin): give it the context
        return (context,)
    for args in ((context,), ()):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return args
    raise ConfigError(
        f"{what}: a capability factory takes one argument (the CapabilityContext) or "
        f"none, not {signature}"
    )


def _specs(
    ref: EntryPoint | str, context: CapabilityContext, *, setting: str | None = None
) -> list[CapabilitySpec]:
    """Load the factory ``ref`` names and call it with ``context``."""
    what = f"{setting} entry {ref!r}" if isinstance(ref, str) else f"entry point {ref.name!r}"
    factory: Any = plugins.load(ref, setting=setting)
    if not callable(factory):
        raise ConfigError(f"{what}: {factory!r} is not a capability factory (not callable)")
    specs = list(factory(*_arguments(factory, context, what)))
    for spec in specs:
        if not isinstance(spec, CapabilitySpec):
            raise ConfigError(f"{what}: made {spec!r}, which is not a CapabilitySpec")
    return specs


def capability_specs(
    names: Sequence[str],
    catalog: ModelCatalog,
    *,
    only_tools: Sequence[str] | None = None,
    extra_tools: Sequence[Tool] = (),
    tool_processes: int | None = None,
) -> list[CapabilitySpec]:
    """CapabilitySpecs for the capability names given: an installed capability's entry
    point, else one a ``JETAGENT_CAPABILITIES`` factory makes. ``only_tools``,
    ``extra_tools`` and ``tool_processes`` reach the factories in their
    :class:`~jetagent.plugins.CapabilityContext`."""
    context = CapabilityContext(
        catalog=catalog,
        only_tools=only_tools,
        tool_processes=tool_processes,
        extra_tools=extra_tools,
    )
    configured: dict[str, CapabilitySpec] = {}
    for ref in plugins.configured("JETAGENT_CAPABILITIES"):
        for spec in _specs(ref, context, setting="JETAGENT_CAPABILITIES"):
            configured[spec.name] = spec
    installed = plugins.installed(plugins.CAPABILITIES)
    # One factory may make several capabilities (reasoning and summarize share one model
    # gateway): it is called once however many of them this worker serves.
    made: dict[str, list[CapabilitySpec]] = {}
    specs: list[CapabilitySpec] = []
    for name in names:
        entry = installed.get(name)
        if entry is None:
            if name not in configured:
                known = ", ".join(dict.fromkeys([*installed, *configured]))
                raise ConfigError(f"unknown capability {name!r} (known: {known})")
            specs.append(configured[name])
            continue
        if entry.value not in made:
            made[entry.value] = _specs(entry, context)
        named = next((s for s in made[entry.value] if s.name == name), None)
        if named is None:
            raise ConfigError(
                f"entry point {name!r} of {plugins.CAPABILITIES} ({entry.value}) made no "
                f"capability named {name!r}"
            )
        specs.append(named)
    return specs


def has_projections() -> bool:
    """Whether a projection service is installed (``jetagent up`` then runs it)."""
    return bool(plugins.installed(plugins.PROJECTIONS))


def projection_factory() -> ProjectionFactory:
    """The installed projection service's factory: ``factory(nc, settings)``."""
    installed = plugins.installed(plugins.PROJECTIONS)
    if len(installed) != 1:
        which = ", ".join(f"{e.name} ({e.value})" for e in installed.values()) or "none"
        raise ConfigError(
            f"`jetagent projections` runs one projection service, found {which} "
            f"(entry points of {plugins.PROJECTIONS})"
        )
    (entry,) = installed.values()
    factory: ProjectionFactory = plugins.load(entry)
    return factory


def mcp_client() -> McpClient:
    """The MCP client (for ``JETAGENT_MCP``); ConfigError when none is installed."""
    entry = plugins.installed(plugins.MCP).get("tools")
    if entry is None:
        raise ConfigError(
            f"JETAGENT_MCP is set, but no MCP client is installed (the entry point 'tools' "
            f"of {plugins.MCP})"
        )
    client: McpClient = plugins.load(entry)
    return client
