"""Tools: type-hinted functions the model may call, with JSON Schemas derived from hints.

::

    @tool(description="Add two numbers.")
    def add(a: float, b: float) -> float:
        return a + b

Arguments are validated against the schema before the function runs; invalid
arguments, an unknown tool, a timeout or an exception become a *tool error* — an
output the model sees (``{"error": ...}``) — never a crash of the worker. A tool may
take a ``StepContext`` as its first parameter (``ctx``) to reach JetStream or the tenant.
Sync tools run in a thread, so they never block the worker's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import msgspec
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from jetagent.llm import ToolSpec
from jetagent.registry import RegisteredTool

__all__ = ["Tool", "ToolBox", "tool"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True, kw_only=True)
class Tool:
    """A callable tool and what the platform needs to know of it."""

    name: str
    description: str
    function: Callable[..., Any]
    arguments: type[BaseModel]
    takes_context: bool = False
    requires_approval: bool = False
    timeout_s: float = 30.0
    max_tokens: int = 0
    capability: str = "tools"
    pool: str | None = None
    """Run in a process pool of this name (CPU-bound tools), or None for the worker."""

    @property
    def spec(self) -> ToolSpec:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return ToolSpec(name=self.name, description=self.description, parameters=schema)

    def registration(self) -> RegisteredTool:
        return RegisteredTool(
            spec=self.spec,
            capability=self.capability,
            requires_approval=self.requires_approval,
            max_tokens=self.max_tokens,
            timeout_s=self.timeout_s,
        )


def tool(
    name: str | None = None,
    *,
    description: str | None = None,
    requires_approval: bool = False,
    timeout_s: float = 30.0,
    max_tokens: int = 0,
    capability: str = "tools",
    pool: str | None = None,
) -> Callable[[Callable[..., Any]], Tool]:
    """Declare a function as a tool; its JSON Schema comes from its type hints."""

    def wrap(function: Callable[..., Any]) -> Tool:
        tool_name = name or function.__name__
        if not _NAME.fullmatch(tool_name):
            raise ValueError(
                f"tool name {tool_name!r}: use letters, digits, '_' or '-' (it is a subject token)"
            )
        hints = get_type_hints(function)
        params = list(inspect.signature(function).parameters.values())
        takes_context = bool(params) and params[0].name == "ctx"
        fields: dict[str, Any] = {}
        for param in params[1:] if takes_context else params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {tool_name}: *args/**kwargs cannot have a schema")
            hint = hints.get(param.name, Any)
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hint, default)
        model = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        doc = inspect.getdoc(function) or ""
        return Tool(
            name=tool_name,
            description=description or doc.split("\n\n")[0] or tool_name,
            function=function,
            arguments=model,
            takes_context=takes_context,
            requires_approval=requires_approval,
            timeout_s=timeout_s,
            max_tokens=max_tokens,
            capability=capability,
            pool=pool,
        )

    return wrap


@dataclass
class ToolBox:
    """A set of tools, run by name with validated arguments."""

    tools: dict[str, Tool] = field(default_factory=dict)
    runners: Mapping[str, Callable[[Tool, dict[str, Any]], Awaitable[Any]]] = field(
        default_factory=dict
    )
    """Per-pool runners (a process pool) for tools declared with ``pool=``."""

    @classmethod
    def of(cls, tools: Iterable[Tool]) -> ToolBox:
        return cls(tools={t.name: t for t in tools})

    def add(self, new: Tool) -> None:
        self.tools[new.name] = new

    async def run(self, name: str, arguments: Any, ctx: Any = None) -> dict[str, Any]:
        """Run a tool; the answer is ``{"result": ...}`` or a model-visible ``{"error": ...}``.

        A tool that calls a model itself returns a ``StepOutput``: its ``calls`` (usage
        and cost) are kept under ``"_calls"`` for the runtime to record.
        """
        found = self.tools.get(name)
        if found is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return {"error": f"unknown tool {name!r}; available tools: {known}"}
        if not isinstance(arguments, dict):
            return {"error": f"arguments of {name} must be a JSON object"}
        try:
            parsed = found.arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            return {"error": f"invalid arguments for {name}: {problems}"}
        kwargs = {k: getattr(parsed, k) for k in found.arguments.model_fields}
        try:
            result = await asyncio.wait_for(self._call(found, kwargs, ctx), found.timeout_s)
        except TimeoutError:
            return {"error": f"{name} did not finish within {found.timeout_s:g} s"}
        except Exception as exc:  # a tool's failure is the model's information, not a crash
            return {"error": f"{name} failed: {type(exc).__name__}: {exc}"}
        calls = getattr(result, "calls", None)
        if calls is not None and hasattr(result, "output"):
            return {"result": msgspec.to_builtins(result.output), "_calls": calls}
        return {"result": msgspec.to_builtins(result)}

    async def _call(self, found: Tool, kwargs: dict[str, Any], ctx: Any) -> Any:
        if found.pool is not None and found.pool in self.runners:
            return await self.runners[found.pool](found, kwargs)
        args = (ctx,) if found.takes_context else ()
        if inspect.iscoroutinefunction(found.function):
            return await found.function(*args, **kwargs)
        return await asyncio.to_thread(found.function, *args, **kwargs)
