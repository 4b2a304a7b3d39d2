"""The ``tools`` capability: run the tool a step names, with validated arguments.

A tool's failure (unknown tool, invalid arguments, timeout, exception) is an output the
model reads on its next turn, never a failed step: the step fails only when the platform
cannot run it at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from capabilities.tools.builtin import BUILTIN_TOOLS
from jetagent import CapabilitySpec, StepContext, StepOutput
from jetagent.tools import Tool, ToolBox

__all__ = ["tools_capability"]

_INLINE_RESULT_BYTES = 4096


def tools_capability(
    extra: Iterable[Tool] = (), *, only: Iterable[str] | None = None, name: str = "tools"
) -> CapabilitySpec:
    """The tools capability serving the built-in tools plus ``extra``.

    ``only`` restricts this worker to some tools (a pool of its own for a heavy tool).
    """
    box = ToolBox.of([*BUILTIN_TOOLS, *extra])
    if only is not None:
        wanted = set(only)
        unknown = wanted - set(box.tools)
        if unknown:
            raise ValueError(f"unknown tools for --only: {', '.join(sorted(unknown))}")
        box = ToolBox.of(t for t in box.tools.values() if t.name in wanted)

    async def run(step: StepContext) -> StepOutput:
        data = step.input
        answer = await box.run(str(data.get("tool", step.tool)), data.get("arguments"), step)
        calls = answer.pop("_calls", [])
        content = json.dumps(answer)
        output: dict[str, object] = {"content": content}
        if len(content) <= _INLINE_RESULT_BYTES:
            output.update(answer)  # small results stay readable in the event as well
        else:
            output["ok"] = "error" not in answer
        return StepOutput(output=output, calls=list(calls))

    served = [t for t in box.tools.values() if t.capability == name]
    return CapabilitySpec(
        name=name,
        handler=run,
        tools=[t.registration() for t in box.tools.values()],
        subjects=None
        if only is None
        else [f"{{p}}.wf.*.StepScheduled.{name}.{t.name}" for t in served],
        consumer=None
        if only is None
        else f"cap-{name}-" + "-".join(sorted(t.name for t in served)),
    )
