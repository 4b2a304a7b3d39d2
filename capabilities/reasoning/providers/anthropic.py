"""Anthropic Messages API.

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version: 2023-06-01``.
Wire format: https://docs.anthropic.com/en/api/messages — the system prompt is a
top-level field, not a message; tool calls are ``tool_use`` content blocks of an
assistant turn and their results ``tool_result`` blocks of the next user turn; turns
alternate, so consecutive same-role messages (several tool results) merge into one.
Errors are ``{"type": "error", "error": {"type", "message"}}``; HTTP 529 is
``overloaded_error``.

Usage: Anthropic's ``input_tokens`` excludes cache reads and cache writes, while
jetagent's ``Usage.input_tokens`` counts every input token with ``cached_tokens`` as
the cache-read subset, so the three are added up here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from jetagent.errors import PermanentError
from jetagent.llm import Completion, Message, ToolCall, ToolSpec, Usage
from jetagent.models import ModelConfig

from ._http import HttpProvider, MalformedResponse
from ._sse import AnthropicStream, anthropic_completion

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` header every request carries."""


class _Block(msgspec.Struct):
    # One struct for every block type: unknown types (thinking, server tools) must not
    # make a good answer "malformed"; they are skipped.
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    def to_usage(self) -> Usage:
        read = self.cache_read_input_tokens or 0
        written = self.cache_creation_input_tokens or 0
        return Usage(
            input_tokens=self.input_tokens + read + written,
            output_tokens=self.output_tokens,
            cached_tokens=read,
        )


class _Response(msgspec.Struct):
    content: list[_Block]
    stop_reason: str | None = None
    usage: _Usage | None = None


class AnthropicProvider(HttpProvider):
    """Adapter for the Anthropic Messages API."""

    name = "anthropic"
    wire_usage = _Usage
    stream_type = AnthropicStream
    path = "/v1/messages"

    def headers(self, key: str | None) -> dict[str, str]:
        """JSON content type, the API version, and ``x-api-key`` when there is a key."""
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if key is not None:
            headers["x-api-key"] = key
        return headers

    def request_body(
        self,
        model: ModelConfig,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        *,
        stream: bool = False,
    ) -> dict[str, Any]:
        """A Messages request with the system prompt hoisted out (streamed if asked)."""
        system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
        body: dict[str, Any] = {
            "model": model.name,
            "max_tokens": max_tokens,
            "messages": _turns(messages),
        }
        if stream:
            body["stream"] = True
        if system:
            body["system"] = system
        if tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        return body

    def parse_completion(self, model: ModelConfig, content: bytes) -> Completion:
        """Text blocks joined, ``tool_use`` blocks as tool calls, stop reason, usage."""
        response = self.decode_answer(content, _Response)
        usage = response.usage.to_usage() if response.usage else Usage()
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in response.content:
            if block.type == "text" and block.text:
                texts.append(block.text)
            elif block.type == "tool_use":
                if not block.id or not block.name or not isinstance(block.input, dict):
                    raise MalformedResponse(
                        "a tool_use block lacks its id, name or object input",
                        usage if response.usage else None,
                    )
                calls.append(ToolCall(id=block.id, name=block.name, arguments=block.input))
        stop = response.stop_reason
        return anthropic_completion(texts, calls, usage, stop, model=model.name, provider=self.name)

    def error_info(self, payload: Any) -> tuple[str | None, str | None]:
        """Message and type from ``{"type": "error", "error": {...}}``."""
        if isinstance(payload, dict) and isinstance(error := payload.get("error"), dict):
            message, kind = error.get("message"), error.get("type")
            return (
                str(message) if message is not None else None,
                str(kind) if kind is not None else None,
            )
        return None, None


def _turns(messages: Sequence[Message]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            # Anthropic rejects empty text blocks and empty turns; an empty message
            # carries nothing to lose.
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise PermanentError("a tool message needs the tool_call_id it answers")
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
        ]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls if message.role == "assistant" else ():
        # Unparseable arguments from another provider still travel as an object
        # (with the raw text inside), which is what "input" must be.
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        )
    return blocks
