"""A stated token estimate, used where no provider tokenizer applies.

A token is a run of word characters or one punctuation character (``\\w+|[^\\w\\s]``). The
offline planner bills exactly this count, so its budgets are exact; for real providers
the orchestrator reserves with it plus a safety factor, and the provider's reported usage
settles the reservation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from jetagent.llm import Message

__all__ = [
    "MESSAGE_OVERHEAD",
    "MESSAGE_REF_PREFIX",
    "count_message_tokens",
    "count_tokens",
    "message_ref_tokens",
]

MESSAGE_REF_PREFIX = "ja-ref:"
"""A message content that stands for a claim-checked payload (``jetagent.payloads``)."""

_TOKEN = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 4
"""Tokens counted per message for its role and framing, as chat formats add."""


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by the stated rule."""
    return len(_TOKEN.findall(text))


def message_ref_tokens(content: str) -> int | None:
    """Tokens a message-content reference stands for, or None if ``content`` is not one."""
    if not content.startswith(MESSAGE_REF_PREFIX):
        return None
    try:
        return int(json.loads(content[len(MESSAGE_REF_PREFIX) :]).get("tokens", 0))
    except (ValueError, AttributeError, TypeError):
        return None


def count_message_tokens(messages: Iterable[Message]) -> int:
    """Tokens of a conversation: contents, tool calls and per-message framing."""
    total = 0
    for message in messages:
        referenced = message_ref_tokens(message.content)
        content = count_tokens(message.content) if referenced is None else referenced
        total += MESSAGE_OVERHEAD + content
        for call in message.tool_calls:
            total += count_tokens(call.name) + count_tokens(str(call.arguments))
    return total
