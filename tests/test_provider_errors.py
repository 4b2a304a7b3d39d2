"""Every way a provider call fails becomes the right jetagent error, with the provider's
own message, the wait it asked for, the usage it reported — and never the API key."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from urllib.parse import quote

import pytest

from capabilities.reasoning import AnthropicProvider, HttpSettings, OpenAIProvider, Provider
from capabilities.reasoning.providers import REDACTED
from capabilities.reasoning.providers._ratelimit import retry_after_s
from capabilities.reasoning.providers._secrets import redact, secret_forms
from jetagent.errors import CapabilityError, PermanentError, RateLimitedError, TransientError
from jetagent.llm import Message, Usage
from jetagent.models import ModelConfig
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    Reply,
    anthropic_error,
    model_for,
    openai_completion,
    openai_error,
)

KEY_ENV = "JA_TEST_PROVIDER_KEY"
KEY = "sk-live-SECRET-4f9a8b7c6d5e"
FAST = HttpSettings(
    connect_timeout_s=1.0, read_timeout_s=0.2, write_timeout_s=1.0, pool_timeout_s=1.0,
    trust_env=False,
)  # fmt: skip
HI = [Message(role="user", content="hi")]
NOW = 1_750_000_000.0


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def openai() -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(settings=FAST, wall_clock=lambda: NOW)
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic() -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider(settings=FAST, wall_clock=lambda: NOW)
    yield provider
    await provider.aclose()


async def fail(provider: Provider, model: ModelConfig) -> CapabilityError:
    with pytest.raises(CapabilityError) as caught:
        await provider.complete(model, HI, tools=[], max_tokens=16)
    return caught.value


# -- status codes -------------------------------------------------------------------------


async def test_openai_429_retry_after_seconds_is_rate_limited(
    openai_server: FakeOpenAI, openai: OpenAIProvider
) -> None:
    openai_server.script(
        openai_error(
            429,
            "Rate limit reached for gpt-test on requests per min (RPM): Limit 3.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": "7"},
        )
    )
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is RateLimitedError
    assert error.retry_after == 7.0
    assert "Rate limit reached for gpt-test" in error.message
    assert error.details["status"] == 429


async def test_429_retry_after_http_date(openai_server: FakeOpenAI, openai: OpenAIProvider) -> None:
    openai_server.script(
        openai_error(429, "slow down", headers={"retry-after": formatdate(NOW + 90, usegmt=True)})
    )
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 90.0


async def test_anthropic_429_uses_ratelimit_reset_headers(
    anthropic_server: FakeAnthropic, anthropic: AnthropicProvider
) -> None:
    # No retry-after: the exhausted limit's reset instant says how long to wait.
    anthropic_server.script(
        anthropic_error(
            429,
            "Number of request tokens has exceeded your per-minute rate limit",
            headers={
                "anthropic-ratelimit-requests-remaining": "40",
                "anthropic-ratelimit-requests-reset": "2025-06-15T15:06:41Z",
                "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-tokens-reset": "2025-06-15T15:07:20Z",
            },
        )
    )
    error = await fail(anthropic, model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV))

    assert isinstance(error, RateLimitedError)
    # NOW is 2025-06-15T15:06:40Z: the exhausted token limit resets in 40 s (the
    # request limit, not exhausted, in 1 s).
    assert error.retry_after == pytest.approx(40.0)
    assert "per-minute rate limit" in error.message


def test_retry_after_parsing() -> None:
    assert retry_after_s({"Retry-After-Ms": "1500", "retry-after": "9"}, now=NOW) == 1.5
    assert retry_after_s({"retry-after": "0.25"}, now=NOW) == 0.25
    assert retry_after_s({"retry-after": "soon"}, now=NOW) is None
    # OpenAI's durations; only the exhausted limit counts when one is exhausted.
    openai_headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m30.5s",
        "x-ratelimit-remaining-tokens": "1200",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert retry_after_s(openai_headers, now=NOW) == 90.5
    assert retry_after_s({"x-ratelimit-reset-tokens": "20ms"}, now=NOW) == pytest.approx(0.02)
    assert retry_after_s({}, now=NOW) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, "server_error"), (502, "bad_gateway"), (503, "service_unavailable")],
)
async def test_openai_5xx_is_transient(
    openai_server: FakeOpenAI, openai: OpenAIProvider, status: int, kind: str
) -> None:
    openai_server.script(openai_error(status, "The server had an error", type=kind))
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is TransientError
    assert f"HTTP {status}" in error.message
    assert "The server had an error" in error.message
    assert error.usage is None
    assert error.details["usage_status"] == "not_reported"


async def test_anthropic_529_overloaded_is_transient(
    anthropic_server: FakeAnthropic, anthropic: AnthropicProvider
) -> None:
    anthropic_server.script(anthropic_error(529, "Overloaded"))
    error = await fail(anthropic, model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV))

    assert type(error) is TransientError
    assert error.details["error_type"] == "overloaded_error"
    assert "Overloaded" in error.message


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "max_tokens: 99999 > 8192, the maximum allowed", "invalid_request_error"),
        (401, "invalid x-api-key", "authentication_error"),
        (403, "Your API key does not have permission", "permission_error"),
        (404, "model: claude-nope", "not_found_error"),
        (413, "Request exceeds the maximum allowed size", "request_too_large"),
    ],
)
async def test_anthropic_client_errors_are_permanent_with_their_message(
    anthropic_server: FakeAnthropic,
    anthropic: AnthropicProvider,
    status: int,
    message: str,
    kind: str,
) -> None:
    anthropic_server.script(anthropic_error(status, message))
    error = await fail(anthropic, model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV))

    assert type(error) is PermanentError
    assert message in error.message
    assert error.details["error_type"] == kind


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_openai_client_errors_are_permanent(
    openai_server: FakeOpenAI, openai: OpenAIProvider, status: int
) -> None:
    openai_server.script(openai_error(status, f"problem {status}", code="some_code"))
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is PermanentError
    assert f"problem {status}" in error.message


async def test_openai_insufficient_quota_429_is_permanent(
    openai_server: FakeOpenAI, openai: OpenAIProvider
) -> None:
    # A 429 that no waiting fixes: retrying it as a rate limit would loop forever.
    openai_server.script(
        openai_error(429, "You exceeded your current quota", type="insufficient_quota")
    )
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is PermanentError


async def test_ollama_error_shape(openai_server: FakeOpenAI, openai: OpenAIProvider) -> None:
    openai_server.script(Reply.json({"error": 'model "llama9" not found'}, status=404))
    error = await fail(openai, model_for(openai_server, "llama9"))

    assert type(error) is PermanentError
    assert 'model "llama9" not found' in error.message


async def test_usage_reported_on_an_error_is_kept(
    openai_server: FakeOpenAI,
    openai: OpenAIProvider,
    anthropic_server: FakeAnthropic,
    anthropic: AnthropicProvider,
) -> None:
    # A proxy that billed the attempt before failing says so; the cost must not be lost.
    openai_server.script(
        openai_error(
            502,
            "upstream closed the stream",
            type="server_error",
            usage={"prompt_tokens": 400, "completion_tokens": 17},
        )
    )
    anthropic_server.script(
        anthropic_error(500, "Internal error", usage={"input_tokens": 90, "output_tokens": 3})
    )

    openai_error_ = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))
    anthropic_error_ = await fail(
        anthropic, model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV)
    )

    assert openai_error_.usage == Usage(input_tokens=400, output_tokens=17)
    assert openai_error_.details["usage_status"] == "reported"
    assert anthropic_error_.usage == Usage(input_tokens=90, output_tokens=3)


# -- bodies, network, timeouts ------------------------------------------------------------


async def test_malformed_body_is_transient(
    openai_server: FakeOpenAI,
    openai: OpenAIProvider,
    anthropic_server: FakeAnthropic,
    anthropic: AnthropicProvider,
) -> None:
    openai_server.script(
        Reply(
            status=200, body=b"<html>502 Bad Gateway</html>", headers={"content-type": "text/html"}
        )
    )
    anthropic_server.script(Reply.json({"type": "message", "content": "not a list"}))

    for provider, model in [
        (openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV)),
        (anthropic, model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV)),
    ]:
        error = await fail(provider, model)
        assert type(error) is TransientError
        assert "malformed response body (HTTP 200)" in error.message
        # The provider answered 200, so it may have billed what we cannot read.
        assert error.details["usage_status"] == "unknown"


async def test_malformed_answer_with_usage_keeps_the_usage(
    openai_server: FakeOpenAI, openai: OpenAIProvider
) -> None:
    openai_server.script(
        Reply.json({"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 0}})
    )
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is TransientError
    assert error.usage == Usage(input_tokens=50)


async def test_read_timeout_is_transient_with_unknown_usage(
    openai_server: FakeOpenAI, openai: OpenAIProvider
) -> None:
    # The server takes longer than the 0.2 s read timeout.
    openai_server.script(openai_completion("late", delay_s=2.0))
    started = time.monotonic()
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is TransientError
    assert "read timeout of 0.2 s" in error.message
    assert error.details["usage_status"] == "unknown"
    assert time.monotonic() - started < 1.5


async def test_connection_refused_is_transient(openai: OpenAIProvider) -> None:
    # A port the OS just handed out and nobody listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = ModelConfig(
        name="gpt-test",
        provider="openai",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key_env=KEY_ENV,
        context_window=1000,
        max_output_tokens=100,
        input_per_mtok=1,
        output_per_mtok=1,
    )
    error = await fail(openai, model)

    assert type(error) is TransientError
    assert "could not connect" in error.message
    assert error.details["usage_status"] == "not_reported"


async def test_missing_key_names_the_variable(
    openai_server: FakeOpenAI, openai: OpenAIProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is PermanentError
    assert KEY_ENV in error.message
    assert openai_server.requests == []


async def test_redirect_is_permanent(openai_server: FakeOpenAI, openai: OpenAIProvider) -> None:
    openai_server.script(Reply(status=308, headers={"location": "https://elsewhere.example/v1"}))
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is PermanentError
    assert "check base_url" in error.message


# -- the key never shows ------------------------------------------------------------------


def assert_no_key(error: CapabilityError, *texts: str) -> None:
    seen = [str(error), repr(error), error.message, repr(error.details), *texts]
    for text in seen:
        assert KEY not in text
        assert "SECRET-4f9a" not in text
    # No chained httpx error (its request still holds the headers) rides along.
    assert error.__cause__ is None
    assert error.__context__ is None


async def test_key_echoed_in_an_error_body_is_redacted(
    openai_server: FakeOpenAI,
    openai: OpenAIProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    openai_server.script(
        openai_error(401, f"Incorrect API key provided: {KEY}.", code="invalid_api_key")
    )
    error = await fail(openai, model_for(openai_server, "gpt-test", api_key_env=KEY_ENV))

    assert type(error) is PermanentError
    assert "Incorrect API key provided: [REDACTED]." in error.message
    # The key was sent (the server saw it) but no log line carries it.
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert_no_key(error, caplog.text)


async def test_key_that_http_cannot_carry_is_refused_before_sending(
    anthropic_server: FakeAnthropic,
    anthropic: AnthropicProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A newline inside a key is an illegal header value. Sent, h11 would refuse it and
    # quote it in an error that httpcore logs at DEBUG level, so it is never sent.
    monkeypatch.setenv(KEY_ENV, "sk-ant-SECRET\nrest-of-the-key")
    caplog.set_level(logging.DEBUG)
    error = await fail(anthropic, model_for(anthropic_server, "claude-test", api_key_env=KEY_ENV))

    assert type(error) is PermanentError
    assert KEY_ENV in error.message
    for text in (str(error), repr(error), repr(error.details), caplog.text):
        assert "SECRET" not in text
        assert "rest-of-the-key" not in text
    assert anthropic_server.requests == []


def test_redaction_covers_escaped_spellings_of_the_key() -> None:
    # httpx/h11 quote header values as bytes reprs; JSON bodies escape; URLs quote.
    key = "sk-ant-SECRET\nrest/of+the-key"
    forms = secret_forms(key)
    for text in [
        f"Illegal header value {key.encode()!r}",
        f"value {key!r}",
        json.dumps({"message": f"bad key {key}"}),
        f"GET /v1?key={quote(key, safe='')}",
    ]:
        redacted = redact(text, forms)
        assert "SECRET" not in redacted, redacted
        assert REDACTED in redacted
    # Placeholder "keys" of local servers are not secrets and are left alone.
    assert secret_forms("x") == ()


async def test_key_in_a_url_is_redacted(
    openai: OpenAIProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some proxies take the key in the URL; a connect error message shows the URL.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = ModelConfig(
        name="gpt-test",
        provider="openai",
        base_url=f"http://127.0.0.1:{port}/v1/{KEY}",
        api_key_env=KEY_ENV,
        context_window=1000,
        max_output_tokens=100,
        input_per_mtok=1,
        output_per_mtok=1,
    )
    error = await fail(openai, model)

    assert type(error) is TransientError
    assert_no_key(error)


@pytest.mark.parametrize("reachable", [True, False])
async def test_no_traceback_frame_holds_the_key_in_plain_text(
    openai_server: FakeOpenAI, openai: OpenAIProvider, reachable: bool
) -> None:
    # Error reporters (Sentry, rich's show_locals) record every frame's local variables.
    openai_server.script(openai_error(500, "boom"))
    model = model_for(openai_server, "gpt-test", api_key_env=KEY_ENV)
    if not reachable:
        openai_server.close()  # connection refused: the httpx error path
    error = await fail(openai, model)

    frames = 0
    tb = error.__traceback__
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            assert KEY not in repr(value), f"{tb.tb_frame.f_code.co_name}: {name}"
        frames += 1
        tb = tb.tb_next
    assert frames >= 3  # the test's helper, complete(), and where the error was raised
