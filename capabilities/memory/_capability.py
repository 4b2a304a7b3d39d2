"""The ``memory`` capability: the ``remember`` and ``recall`` tools on a worker of their own.

Served like the tools capability — ``ToolBox.serve`` runs the tool a step names, with
validated arguments, and a tool's failure is an output the model reads, never a failed
step — but not by importing it: a capability imports only jetagent (docs/ARCHITECTURE.md §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from capabilities.memory._retrieval import RetrieverFactory, load_retriever_factory
from capabilities.memory._store import (
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TEXT_BYTES,
    MemoryStore,
    Recalled,
    Remembered,
)
from jetagent import CapabilitySpec, StepContext, tool
from jetagent.plugins import CapabilityContext
from jetagent.worker.tools import Tool, ToolBox

__all__ = ["CAPABILITY", "memory_capabilities", "memory_capability", "memory_tools"]

CAPABILITY = "memory"
"""The capability's name: its tools' ``capability`` and its consumer's (``cap-memory``)."""


# The argument bounds, for the schema the model is shown. (jetagent.worker.tools reads hints
# without their Annotated extras today, so MemoryStore checks the same bounds itself.)
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_BYTES)]
Query = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]
Tags = Annotated[Sequence[Tag], Field(max_length=MAX_TAGS)]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT)]


def memory_tools(store: MemoryStore) -> list[Tool]:
    """The ``remember`` and ``recall`` tools, keeping their memories in ``store``."""

    @tool(capability=CAPABILITY)
    async def remember(
        ctx: StepContext,
        text: Text,
        scope: Literal["session", "tenant"] = "session",
        tags: Tags = (),
    ) -> Remembered:
        """Remember a piece of text for later: scope "session" (the default) keeps it for
        this conversation's session, "tenant" for every session of the tenant.

        Tags are extra words to find it by.
        """
        return await store.remember(ctx, text=text, scope=scope, tags=tags)

    @tool(capability=CAPABILITY)
    async def recall(
        ctx: StepContext,
        query: Query,
        scope: Literal["session", "tenant", "both"] = "both",
        limit: Limit = 5,
    ) -> list[Recalled]:
        """Find remembered texts that match a query, best first, each with its score, scope,
        tags and when it was remembered; scope "both" (the default) searches this session's
        memories and the tenant's.
        """
        return await store.recall(ctx, query=query, scope=scope, limit=limit)

    return [remember, recall]


def memory_capability(
    *, retriever: RetrieverFactory | None = None, concurrency: int | None = None
) -> CapabilitySpec:
    """The memory capability (``jetagent worker memory``).

    ``retriever`` makes the ranking model; by default the one
    ``JETAGENT_MEMORY_RETRIEVER=module:factory`` names, else BM25. Each call makes a
    capability with a cache of its own (one per worker).
    """
    store = MemoryStore(retriever=retriever or load_retriever_factory())
    tools = memory_tools(store)
    box = ToolBox.of(tools)

    return CapabilitySpec(
        name=CAPABILITY,
        handler=box.serve,
        concurrency=concurrency,
        tools=[t.registration() for t in tools],
    )


def memory_capabilities(context: CapabilityContext | None = None) -> list[CapabilitySpec]:
    """``[memory_capability()]``: what its ``jetagent.capabilities`` entry point names (a
    capability factory; it needs nothing of the ``context``)."""
    return [memory_capability()]
