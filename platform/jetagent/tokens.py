"""A stated token estimate, used where no provider tokenizer applies.

A token is a run of word characters or one punctuation character (``\\w+|[^\\w\\s]``). The
offline deterministic provider bills exactly this count, so its budgets are exact; for
real providers the orchestrator reserves with it plus a safety factor, and the provider's
reported usage settles the reservation.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from functools import cache, lru_cache

from jetagent.llm import Message

__all__ = [
    "MESSAGE_OVERHEAD",
    "MESSAGE_REF_PREFIX",
    "Tokenizer",
    "count_message_tokens",
    "count_tokens",
    "message_ref_tokens",
    "openai_tokenizer",
]

MESSAGE_REF_PREFIX = "ja-ref:"
"""A message content that stands for a claim-checked payload (``jetagent.payloads``)."""

_TOKEN = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 4
"""Tokens counted per message for its role and framing, as chat formats add."""


Tokenizer = Callable[[str], int]
log = logging.getLogger("jetagent.tokens")


@cache
def openai_tokenizer() -> Tokenizer | None:
    """tiktoken's ``o200k_base`` count, for OpenAI-style models, when it can be loaded.

    Used when ``TIKTOKEN_CACHE_DIR`` holds the encoding file, or when
    ``JETAGENT_TIKTOKEN=1`` allows tiktoken to download it; otherwise (and whenever it
    cannot be loaded) this returns None and the stated estimate is used. Services never
    reach the network for it unless asked to.
    """
    if not (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("JETAGENT_TIKTOKEN") == "1"):
        return None
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("o200k_base")
    except Exception as exc:  # no network, no cache: fall back to the stated estimate
        log.info("tiktoken's o200k_base is unavailable (%s); using the stated estimate", exc)
        return None
    return lambda text: len(encoding.encode(text, disallowed_special=()))


@lru_cache(maxsize=65536)
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


def count_message_tokens(messages: Iterable[Message], tokenizer: Tokenizer | None = None) -> int:
    """Tokens of a conversation: contents, tool calls and per-message framing."""
    count = tokenizer or count_tokens
    total = 0
    for message in messages:
        referenced = message_ref_tokens(message.content)
        content = count(message.content) if referenced is None else referenced
        total += MESSAGE_OVERHEAD + content
        for call in message.tool_calls:
            total += count(call.name) + count(str(call.arguments))
    return total
