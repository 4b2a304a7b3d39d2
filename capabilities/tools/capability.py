"""The ``tools`` capability: run the tool a step names, with validated arguments.

A tool's failure (unknown tool, invalid arguments, timeout, exception) is an output the
model reads on its next turn, never a failed step: the step fails only when the platform
cannot run it at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from capabilities.tools.builtin import BUILTIN_TOOLS
from capabilities.tools.sandbox import announce_protections
from jetagent import CapabilitySpec
from jetagent.plugins import CapabilityContext
from jetagent.subjects import TEMPLATE
from jetagent.worker.tools import Tool, ToolBox

__all__ = ["SERVES_KEY", "dedicated_tools", "tools_capabilities", "tools_capability"]

SERVES_KEY = "serves"
"""A dedicated pool's status report lists the tools it serves under this key; the
orchestrator's registry reads it to tell a served dedicated tool from an unserved one."""


def dedicated_tools(extra: Iterable[Tool] = (), *, name: str = "tools") -> list[str]:
    """The ``dedicated`` tools among the built-ins and ``extra``: each needs its own
    ``jetagent worker <name> --only TOOL`` (``jetagent up`` starts one per tool)."""
    tools = {t.name: t for t in [*BUILTIN_TOOLS, *extra] if t.capability == name}
    return sorted(t.name for t in tools.values() if t.dedicated)


def tools_capability(
    extra: Iterable[Tool] = (),
    *,
    only: Iterable[str] | None = None,
    name: str = "tools",
    processes: int | None = None,
) -> CapabilitySpec:
    """The tools capability serving the built-in tools plus ``extra``.

    Without ``only`` it serves every tool of the capability that is not ``dedicated``;
    ``only`` names dedicated tools to serve instead — a pool of their own, on a consumer
    of their own, so a slow or heavy tool scales without holding up the others.
    ``processes`` sizes the pool of ``runs_in="process"`` tools (``JETAGENT_TOOL_PROCESSES``;
    default one per CPU).
    """
    tools = {t.name: t for t in [*BUILTIN_TOOLS, *extra] if t.capability == name}
    box = ToolBox(tools=tools, processes=processes or os.cpu_count() or 2)
    if only is None:
        served = [t for t in tools.values() if not t.dedicated]
        consumer = None
    else:
        wanted = sorted(set(only))
        unknown = [t for t in wanted if t not in tools]
        if unknown:
            raise ValueError(f"unknown tools for --only: {', '.join(unknown)}")
        shared = [t for t in wanted if not tools[t].dedicated]
        if shared:
            raise ValueError(
                f"{', '.join(shared)} {'is' if len(shared) == 1 else 'are'} served by every "
                f"{name} worker; mark a tool @tool(dedicated=True) to give it a pool of its own"
            )
        served = [tools[t] for t in wanted]
        consumer = f"cap-{name}-" + "-".join(wanted)

    if any(t.name == "python" for t in served):
        # Which sandbox layers this host gives the python tool, in the worker's log at
        # start; where a required one is missing, every call answers why it is refused.
        announce_protections()

    async def close() -> None:
        box.close()

    def report() -> dict[str, Any]:
        # Published every few seconds while this pool runs: "these tools are served now".
        return {SERVES_KEY: [t.name for t in served], "consumer": consumer}

    return CapabilitySpec(
        name=name,
        handler=box.serve,
        # Every tool is announced (dedicated ones too), so the orchestrator knows them all.
        tools=[t.registration() for t in tools.values()],
        subjects=[TEMPLATE.step_scheduled_tool(name, t.name) for t in served],
        consumer=consumer,
        report=report if only is not None else None,
        close=close,
    )


def tools_capabilities(context: CapabilityContext) -> list[CapabilitySpec]:
    """``[tools_capability(...)]`` serving the deployment's tools (``context.tools()``) with
    ``context``'s options: what its ``jetagent.capabilities`` entry point names."""
    only, processes = context.only_tools, context.tool_processes
    return [tools_capability(context.tools(), only=only, processes=processes)]
