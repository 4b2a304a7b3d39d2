"""Tools: functions the model may call, each with a JSON Schema for its arguments.

::

    @tool(description="Add two numbers.")
    def add(a: float, b: float) -> float:
        return a + b

The schema comes from the type hints (or is given, for tools served by MCP servers).
Arguments are validated before the function runs; invalid arguments, an unknown tool,
a timeout or an exception become a *tool error* — an output the model sees
(``{"error": ...}``) — never a crash of the worker. The one exception is a tool that
raises ``TransientError`` (an upstream that is down for now): that is the runtime's to
retry — the step is redelivered after ``retry_after`` — not the model's to reason about.
A tool may take a ``StepContext`` as its first parameter (``ctx``) to reach JetStream
or the tenant.

Where a tool runs, so that no tool stalls the worker's other steps:
``runs_in="loop"`` (async tools; the default for coroutine functions), ``"thread"``
(blocking sync tools; the default for plain functions) or ``"process"`` (CPU-bound
tools: a process pool, so they never hold the worker's GIL). A tool marked
``dedicated=True`` is served only by its own pool of workers
(``jetagent worker tools --only NAME``), so a slow or heavy tool scales on its own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

import jsonschema
import msgspec
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from jetagent.errors import TransientError
from jetagent.llm import ToolSpec
from jetagent.worker._context import StepContext, StepOutput
from jetagent.worker.registry import RegisteredTool

INLINE_RESULT_BYTES = 4096
"""A tool answer up to this size is also spread into the step's output, not only
``content`` (larger ones stay in ``content``, claim-checked when big)."""

__all__ = ["Tool", "ToolBox", "tool"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
RunsIn = Literal["loop", "thread", "process"]


@dataclass(frozen=True, kw_only=True)
class Tool:
    """A callable tool and what the platform needs to know of it."""

    name: str
    description: str
    function: Callable[..., Any]
    parameters: dict[str, Any]
    """JSON Schema of the arguments (what the model is shown)."""
    arguments: type[BaseModel] | None = None
    """A pydantic model of the arguments, for tools declared with type hints."""
    takes_context: bool = False
    requires_approval: bool = False
    timeout_s: float = 30.0
    max_tokens: int = 0
    """Tokens one call may use (an LLM-backed tool); reserved against the token cap."""
    capability: str = "tools"
    dedicated: bool = False
    runs_in: RunsIn = "thread"
    retry_max_runs: int | None = None
    """This tool's own retry budget (runs, and seconds since scheduling) for a
    ``TransientError``; None: the worker's global settings."""
    retry_budget_s: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"tool name {self.name!r}: use letters, digits, '_' or '-' (a subject token)"
            )
        if self.retry_max_runs is not None and self.retry_max_runs < 1:
            raise ValueError(f"tool {self.name}: retry_max_runs must be at least 1 (one run)")
        if self.retry_budget_s is not None and not self.retry_budget_s > 0:
            raise ValueError(f"tool {self.name}: retry_budget_s must be more than 0 seconds")

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def registration(self) -> RegisteredTool:
        return RegisteredTool(
            spec=self.spec,
            capability=self.capability,
            requires_approval=self.requires_approval,
            max_tokens=self.max_tokens,
            timeout_s=self.timeout_s,
            dedicated=self.dedicated,
            retry_max_runs=self.retry_max_runs,
            retry_budget_s=self.retry_budget_s,
        )

    def validate(self, arguments: Any) -> dict[str, Any] | str:
        """The keyword arguments to call with, or a message saying what is wrong."""
        if not isinstance(arguments, dict):
            return f"arguments of {self.name} must be a JSON object"
        if self.arguments is not None:
            try:
                parsed = self.arguments.model_validate(arguments)
            except ValidationError as exc:
                return f"invalid arguments for {self.name}: " + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                    for e in exc.errors()
                )
            return {k: getattr(parsed, k) for k in self.arguments.model_fields}
        errors = sorted(
            jsonschema.Draft202012Validator(self.parameters).iter_errors(arguments),
            key=lambda e: list(e.path),
        )
        if errors:
            return f"invalid arguments for {self.name}: " + "; ".join(
                f"{'.'.join(str(p) for p in e.path) or 'arguments'}: {e.message}" for e in errors
            )
        return dict(arguments)


