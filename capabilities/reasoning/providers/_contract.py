"""What every provider adapter promises, and how a tool call's unusable arguments travel.

A model may answer a tool call with arguments that are not a JSON object (truncated
output, a stray quote). That must not crash the worker: the adapter keeps the raw text
under ``RAW_ARGUMENTS_KEY`` and the parse error under ``ARGUMENTS_ERROR_KEY``, and the
caller decides (typically: answer the call with a tool result saying what was wrong, so
the model can try again). ``invalid_arguments`` tells the two cases apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from jetagent.llm import Completion, Message, ToolCall, ToolSpec
from jetagent.models import ModelConfig

RAW_ARGUMENTS_KEY = "_raw_arguments"
"""Key of the model's raw argument text when it was not a JSON object."""
ARGUMENTS_ERROR_KEY = "_arguments_error"
"""Key of the reason the raw argument text could not be used."""


@runtime_checkable
class Provider(Protocol):
    """One LLM API (OpenAI-compatible, Anthropic, the offline deterministic provider, …).

    ``complete`` raises only jetagent errors: ``RateLimitedError`` (HTTP 429),
    ``TransientError`` (overload, 5xx, network, timeouts, malformed answers) or
    ``PermanentError`` (the request itself is wrong, or the key is refused). Errors
    carry the usage a provider reported, and ``details["usage_status"]`` says whether
    usage was ``"reported"``, ``"not_reported"`` (the provider answered without it) or
    ``"unknown"`` (the request was sent but no answer came, so it may still be billed).
    """

    @property
    def name(self) -> str:
        """The provider name as the catalog spells it (``openai``, ``anthropic``, …)."""
        ...

    async def complete(
        self,
        model: ModelConfig,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec],
        max_tokens: int,
    ) -> Completion:
        """Ask ``model`` for the next turn of ``messages``."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


def parse_arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """A tool call's arguments from the JSON text a model wrote; never raises.

    Empty text means no arguments. Text that is not a JSON object comes back as
    ``{RAW_ARGUMENTS_KEY: raw, ARGUMENTS_ERROR_KEY: why}``.
    """
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if not raw.strip():
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return {RAW_ARGUMENTS_KEY: raw, ARGUMENTS_ERROR_KEY: f"arguments are not valid JSON: {exc}"}
    if not isinstance(value, dict):
        return {
            RAW_ARGUMENTS_KEY: raw,
            ARGUMENTS_ERROR_KEY: f"arguments must be a JSON object, not {type(value).__name__}",
        }
    return value


def invalid_arguments(call: ToolCall) -> str | None:
    """Why ``call``'s arguments could not be parsed, or ``None`` if they are usable."""
    if RAW_ARGUMENTS_KEY in call.arguments and set(call.arguments) <= {
        RAW_ARGUMENTS_KEY,
        ARGUMENTS_ERROR_KEY,
    }:
        return str(call.arguments.get(ARGUMENTS_ERROR_KEY, "arguments could not be parsed"))
    return None


def arguments_text(call: ToolCall) -> str:
    """The JSON text to send back for ``call``: the model's own raw text when it could
    not be parsed (so the model sees exactly what it wrote), else the encoded object."""
    if invalid_arguments(call) is not None:
        return str(call.arguments[RAW_ARGUMENTS_KEY])
    return msgspec.json.encode(call.arguments).decode()
