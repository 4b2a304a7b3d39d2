"""Provider-neutral values of a model conversation: messages, tool calls, usage.

They are msgspec Structs because they travel inside events (a reasoning step's input and
result); pure values, no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["Completion", "Message", "ToolCall", "ToolSpec", "Usage"]

Role = Literal["system", "user", "assistant", "tool"]


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens a provider counted (and billed) for one call."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    """Input tokens served from the provider's prompt cache (a subset of input_tokens)."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A model's request to run one tool."""

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One turn of a conversation."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    """For an assistant turn: the tools the model asked for."""
    tool_call_id: str | None = None
    """For a tool turn: which call this is the result of."""
    name: str | None = None
    """For a tool turn: the tool's name."""


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as a model sees it: name, description, JSON Schema of the arguments."""

    name: str
    description: str
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """What one model call answered."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str
    provider: str
    finish_reason: str = "stop"
