"""Build the services `jetagent up`, `jetagent worker` and tests run.

The platform knows its built-in capabilities by name; a deployment may add its own with
``JETAGENT_CAPABILITIES=module:function`` entries (each returning CapabilitySpecs).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

from jetagent.errors import ConfigError
from jetagent.models import ModelCatalog
from jetagent.worker import CapabilitySpec

__all__ = ["BUILTIN_CAPABILITIES", "capability_specs", "dedicated_tool_names"]

BUILTIN_CAPABILITIES = ("reasoning", "tools", "summarize", "memory")


def _plugins() -> dict[str, CapabilitySpec]:
    found: dict[str, CapabilitySpec] = {}
    for entry in filter(None, os.environ.get("JETAGENT_CAPABILITIES", "").split(",")):
        module, _, attr = entry.strip().partition(":")
        try:
            factory: Any = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"JETAGENT_CAPABILITIES entry {entry!r}: {exc}") from exc
        for spec in factory():
            found[spec.name] = spec
    return found


def _plugin_tools() -> list[Any]:
    """Tools named by ``JETAGENT_TOOLS=module:attr,...`` (each a Tool or a list of them)."""
    from jetagent.worker.tools import Tool

    tools: list[Tool] = []
    for entry in filter(None, os.environ.get("JETAGENT_TOOLS", "").split(",")):
        module, _, attr = entry.strip().partition(":")
        try:
            found: Any = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"JETAGENT_TOOLS entry {entry!r}: {exc} — the module must be importable by "
                "every process that serves or starts tools (install it, or add its folder "
                "to PYTHONPATH)"
            ) from exc
        tools.extend(found if isinstance(found, list | tuple) else [found])
    for item in tools:
        if not isinstance(item, Tool):
            raise ConfigError(f"JETAGENT_TOOLS: {item!r} is not a jetagent Tool")
    return tools


def dedicated_tool_names() -> list[str]:
    """The configured dedicated tools (built-in or ``JETAGENT_TOOLS``): each needs a
    ``jetagent worker tools --only NAME``. Raises ConfigError when a tool module cannot
    be imported."""
    from capabilities.tools.capability import dedicated_tools

    return dedicated_tools(_plugin_tools())


def capability_specs(
    names: Sequence[str],
    catalog: ModelCatalog,
    *,
    only_tools: Sequence[str] | None = None,
    extra_tools: Sequence[Any] = (),
    tool_processes: int | None = None,
) -> list[CapabilitySpec]:
    """CapabilitySpecs for the capability names given (built in or plugged in);
    ``tool_processes`` sizes the tools worker's process pool (``JETAGENT_TOOL_PROCESSES``)."""
    from capabilities.memory import memory_capability
    from capabilities.reasoning.capability import reasoning_capabilities
    from capabilities.tools.capability import tools_capability

    plugins = _plugins()
    specs: list[CapabilitySpec] = []
    reasoning = None
    for name in names:
        if name in ("reasoning", "summarize"):
            if reasoning is None:
                reasoning = reasoning_capabilities(catalog)
            specs.append(reasoning[0] if name == "reasoning" else reasoning[1])
        elif name == "memory":
            specs.append(memory_capability())
        elif name == "tools":
            tools = [*_plugin_tools(), *extra_tools]
            specs.append(tools_capability(tools, only=only_tools, processes=tool_processes))
        elif name in plugins:
            specs.append(plugins[name])
        else:
            known = ", ".join([*BUILTIN_CAPABILITIES, *plugins])
            raise ConfigError(f"unknown capability {name!r} (known: {known})")
    return specs
