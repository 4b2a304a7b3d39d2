"""The adapters' streaming forms against local servers speaking each provider's real
streaming wire format: the same Completion as the plain answer (text, tool calls, the
final usage report), every piece of text live, and a stream cut mid-way is a failure
with usage unknown, never a shorter answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from capabilities.reasoning import AnthropicProvider, HttpSettings, OpenAIProvider
from jetagent.errors import TransientError
from jetagent.llm import Message, Usage
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    Reply,
    anthropic_message,
    model_for,
    openai_completion,
)

SETTINGS = HttpSettings(read_timeout_s=5.0, trust_env=False)
ASK = (Message(role="user", content="Say hello to everyone here"),)
TEXT = "Hello to every one of you here"


@pytest.fixture
async def openai() -> AsyncIterator[tuple[FakeOpenAI, OpenAIProvider]]:
    with FakeOpenAI() as server:
        provider = OpenAIProvider(settings=SETTINGS)
        yield server, provider
        await provider.aclose()


@pytest.fixture
async def anthropic() -> AsyncIterator[tuple[FakeAnthropic, AnthropicProvider]]:
    with FakeAnthropic() as server:
        provider = AnthropicProvider(settings=SETTINGS)
        yield server, provider
        await provider.aclose()


class Deltas:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, text: str) -> None:
        self.pieces.append(text)


async def test_openai_stream_gives_the_plain_answer_and_every_delta(
    openai: tuple[FakeOpenAI, OpenAIProvider],
) -> None:
    server, provider = openai
    model = model_for(server, "gpt-s")
    reply = openai_completion(TEXT, prompt_tokens=31, completion_tokens=9, cached_tokens=4)
    server.script(reply, reply)
    plain = await provider.complete(model, ASK, tools=(), max_tokens=64)
    deltas = Deltas()
    streamed = await provider.complete(model, ASK, tools=(), max_tokens=64, on_delta=deltas)
    assert streamed == plain  # text, usage (from the last chunk), finish reason
    assert streamed.usage == Usage(input_tokens=31, output_tokens=9, cached_tokens=4)
    assert len(deltas.pieces) == len(TEXT.split(" "))
    assert "".join(deltas.pieces) == TEXT
    wire = server.requests[1].json
    assert wire["stream"] is True
    assert wire["stream_options"] == {"include_usage": True}
    assert server.requests[0].json["stream"] is False


async def test_openai_streamed_tool_calls_are_assembled(
    openai: tuple[FakeOpenAI, OpenAIProvider],
) -> None:
    server, provider = openai
    model = model_for(server, "gpt-s")
    calls = [("call_1", "calculator", '{"expression": "6 * 7"}'), ("call_2", "noop", "")]
    reply = openai_completion(None, tool_calls=calls)
    server.script(reply, reply)
    plain = await provider.complete(model, ASK, tools=(), max_tokens=64)
    streamed = await provider.complete(model, ASK, tools=(), max_tokens=64, on_delta=Deltas())
    assert streamed == plain
    assert streamed.tool_calls[0].arguments == {"expression": "6 * 7"}


async def test_anthropic_stream_gives_the_plain_answer_and_every_delta(
    anthropic: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    server, provider = anthropic
    model = model_for(server, "claude-s")
    reply = anthropic_message(
        TEXT,
        tool_uses=[("toolu_1", "calculator", {"expression": "2 + 2"})],
        input_tokens=40,
        output_tokens=12,
        cache_read_input_tokens=8,
    )
    server.script(reply, reply)
    plain = await provider.complete(model, ASK, tools=(), max_tokens=64)
    deltas = Deltas()
    streamed = await provider.complete(model, ASK, tools=(), max_tokens=64, on_delta=deltas)
    assert streamed == plain
    assert streamed.usage.output_tokens == 12  # message_delta's final count, not message_start's
    assert "".join(deltas.pieces) == TEXT
    assert server.requests[1].json["stream"] is True
    assert "stream" not in server.requests[0].json


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_stream_cut_mid_way_fails_with_usage_unknown(
    api: str,
    openai: tuple[FakeOpenAI, OpenAIProvider],
    anthropic: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    server, provider = openai if api == "openai" else anthropic
    model = model_for(server, f"{api}-cut")
    full = openai_completion(TEXT) if api == "openai" else anthropic_message(TEXT)
    server.script(full.paced(cut_after=4))
    deltas = Deltas()
    with pytest.raises(TransientError) as info:
        await provider.complete(model, ASK, tools=(), max_tokens=64, on_delta=deltas)
    # Some text was shown live, but no Completion came out of it.
    assert deltas.pieces
    assert "".join(deltas.pieces) != TEXT
    assert info.value.details["usage_status"] == "unknown"


async def test_an_error_event_mid_stream_is_a_transient_failure(
    anthropic: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    server, provider = anthropic
    model = model_for(server, "claude-overloaded")

    def overloaded(message: dict[str, object]) -> list[bytes]:
        events = server_events(message)
        body = '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
        error = f"event: error\ndata: {body}\n\n".encode()
        return [*events[:3], error]

    server_events = server.stream_events
    server.stream_events = overloaded  # type: ignore[method-assign]
    server.script(anthropic_message(TEXT))
    with pytest.raises(TransientError, match="Overloaded"):
        await provider.complete(model, ASK, tools=(), max_tokens=64, on_delta=Deltas())


async def test_a_server_that_ignores_stream_still_gives_the_answer(
    openai: tuple[FakeOpenAI, OpenAIProvider],
) -> None:
    server, provider = openai
    model = model_for(server, "gpt-plain")
    reply = openai_completion(TEXT, prompt_tokens=31, completion_tokens=9)
    server.script(Reply(status=200, body=reply.body, headers=reply.headers, plain=True))
    deltas = Deltas()
    completion = await provider.complete(model, ASK, tools=(), max_tokens=64, on_delta=deltas)
    # The plain body's answer and usage, shown in one piece.
    assert completion.text == TEXT
    assert completion.usage == Usage(input_tokens=31, output_tokens=9)
    assert deltas.pieces == [TEXT]
