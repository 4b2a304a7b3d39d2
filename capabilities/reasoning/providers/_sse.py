"""Reading a provider's Server-Sent Events stream, and the parsers that turn each API's
stream into the same ``Completion`` its non-streaming answer gives.

OpenAI Chat Completions (``stream: true`` with ``stream_options.include_usage``): chunks
of ``choices[0].delta`` (``content``, ``tool_calls`` fragments by ``index``), a chunk with
the ``finish_reason``, a last chunk with empty ``choices`` and the ``usage``, then
``data: [DONE]`` (https://platform.openai.com/docs/api-reference/chat-streaming).
Anthropic Messages (``stream: true``): ``message_start`` (input usage),
``content_block_start`` / ``_delta`` (``text_delta``, ``input_json_delta``) / ``_stop``,
``message_delta`` (stop reason, output usage), ``message_stop``; ``ping`` and ``error``
events may come at any time (https://docs.anthropic.com/en/api/messages-streaming).

A stream that ends before its last event is a ``MalformedResponse``: the partial text
was only ever a live view, so nothing of it is recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from jetagent.llm import Completion, ToolCall, Usage

from ._contract import parse_arguments
from ._http import MalformedResponse

__all__ = ["AnthropicStream", "OpenAIStream", "iter_sse"]


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) for each event of a text/event-stream."""
    event, data = "message", list[str]()
    async for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


def _object(data: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise MalformedResponse(f"a stream event is not JSON: {data[:80]!r}") from None
    if not isinstance(value, dict):
        raise MalformedResponse("a stream event is not a JSON object")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class OpenAIStream:
    """Folds an OpenAI-compatible chat completion stream."""

    model: str
    provider: str
    _text: list[str] = field(default_factory=list)
    _calls: dict[int, _Call] = field(default_factory=dict)
    _finish: str | None = None
    _usage: Usage | None = None
    _done: bool = False

    def feed(self, event: str, data: str) -> str:
        """Take one event; return the text it adds ("" for none)."""
        if data.strip() == "[DONE]":
            self._done = True
            return ""
        chunk = _object(data)
        if chunk.get("error") is not None:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise MalformedResponse(f"the stream reported an error: {message}", self._usage)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            details = usage.get("prompt_tokens_details")
            cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
            self._usage = Usage(
                input_tokens=_int(usage.get("prompt_tokens")),
                output_tokens=_int(usage.get("completion_tokens")),
                cached_tokens=cached,
            )
        added = ""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                self._text.append(text)
                added += text
            for fragment in delta.get("tool_calls") or ():
                call = self._calls.setdefault(_int(fragment.get("index")), _Call())
                call.id = fragment.get("id") or call.id
                function = fragment.get("function") or {}
                call.name += function.get("name") or ""
                call.arguments += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return added

    def completion(self) -> Completion:
        """The whole answer; raises MalformedResponse if the stream did not end."""
        if not self._done:
            raise MalformedResponse("the stream ended before [DONE]", self._usage)
        calls = []
        for _, call in sorted(self._calls.items()):
            if not call.id or not call.name:
                raise MalformedResponse("a streamed tool call lacks its id or name", self._usage)
            calls.append(
                ToolCall(id=call.id, name=call.name, arguments=parse_arguments(call.arguments))
            )
        return Completion(
            text="".join(self._text),
            tool_calls=tuple(calls),
            usage=self._usage or Usage(),
            model=self.model,
            provider=self.provider,
            finish_reason=self._finish or ("tool_calls" if calls else "stop"),
        )


@dataclass
class _Block:
    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    json: str = ""


# Anthropic's stop reasons in the vocabulary of Completion.finish_reason (OpenAI's),
# so the worker and the metrics see one set of values whichever provider answered.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}


def anthropic_completion(
    texts: list[str],
    calls: list[ToolCall],
    usage: Usage,
    stop: str | None,
    *,
    model: str,
    provider: str,
) -> Completion:
    """An Anthropic answer, streamed or not, as a ``Completion``."""
    stop = stop or ("tool_use" if calls else "end_turn")
    return Completion(
        text="".join(texts),
        tool_calls=tuple(calls),
        usage=usage,
        model=model,
        provider=provider,
        finish_reason=_FINISH.get(stop, stop),
    )


@dataclass
class AnthropicStream:
    """Folds an Anthropic Messages stream."""

    model: str
    provider: str
    _blocks: dict[int, _Block] = field(default_factory=dict)
    _input: int = 0
    _cached: int = 0
    _output: int = 0
    _stop: str | None = None
    _started: bool = False
    _done: bool = False

    def _usage(self) -> Usage:
        return Usage(
            input_tokens=self._input, output_tokens=self._output, cached_tokens=self._cached
        )

    def _read_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        if "input_tokens" in usage:
            self._input = _int(usage["input_tokens"]) + read + written
            self._cached = read
        if "output_tokens" in usage:
            self._output = _int(usage["output_tokens"])  # cumulative: the last one counts

    def feed(self, event: str, data: str) -> str:
        """Take one event; return the text it adds ("" for none)."""
        payload = _object(data)
        kind = payload.get("type", event)
        usage = self._usage() if self._started else None
        if kind == "error":
            error = payload.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else error
            raise MalformedResponse(f"the stream reported an error: {message}", usage)
        if kind == "message_start":
            self._started = True
            self._read_usage((payload.get("message") or {}).get("usage"))
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            self._blocks[_int(payload.get("index"))] = _Block(
                type=str(block.get("type", "")),
                text=str(block.get("text") or ""),
                id=str(block.get("id") or ""),
                name=str(block.get("name") or ""),
            )
            return str(block.get("text") or "")
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            block = self._blocks.get(_int(payload.get("index")))
            if block is None:
                raise MalformedResponse("a delta for a block that never started", usage)
            if delta.get("type") == "text_delta":
                text = str(delta.get("text") or "")
                block.text += text
                return text
            if delta.get("type") == "input_json_delta":
                block.json += str(delta.get("partial_json") or "")
        elif kind == "message_delta":
            self._stop = (payload.get("delta") or {}).get("stop_reason") or self._stop
            self._read_usage(payload.get("usage"))
        elif kind == "message_stop":
            self._done = True
        return ""

    def completion(self) -> Completion:
        """The whole answer; raises MalformedResponse if the stream did not end."""
        usage = self._usage()
        if not self._done:
            raise MalformedResponse(
                "the stream ended before message_stop", usage if self._started else None
            )
        texts, calls = [], []
        for _, block in sorted(self._blocks.items()):
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                if not block.id or not block.name:
                    raise MalformedResponse("a tool_use block lacks its id or name", usage)
                arguments = parse_arguments(block.json) if block.json else {}
                calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
        return anthropic_completion(
            texts, calls, usage, self._stop, model=self.model, provider=self.provider
        )
