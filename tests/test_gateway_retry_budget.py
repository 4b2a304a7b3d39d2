"""Rate limits end: a provider that answers 429 forever costs a bounded number of calls
and a bounded time (the model's retry budget, capped by the workflow's deadline), then
the step fails with a reason the model and the user can read; with a fallback model
configured, the fallback answers at once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from capabilities.reasoning import HttpSettings, ModelGateway, attempts_of, decisions_of
from jetagent import Status
from jetagent.config import Settings
from jetagent.errors import PermanentError
from jetagent.llm import Message
from jetagent.models import ModelCatalog, ModelConfig
from jetagent.testing import eventually
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    Reply,
    anthropic_message,
    hang,
    model_for,
    openai_completion,
    openai_error,
)
from tests.support.platform import InProcessPlatform

KEY_ENV = "JA_TEST_BUDGET_KEY"
FAST = HttpSettings(read_timeout_s=5.0, trust_env=False)
HI = [Message(role="user", content="hi")]


def rate_limited(retry_after_s: float = 0.2) -> Reply:
    return openai_error(
        429,
        "Rate limit reached for requests",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after-ms": str(int(retry_after_s * 1000))},
    )


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    monkeypatch.setenv(KEY_ENV, "sk-budget-test-key")
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        yield openai, anthropic


def catalog_of(*models: ModelConfig) -> ModelCatalog:
    base = ModelCatalog.load()
    return ModelCatalog(models={**base.models, **{m.name: m for m in models}}, source="test")


# -- end to end: orchestrator, worker and a provider that is always rate limited -------


async def test_429_forever_ends_the_workflow_within_its_deadline_with_a_clear_reason(
    settings: Settings, servers: tuple[FakeOpenAI, FakeAnthropic]
) -> None:
    openai, _ = servers
    openai.always(rate_limited(0.2))
    # A budget far larger than the deadline: the deadline is what ends the retries.
    budget = {"max_attempts": 1000, "max_total_s": 600}
    catalog = catalog_of(model_for(openai, "gpt-limited", api_key_env=KEY_ENV, retry=budget))
    deadline_s = 6.0

    platform = await InProcessPlatform(settings, catalog=catalog).start()
    try:
        client = platform.client
        started = time.monotonic()
        wid = await client.submit(
            instruction="What is the capital of Norway?",
            tenant="acme",
            model_preferences={"models": ["gpt-limited"]},
            capability_limits={"deadline_s": deadline_s},
        )
        result = await client.result(wid, timeout=deadline_s + 20)
        elapsed = time.monotonic() - started

        # It ended by its deadline, and the reason names the model and the rate limit,
        # not just "the deadline passed".
        assert elapsed < deadline_s + 1.0, elapsed
        assert result.status is not Status.FINALIZED
        story = f"{result.reason} {result.detail}"
        assert "gpt-limited" in story, story
        assert "rate limit" in story.lower(), story

        # The reasoning step has exactly one result: failed, for good, with every
        # rate-limited call recorded.
        [step] = await eventually(lambda: client.step_results(wid))
        assert not step.ok
        assert step.error is not None
        assert step.error.type == "PermanentError"
        assert not step.error.retryable
        assert "gpt-limited" in step.error.message
        assert "deadline" in step.error.message
        assert len(step.calls) >= 2  # it did retry, and recorded each call
        assert {c.outcome for c in step.calls} == {"rate_limited"}
        # Every request the provider received is a call of the step, each once: the
        # step ran once, and calls journaled as they completed are not counted again
        # from the error that ended it.
        assert len(step.calls) == len(openai.requests)
        # The routing says why it stopped: the retry budget's last decision.
        assert step.routing, "the failed step's routing decisions were dropped"
        assert step.routing[0].reason == "preferred"
        assert step.routing[-1].model == "gpt-limited"
        assert step.routing[-1].reason.startswith("retry exhausted: "), step.routing
        assert "deadline" in step.routing[-1].reason
        retries = [d for d in step.routing if d.reason.startswith("retry: ")]
        assert len(retries) == len(step.calls) - 1
    finally:
        await platform.stop()
    # No call was made after the deadline, by any run of the step.
    assert max(r.at for r in openai.requests) < started + deadline_s


async def test_429_moves_to_the_configured_fallback_at_once(
    settings: Settings, servers: tuple[FakeOpenAI, FakeAnthropic]
) -> None:
    openai, anthropic = servers
    openai.always(rate_limited(30.0))  # waiting it out would take far longer than the test
    anthropic.script(anthropic_message("Oslo."))
    catalog = catalog_of(
        model_for(openai, "gpt-limited", api_key_env=KEY_ENV, fallbacks=("claude-ok",)),
        model_for(anthropic, "claude-ok", api_key_env=KEY_ENV),
    )

    platform = await InProcessPlatform(settings, catalog=catalog).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction="What is the capital of Norway?",
            tenant="acme",
            model_preferences={"models": ["gpt-limited"]},
            capability_limits={"deadline_s": 20},
        )
        result = await client.result(wid, timeout=15)
        assert (result.status, result.output) == (Status.FINALIZED, "Oslo.")
        [step] = await client.step_results(wid)
        assert [(c.model, c.outcome) for c in step.calls] == [
            ("gpt-limited", "rate_limited"),
            ("claude-ok", "ok"),
        ]
        assert step.routing[1].model == "claude-ok"
        assert "HTTP 429" in step.routing[1].reason
        assert len(openai.requests) == 1
    finally:
        await platform.stop()


# -- the gateway's budget ---------------------------------------------------------------


@pytest.fixture
def limited(servers: tuple[FakeOpenAI, FakeAnthropic]) -> FakeOpenAI:
    openai, _ = servers
    openai.always(rate_limited(0.05))
    return openai


async def call(gateway: ModelGateway, *, deadline_s: float | None = None) -> None:
    await gateway.call(
        models=["gpt-limited"],
        messages=HI,
        tools=[],
        max_tokens=50,
        remaining_tokens=None,
        remaining_usd=None,
        deadline_s=deadline_s,
    )


async def test_the_retry_budget_caps_the_number_of_calls(limited: FakeOpenAI) -> None:
    model = model_for(
        limited, "gpt-limited", api_key_env=KEY_ENV, retry={"max_attempts": 3, "max_total_s": 30}
    )
    catalog = ModelCatalog(models={model.name: model}, source="test")
    async with ModelGateway(catalog, http_settings=FAST, hedge_factor=None) as gateway:
        with pytest.raises(PermanentError) as failed:
            await call(gateway)

    assert len(limited.requests) == 3
    message = failed.value.message
    assert "gpt-limited" in message
    assert "rate limited" in message
    assert "3 attempts" in message
    assert "retry.max_attempts" in message
    kinds = [d.kind for d in decisions_of(failed.value)]
    assert kinds.count("retry") == 2
    assert kinds[-1] == "retry_exhausted"


async def test_the_retry_budget_caps_the_time_spent(limited: FakeOpenAI) -> None:
    model = model_for(
        limited,
        "gpt-limited",
        api_key_env=KEY_ENV,
        retry={"max_attempts": 1000, "max_total_s": 1.0},
    )
    catalog = ModelCatalog(models={model.name: model}, source="test")
    started = time.monotonic()
    async with ModelGateway(catalog, http_settings=FAST, hedge_factor=None) as gateway:
        with pytest.raises(PermanentError, match=r"retry\.max_total_s"):
            await call(gateway)
    assert time.monotonic() - started < 2.5
    assert 2 <= len(limited.requests) < 100


async def test_the_workflow_deadline_caps_the_retry_budget(limited: FakeOpenAI) -> None:
    model = model_for(
        limited, "gpt-limited", api_key_env=KEY_ENV, retry={"max_attempts": 1000, "max_total_s": 60}
    )
    catalog = ModelCatalog(models={model.name: model}, source="test")
    started = time.monotonic()
    async with ModelGateway(catalog, http_settings=FAST, hedge_factor=None) as gateway:
        with pytest.raises(PermanentError, match="deadline") as failed:
            await call(gateway, deadline_s=1.0)
    assert time.monotonic() - started < 2.0
    assert "gpt-limited" in failed.value.message


async def test_a_retry_after_beyond_the_budget_fails_at_once(
    servers: tuple[FakeOpenAI, FakeAnthropic],
) -> None:
    openai, _ = servers
    openai.always(rate_limited(60.0))
    model = model_for(openai, "gpt-limited", api_key_env=KEY_ENV, retry={"max_total_s": 5})
    catalog = ModelCatalog(models={model.name: model}, source="test")
    started = time.monotonic()
    async with ModelGateway(catalog, http_settings=FAST, hedge_factor=None) as gateway:
        with pytest.raises(PermanentError, match=r"retry-after of 60\.0 s"):
            await call(gateway)
    # Waiting 60 s only to fail would waste the step's time: it gives up at once.
    assert time.monotonic() - started < 1.5
    assert len(openai.requests) == 1


async def test_a_rate_limit_that_clears_is_retried_and_the_retries_are_recorded(
    servers: tuple[FakeOpenAI, FakeAnthropic],
) -> None:
    openai, _ = servers
    openai.script(rate_limited(0.1), rate_limited(0.1), openai_completion("at last"))
    model = model_for(openai, "gpt-limited", api_key_env=KEY_ENV)
    catalog = ModelCatalog(models={model.name: model}, source="test")
    async with ModelGateway(catalog, http_settings=FAST, hedge_factor=None) as gateway:
        result = await gateway.call(
            models=["gpt-limited"],
            messages=HI,
            tools=[],
            max_tokens=50,
            remaining_tokens=None,
            remaining_usd=None,
        )

    assert result.completion.text == "at last"
    assert [a.outcome for a in result.attempts] == ["rate_limited", "rate_limited", "ok"]
    retries = [d for d in result.decisions if d.kind == "retry"]
    assert [d.reason for d in retries] == [
        "retry: every model was rate limited (attempt 1 of 5); waiting 0.10 s",
        "retry: every model was rate limited (attempt 2 of 5); waiting 0.10 s",
    ]


async def test_a_hung_call_is_cut_at_the_deadline_and_fails_for_good(
    servers: tuple[FakeOpenAI, FakeAnthropic],
) -> None:
    openai, _ = servers
    openai.script(hang())
    model = model_for(openai, "gpt-limited", api_key_env=KEY_ENV)  # call timeout 120 s
    catalog = ModelCatalog(models={model.name: model}, source="test")
    started = time.monotonic()
    async with ModelGateway(catalog, http_settings=FAST, hedge_factor=None) as gateway:
        with pytest.raises(PermanentError, match="deadline") as failed:
            await call(gateway, deadline_s=2.0)
    # Cut a second before the deadline, so the step can still say why.
    assert time.monotonic() - started < 1.8
    [attempt] = attempts_of(failed.value)
    assert (attempt.outcome, attempt.usage_status) == ("failed", "unknown")
    assert "what the workflow's deadline left" in failed.value.message
