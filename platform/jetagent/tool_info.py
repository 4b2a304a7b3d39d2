"""What the platform knows of a registered tool, shared by the worker's registry (which
builds it from what workers announce) and the pure workflow core (which decides with it).

A value below both, so neither imports the other for it (docs/ARCHITECTURE.md, "Which
part may know which").
"""

from __future__ import annotations

from dataclasses import dataclass

from jetagent.llm import ToolSpec

__all__ = ["ToolInfo"]


@dataclass(frozen=True, kw_only=True)
class ToolInfo:
    """What the orchestrator knows of a registered tool."""

    spec: ToolSpec
    """The tool as a model sees it: name, description, JSON Schema of the arguments."""
    requires_approval: bool = False
    """A call waits for a human's approval (a ``SignalSent``) before it is scheduled."""
    max_tokens: int = 0
    """Tokens one call may use (an LLM-backed tool); reserved against the token cap."""
    capability: str = "tools"
    """The capability whose workers run it (its steps' ``StepScheduled`` subject)."""
