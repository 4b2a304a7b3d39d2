"""The provider adapters against local servers speaking the real wire formats: what is
sent (roles, tool calls and results, max_tokens, headers) and what is understood."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from capabilities.reasoning import (
    ARGUMENTS_ERROR_KEY,
    RAW_ARGUMENTS_KEY,
    AnthropicProvider,
    HttpSettings,
    OpenAIProvider,
    invalid_arguments,
)
from jetagent.llm import Message, ToolCall, ToolSpec, Usage
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    anthropic_message,
    model_for,
    openai_completion,
)

KEY_ENV = "JA_TEST_PROVIDER_KEY"
KEY = "sk-test-0123456789abcdef"
FAST = HttpSettings(
    connect_timeout_s=1.0,
    read_timeout_s=0.2,
    write_timeout_s=1.0,
    pool_timeout_s=1.0,
    trust_env=False,
)
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CONVERSATION = (
    Message(role="system", content="You are terse."),
    Message(role="user", content="Weather in Oslo and Bergen?"),
    Message(
        role="assistant",
        content="",
        tool_calls=(
            ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"}),
            ToolCall(id="call_2", name="get_weather", arguments={"city": "Bergen"}),
        ),
    ),
    Message(role="tool", content="-3 C, snow", tool_call_id="call_1", name="get_weather"),
    Message(role="tool", content="4 C, rain", tool_call_id="call_2", name="get_weather"),
)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def openai() -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(settings=FAST)
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic() -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider(settings=FAST)
    yield provider
    await provider.aclose()


# -- OpenAI-compatible ------------------------------------------------------------------


async def test_openai_answer_and_usage(openai_server: FakeOpenAI, openai: OpenAIProvider) -> None:
    openai_server.script(
        openai_completion("Oslo: snow.", prompt_tokens=120, completion_tokens=9, cached_tokens=64)
    )
    model = model_for(openai_server, "gpt-test", api_key_env=KEY_ENV)

    completion = await openai.complete(
        model, [Message(role="user", content="Hi")], tools=[], max_tokens=50
    )

    assert completion.text == "Oslo: snow."
    assert completion.tool_calls == ()
    assert completion.finish_reason == "stop"
    assert (completion.model, completion.provider) == ("gpt-test", "openai")
    assert completion.usage == Usage(input_tokens=120, output_tokens=9, cached_tokens=64)
    # What went over the wire: the bearer key, JSON, a non-streaming request.
    (request,) = openai_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 50,
        "stream": False,
    }


async def test_openai_sends_tool_calls_results_and_tools(
    openai_server: FakeOpenAI, openai: OpenAIProvider
) -> None:
    openai_server.script(openai_completion("Snow in Oslo, rain in Bergen."))
    model = model_for(openai_server, "gpt-test", api_key_env=KEY_ENV)

    await openai.complete(model, CONVERSATION, tools=[WEATHER], max_tokens=200)

    body = openai_server.requests[0].json
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "tool"]
    assistant = body["messages"][2]
    # A turn that only calls tools has content null; arguments travel as JSON *text*.
    assert assistant["content"] is None
    assert assistant["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "-3 C, snow",
    }
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    assert body["max_tokens"] == 200


async def test_openai_tool_call_answer_with_good_and_invalid_arguments(
    openai_server: FakeOpenAI, openai: OpenAIProvider
) -> None:
    # The model's arguments are JSON text; the second one is cut off mid-string.
    openai_server.script(
        openai_completion(
            None,
            tool_calls=[
                ("call_a", "get_weather", '{"city": "Oslo"}'),
                ("call_b", "get_weather", '{"city": "Ber'),
                ("call_c", "list_cities", ""),
            ],
        )
    )
    model = model_for(openai_server, "gpt-test", api_key_env=KEY_ENV)

    completion = await openai.complete(
        model, [Message(role="user", content="go")], tools=[WEATHER], max_tokens=64
    )

    good, bad, empty = completion.tool_calls
    assert completion.finish_reason == "tool_calls"
    assert completion.text == ""
    assert good == ToolCall(id="call_a", name="get_weather", arguments={"city": "Oslo"})
    assert invalid_arguments(good) is None
    # The unusable one does not crash: its raw text and the reason are kept for the
    # caller, which can tell the model what was wrong.
    assert bad.arguments[RAW_ARGUMENTS_KEY] == '{"city": "Ber'
    assert "not valid JSON" in bad.arguments[ARGUMENTS_ERROR_KEY]
    assert invalid_arguments(bad) == bad.arguments[ARGUMENTS_ERROR_KEY]
    assert empty.arguments == {}

    # Sent back in the history, the model sees exactly the text it wrote.
    openai_server.script(openai_completion("ok"))
    history = [
        Message(role="user", content="go"),
        Message(role="assistant", tool_calls=(bad,)),
        Message(role="tool", tool_call_id="call_b", content="error: invalid JSON arguments"),
    ]
    await openai.complete(model, history, tools=[WEATHER], max_tokens=64)
    sent = openai_server.requests[1].json["messages"][1]["tool_calls"][0]["function"]
    assert sent["arguments"] == '{"city": "Ber'


async def test_openai_local_server_without_key(
    openai_server: FakeOpenAI, openai: OpenAIProvider
) -> None:
    # vLLM/Ollama: no api_key_env, so no Authorization header at all.
    openai_server.script(openai_completion("hi"))
    model = model_for(openai_server, "llama-local")

    await openai.complete(model, [Message(role="user", content="x")], tools=[], max_tokens=8)

    assert "authorization" not in openai_server.requests[0].headers


# -- Anthropic ----------------------------------------------------------------------------


async def test_anthropic_answer_usage_and_headers(
    anthropic_server: FakeAnthropic, anthropic: AnthropicProvider
) -> None:
    anthropic_server.script(
        anthropic_message(
            "Snow.",
            input_tokens=30,
            output_tokens=4,
            cache_read_input_tokens=100,
            cache_creation_input_tokens=20,
        )
    )
    model = model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV)

    completion = await anthropic.complete(
        model,
        [Message(role="system", content="Be terse."), Message(role="user", content="Oslo?")],
        tools=[],
        max_tokens=300,
    )

    assert completion.text == "Snow."
    assert completion.finish_reason == "stop"  # end_turn, in the shared vocabulary
    # Anthropic's input_tokens excludes cache reads and writes; ours counts all input.
    assert completion.usage == Usage(input_tokens=150, output_tokens=4, cached_tokens=100)
    (request,) = anthropic_server.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    # The system prompt is a top-level field, not a message.
    assert request.json == {
        "model": "claude-test",
        "max_tokens": 300,
        "system": "Be terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Oslo?"}]}],
    }


async def test_anthropic_sends_tool_use_and_merged_tool_results(
    anthropic_server: FakeAnthropic, anthropic: AnthropicProvider
) -> None:
    anthropic_server.script(anthropic_message("Snow and rain."))
    model = model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV)

    await anthropic.complete(model, CONVERSATION, tools=[WEATHER], max_tokens=100)

    body = anthropic_server.requests[0].json
    assert body["system"] == "You are terse."
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": WEATHER.parameters,
        }
    ]
    user, assistant, results = body["messages"]
    assert user["role"] == "user"
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {
                "type": "tool_use",
                "id": "call_2",
                "name": "get_weather",
                "input": {"city": "Bergen"},
            },
        ],
    }
    # Both tool results travel in one user turn: Anthropic's turns alternate.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "-3 C, snow"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "4 C, rain"},
        ],
    }


async def test_anthropic_tool_use_answer(
    anthropic_server: FakeAnthropic, anthropic: AnthropicProvider
) -> None:
    anthropic_server.script(
        anthropic_message(
            "Let me check.",
            tool_uses=[("toolu_01", "get_weather", {"city": "Oslo"})],
            output_tokens=30,
        )
    )
    model = model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV)

    completion = await anthropic.complete(
        model, [Message(role="user", content="Oslo?")], tools=[WEATHER], max_tokens=100
    )

    assert completion.text == "Let me check."
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall(id="toolu_01", name="get_weather", arguments={"city": "Oslo"}),
    )


async def test_provider_reprs_name_no_secrets(
    openai: OpenAIProvider, anthropic: AnthropicProvider
) -> None:
    assert repr(openai) == "OpenAIProvider(name='openai')"
    assert repr(anthropic) == "AnthropicProvider(name='anthropic')"
