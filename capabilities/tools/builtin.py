"""The built-in tools: calculator, a per-tenant key-value memory, HTTP fetch, JSON query and
sandboxed Python."""

from __future__ import annotations

import hashlib
import re

from nats.js.errors import KeyNotFoundError, NotFoundError

from capabilities.tools.calculator import evaluate
from capabilities.tools.web import http_fetch, json_query, python
from jetagent import StepContext, tool

__all__ = [
    "BUILTIN_TOOLS",
    "calculator",
    "http_fetch",
    "json_query",
    "memory_lookup",
    "memory_store",
    "python",
]

MEMORY_BUCKET = "MEMORY"
_MAX_VALUE = 4096


# Microseconds of pure computation (its size is bounded): runs on the loop, no thread hop.
@tool(
    description="Evaluate an arithmetic expression (+ - * / // % ** ^, sqrt, log, pi).",
    runs_in="loop",
)
def calculator(expression: str) -> int | float:
    return evaluate(expression)


def _key(ctx: StepContext, key: str) -> str:
    # KV keys are subject-like: keep readable keys, hash anything else.
    clean = key.strip().lower()
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", clean.replace(" ", "_")):
        clean = "h" + hashlib.sha256(clean.encode()).hexdigest()[:32]
    return f"{ctx.tenant}.{clean.replace(' ', '_')}"


@tool(description="Remember a value under a key for this tenant.")
async def memory_store(ctx: StepContext, key: str, value: str) -> str:
    if len(value) > _MAX_VALUE:
        raise ValueError(f"the value is longer than {_MAX_VALUE} characters")
    kv = await ctx.kv(MEMORY_BUCKET)
    await kv.put(_key(ctx, key), value.encode())
    return f"remembered {key}"


@tool(description="Look up a value remembered under a key for this tenant.")
async def memory_lookup(ctx: StepContext, key: str) -> str:
    kv = await ctx.kv(MEMORY_BUCKET)
    try:
        entry = await kv.get(_key(ctx, key))
    except (KeyNotFoundError, NotFoundError):
        return f"nothing is remembered under {key!r}"
    return (entry.value or b"").decode()


BUILTIN_TOOLS = (calculator, memory_store, memory_lookup, http_fetch, json_query, python)
