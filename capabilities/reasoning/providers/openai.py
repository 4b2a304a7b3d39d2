"""OpenAI-compatible Chat Completions (OpenAI, vLLM, Ollama, LiteLLM proxy …).

``POST {base_url}/chat/completions`` with ``Authorization: Bearer <key>`` when the model
names a key. Wire format: https://platform.openai.com/docs/api-reference/chat/create —
assistant turns carry ``tool_calls`` whose ``function.arguments`` is a JSON *string*;
tool results are ``{"role": "tool", "tool_call_id", "content"}`` turns. Errors are
``{"error": {"message", "type", "code"}}``; Ollama and some proxies send
``{"error": "text"}`` and older vLLM a top-level ``message``, so all three are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from jetagent.errors import PermanentError
from jetagent.llm import Completion, Message, ToolCall, ToolSpec, Usage
from jetagent.models import ModelConfig

from ._contract import arguments_text, parse_arguments
from ._http import HttpProvider, MalformedResponse
from ._sse import OpenAIStream

__all__ = ["OpenAIProvider"]


class _Function(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    id: str
    function: _Function


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None

    def to_usage(self) -> Usage:
        details = self.prompt_tokens_details
        return Usage(
            input_tokens=self.prompt_tokens,
            output_tokens=self.completion_tokens,
            cached_tokens=(details.cached_tokens or 0) if details else 0,
        )


class _Response(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None


class OpenAIProvider(HttpProvider):
    """Adapter for OpenAI-compatible Chat Completions endpoints."""

    name = "openai"
    wire_usage = _Usage
    stream_type = OpenAIStream
    path = "/chat/completions"

    def headers(self, key: str | None) -> dict[str, str]:
        """JSON content type, and the bearer token when there is a key."""
        headers = {"content-type": "application/json", "accept": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
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
        """A chat completion request (streamed with the usage in the last chunk)."""
        # max_tokens, not max_completion_tokens: every compatible server (vLLM, Ollama,
        # LiteLLM) understands it, and OpenAI still accepts it for non-reasoning models.
        body: dict[str, Any] = {
            "model": model.name,
            "messages": [_wire_message(m) for m in messages],
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if stream:
            # Without it a stream reports no usage at all (the record needs the provider's).
            body["stream_options"] = {"include_usage": True}
        if tools:
            # An empty "tools" array is rejected by OpenAI, so it is left out instead.
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        return body

    def parse_completion(self, model: ModelConfig, content: bytes) -> Completion:
        """The first choice's text, tool calls, finish reason, and the usage."""
        response = self.decode_answer(content, _Response)
        usage = response.usage.to_usage() if response.usage else Usage()
        if not response.choices:
            raise MalformedResponse("the answer has no choices", usage if response.usage else None)
        choice = response.choices[0]
        message = choice.message
        calls = tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=parse_arguments(c.function.arguments))
            for c in message.tool_calls or ()
        )
        return Completion(
            text=message.content or message.refusal or "",
            tool_calls=calls,
            usage=usage,
            model=model.name,
            provider=self.name,
            finish_reason=choice.finish_reason or ("tool_calls" if calls else "stop"),
        )

    def error_info(self, payload: Any) -> tuple[str | None, str | None]:
        """Message and type from OpenAI's, Ollama's or vLLM's error body."""
        if not isinstance(payload, dict):
            return None, None
        error = payload.get("error")
        if isinstance(error, dict):
            kind = error.get("type") or error.get("code")
            return _str(error.get("message")), _str(kind)
        if isinstance(error, str):
            return error, None
        return _str(payload.get("message")), _str(payload.get("type"))


def _wire_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise PermanentError("a tool message needs the tool_call_id it answers")
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            # OpenAI's own shape for a turn that only calls tools: content null.
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments_text(call)},
                }
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None