def tool(
    name: str | None = None,
    *,
    description: str | None = None,
    requires_approval: bool = False,
    timeout_s: float = 30.0,
    max_tokens: int = 0,
    capability: str = "tools",
    dedicated: bool = False,
    runs_in: RunsIn | None = None,
    retry_max_runs: int | None = None,
    retry_budget_s: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]:
    """Declare a function as a tool; its JSON Schema comes from its type hints.

    ``retry_max_runs`` / ``retry_budget_s``: this tool's retry budget for a
    ``TransientError`` (runs, the first included; seconds since the step was scheduled),
    instead of the worker's ``JETAGENT_STEP_MAX_DELIVER`` / ``JETAGENT_STEP_RETRY_BUDGET_S``.
    """

    def wrap(function: Callable[..., Any]) -> Tool:
        tool_name = name or function.__name__
        hints = get_type_hints(function, include_extras=True)
        params = list(inspect.signature(function).parameters.values())
        takes_context = bool(params) and params[0].name == "ctx"
        fields: dict[str, Any] = {}
        for param in params[1:] if takes_context else params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {tool_name}: *args/**kwargs cannot have a schema")
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints.get(param.name, Any), default)
        model = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        schema = model.model_json_schema()
        schema.pop("title", None)
        doc = inspect.getdoc(function) or ""
        is_async = inspect.iscoroutinefunction(function)
        where: RunsIn = runs_in or ("loop" if is_async else "thread")
        if where == "process" and (is_async or takes_context):
            raise TypeError(
                f"tool {tool_name}: a process-pool tool is a plain function of its arguments"
            )
        return Tool(
            name=tool_name,
            description=description or doc.split("\n\n")[0] or tool_name,
            function=function,
            parameters=schema,
            arguments=model,
            takes_context=takes_context,
            requires_approval=requires_approval,
            timeout_s=timeout_s,
            max_tokens=max_tokens,
            capability=capability,
            dedicated=dedicated,
            runs_in=where,
            retry_max_runs=retry_max_runs,
            retry_budget_s=retry_budget_s,
        )

    return wrap


@dataclass
class ToolBox:
    """A set of tools, run by name with validated arguments."""

    tools: dict[str, Tool] = field(default_factory=dict)
    processes: int = field(default_factory=lambda: os.cpu_count() or 2)
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

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
        try:
            kwargs = found.validate(arguments)
        except Exception as exc:  # a schema the validator cannot use (say, a remote $ref)
            return {"error": f"arguments of {name} could not be checked: {exc}"}
        if isinstance(kwargs, str):
            return {"error": kwargs}
        try:
            result = await asyncio.wait_for(self._call(found, kwargs, ctx), found.timeout_s)
        except TimeoutError:
            return {"error": f"{name} did not finish within {found.timeout_s:g} s"}
        except TransientError:
            raise
        except Exception as exc:  # a tool's failure is the model's information, not a crash
            return {"error": f"{name} failed: {type(exc).__name__}: {exc}"}
        calls = getattr(result, "calls", None)
        if calls is not None and hasattr(result, "output"):
            return {"result": msgspec.to_builtins(result.output), "_calls": calls}
        return {"result": msgspec.to_builtins(result)}

    async def serve(self, step: StepContext) -> StepOutput:
        """A capability handler running the tool the step names (``input.tool``, else the
        step's tool) with ``input.arguments``: the answer becomes the step's output, whole
        as ``content`` and, when small, also spread out to stay readable in the event."""
        data = step.input
        answer = await self.run(str(data.get("tool", step.tool)), data.get("arguments"), step)
        calls = answer.pop("_calls", [])
        content = json.dumps(answer)
        output: dict[str, object] = {"content": content}
        if len(content) <= INLINE_RESULT_BYTES:
            output.update(answer)
        else:
            output["ok"] = "error" not in answer
        return StepOutput(output=output, calls=list(calls))

    async def _call(self, found: Tool, kwargs: dict[str, Any], ctx: Any) -> Any:
        args = (ctx,) if found.takes_context else ()
        if found.runs_in == "process":
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.processes)
            loop = asyncio.get_running_loop()
            target = (found.function.__module__, found.function.__qualname__)
            call = functools.partial(_call_in_process, target, kwargs)
            return await loop.run_in_executor(self._pool, call)
        if inspect.iscoroutinefunction(found.function):
            return await found.function(*args, **kwargs)
        if found.runs_in == "loop":
            return found.function(*args, **kwargs)
        return await asyncio.to_thread(found.function, *args, **kwargs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _call_in_process(target: tuple[str, str], kwargs: dict[str, Any]) -> Any:
    """Run a process-pool tool by name: ``@tool`` replaced the module's function with the
    Tool, so the function itself cannot be pickled by reference."""
    import pkgutil

    module, qualname = target
    found: Any = pkgutil.resolve_name(f"{module}:{qualname}")
    function = found.function if isinstance(found, Tool) else found
    return function(**kwargs)
