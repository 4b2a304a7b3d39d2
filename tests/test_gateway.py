"""ModelGateway against local provider servers: routing, failover, circuit breakers,
budgets, and the records a worker puts into its events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import msgspec
import pytest

from capabilities.reasoning import (
    BreakerSettings,
    GatewayResult,
    HttpSettings,
    ModelGateway,
    attempts_of,
    decisions_of,
)
from jetagent.errors import PermanentError, RateLimitedError, TransientError
from jetagent.llm import Completion, Message, ToolSpec, Usage
from jetagent.models import ModelCatalog, ModelConfig
from tests.fakes.clock import ManualClock
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    anthropic_error,
    anthropic_message,
    model_for,
    openai_completion,
    openai_error,
)

KEY_ENV = "JA_TEST_GATEWAY_KEY"
FAST = HttpSettings(
    connect_timeout_s=1.0, read_timeout_s=1.0, write_timeout_s=1.0, pool_timeout_s=1.0,
    trust_env=False,
)  # fmt: skip
HI = [Message(role="user", content="hi")]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-gateway-test-key")


@pytest.fixture
def catalog(openai_server: FakeOpenAI, anthropic_server: FakeAnthropic) -> ModelCatalog:
    """gpt-big falls back to claude-mid and has a cheaper gpt-small."""
    models = [
        model_for(
            openai_server,
            "gpt-big",
            api_key_env=KEY_ENV,
            input_per_mtok=Decimal(10),
            output_per_mtok=Decimal(30),
            fallbacks=("claude-mid",),
            cheaper="gpt-small",
        ),
        model_for(openai_server, "gpt-small", api_key_env=KEY_ENV, fallbacks=("claude-mid",)),
        model_for(anthropic_server, "claude-mid", api_key_env=KEY_ENV),
    ]
    return ModelCatalog(models={m.name: m for m in models}, source="test")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def gateway(catalog: ModelCatalog, clock: ManualClock) -> AsyncIterator[ModelGateway]:
    async with ModelGateway(
        catalog,
        breaker_settings=BreakerSettings(failure_threshold=2, cool_down_s=30.0),
        hedge_factor=None,
        clock=clock,
        http_settings=FAST,
    ) as gateway:
        yield gateway


async def ask(
    gateway: ModelGateway,
    models: Sequence[str] = ("gpt-big",),
    *,
    max_tokens: int = 100,
    remaining_tokens: int | None = None,
    remaining_usd: Decimal | None = None,
) -> GatewayResult:
    return await gateway.call(
        models=models,
        messages=HI,
        tools=[],
        max_tokens=max_tokens,
        remaining_tokens=remaining_tokens,
        remaining_usd=remaining_usd,
    )


def states(gateway: ModelGateway) -> dict[str, tuple[str, int]]:
    return {s.provider: (s.state, s.state_value) for s in gateway.breaker_states()}


async def test_preferred_model_answers_and_everything_is_recorded(
    gateway: ModelGateway, openai_server: FakeOpenAI
) -> None:
    openai_server.script(openai_completion("hello", prompt_tokens=12, completion_tokens=5))

    result = await ask(gateway)

    assert result.completion.text == "hello"
    (attempt,) = result.attempts
    assert (attempt.model, attempt.provider, attempt.outcome) == ("gpt-big", "openai", "ok")
    assert attempt.winner
    assert not attempt.hedge
    assert attempt.usage == Usage(input_tokens=12, output_tokens=5)
    # 12 input at $10/M + 5 output at $30/M.
    assert Decimal(attempt.cost_usd or "") == Decimal("0.00027")
    assert result.cost_usd == Decimal("0.00027")
    assert [(d.kind, d.model, d.reason) for d in result.decisions] == [
        ("preferred", "gpt-big", "preferred")
    ]
    # The result goes into an event: it survives a JSON round trip unchanged.
    assert msgspec.json.decode(msgspec.json.encode(result), type=GatewayResult) == result


async def test_transient_failure_fails_over_to_the_fallback(
    gateway: ModelGateway, openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    openai_server.script(openai_error(500, "The server had an error", type="server_error"))
    anthropic_server.script(anthropic_message("from claude"))

    result = await ask(gateway)

    assert result.completion.provider == "anthropic"
    assert [(a.model, a.outcome) for a in result.attempts] == [
        ("gpt-big", "failed"),
        ("claude-mid", "ok"),
    ]
    assert result.attempts[0].usage_status == "not_reported"
    kinds = [(d.kind, d.model) for d in result.decisions]
    assert kinds == [("preferred", "gpt-big"), ("failover", "claude-mid")]
    assert "failover: gpt-big failed (openai HTTP 500" in result.decisions[1].reason


async def test_circuit_opens_falls_back_half_opens_and_closes(
    catalog: ModelCatalog,
    clock: ManualClock,
    openai_server: FakeOpenAI,
    anthropic_server: FakeAnthropic,
) -> None:
    async with ModelGateway(
        catalog,
        breaker_settings=BreakerSettings(failure_threshold=2, cool_down_s=30.0),
        hedge_factor=None,
        max_models_per_call=1,  # no failover: each failure reaches the caller
        clock=clock,
        http_settings=FAST,
    ) as gateway:
        # Two counted failures open the OpenAI endpoint's circuit.
        openai_server.script(openai_error(503, "busy"), openai_error(500, "boom"))
        for _ in range(2):
            with pytest.raises(TransientError):
                await ask(gateway)
        assert states(gateway)["openai"] == ("open", 1)

        # While open, calls go to the fallback without touching OpenAI.
        anthropic_server.script(anthropic_message("fallback answer"))
        result = await ask(gateway)
        assert result.completion.model == "claude-mid"
        assert [(d.kind, d.model, d.reason) for d in result.decisions] == [
            (
                "fallback",
                "claude-mid",
                "fallback: circuit open for gpt-big (opened after 2 failures; cool-down 30.0 s)",
            )
        ]
        assert len(openai_server.requests) == 2

        # After the cool-down one trial call goes through; its success closes the circuit.
        clock.advance(30.0)
        assert states(gateway)["openai"] == ("half_open", 2)
        openai_server.script(openai_completion("recovered"))
        result = await ask(gateway)
        assert result.completion.model == "gpt-big"
        assert states(gateway)["openai"] == ("closed", 0)


async def test_failed_trial_reopens_the_circuit(
    gateway: ModelGateway,
    clock: ManualClock,
    openai_server: FakeOpenAI,
    anthropic_server: FakeAnthropic,
) -> None:
    # Two calls, each failing on OpenAI and failing over: the circuit opens.
    openai_server.script(openai_error(500, "a"), openai_error(500, "b"))
    anthropic_server.script(anthropic_message("ok"), anthropic_message("ok"))
    await ask(gateway, ["gpt-small"])
    await ask(gateway, ["gpt-small"])
    assert states(gateway)["openai"] == ("open", 1)

    clock.advance(31.0)
    openai_server.script(openai_error(500, "still broken"))
    anthropic_server.script(anthropic_message("ok again"))
    result = await ask(gateway, ["gpt-small"])

    assert [(a.model, a.outcome) for a in result.attempts] == [
        ("gpt-small", "failed"),
        ("claude-mid", "ok"),
    ]
    assert states(gateway)["openai"] == ("open", 1)


async def test_rate_limits_are_not_failures(openai_server: FakeOpenAI, clock: ManualClock) -> None:
    # One attempt per call: the budget gives up at once, and the breaker is untouched.
    model = model_for(openai_server, "gpt-big", api_key_env=KEY_ENV, retry={"max_attempts": 1})
    catalog = ModelCatalog(models={model.name: model}, source="test")
    async with ModelGateway(
        catalog,
        breaker_settings=BreakerSettings(failure_threshold=1),
        hedge_factor=None,
        max_models_per_call=1,
        clock=clock,
        http_settings=FAST,
    ) as gateway:
        for _ in range(3):
            openai_server.script(openai_error(429, "slow down", headers={"retry-after": "4"}))
            with pytest.raises(PermanentError, match="rate limited on every attempt") as caught:
                await ask(gateway)
            assert isinstance(caught.value.__cause__, RateLimitedError)
            assert caught.value.__cause__.retry_after == 4.0
            (attempt,) = attempts_of(caught.value)
            assert attempt.outcome == "rate_limited"
        assert states(gateway)["openai"] == ("closed", 0)


async def test_no_usable_model_says_when_to_retry(
    catalog: ModelCatalog,
    clock: ManualClock,
    openai_server: FakeOpenAI,
    anthropic_server: FakeAnthropic,
) -> None:
    async with ModelGateway(
        catalog,
        breaker_settings=BreakerSettings(failure_threshold=1, cool_down_s=30.0),
        hedge_factor=None,
        clock=clock,
        http_settings=FAST,
    ) as gateway:
        openai_server.script(openai_error(500, "down"))
        anthropic_server.script(anthropic_error(529, "Overloaded"))
        with pytest.raises(TransientError):
            await ask(gateway)
        clock.advance(12.0)

        with pytest.raises(TransientError) as caught:
            await ask(gateway)

    assert type(caught.value) is TransientError
    assert "no model is usable" in caught.value.message
    assert caught.value.retry_after == pytest.approx(18.0)
    assert len(openai_server.requests) == 1
    assert len(anthropic_server.requests) == 1


async def test_low_budget_routes_to_the_cheaper_model(
    gateway: ModelGateway, openai_server: FakeOpenAI
) -> None:
    openai_server.script(openai_completion("cheap answer"))

    # One gpt-big call can cost 1000 * $30/M = $0.03 and more; $0.01 is left.
    result = await ask(gateway, max_tokens=1000, remaining_usd=Decimal("0.01"))

    assert result.completion.model == "gpt-small"
    assert openai_server.requests[0].json["model"] == "gpt-small"
    cheaper, preferred = result.decisions
    assert (cheaper.kind, cheaper.model) == ("cheaper", "gpt-small")
    assert cheaper.reason.startswith("cheaper: remaining budget $0.01 below one call's max $0.03")
    assert cheaper.reason.endswith(" on gpt-big")
    assert preferred.kind == "preferred"


async def test_max_tokens_is_limited_and_recorded(
    gateway: ModelGateway, openai_server: FakeOpenAI
) -> None:
    openai_server.script(openai_completion("ok"))

    result = await ask(gateway, ["gpt-small"], max_tokens=4000, remaining_tokens=700)

    sent = openai_server.requests[0].json["max_tokens"]
    assert sent == result.attempts[0].max_tokens
    assert sent < 700
    (limit, _) = result.decisions
    assert limit.kind == "limit"
    assert f"max_tokens 4000 → {sent} on gpt-small" in limit.reason


async def test_permanent_error_stops_without_failover(
    gateway: ModelGateway, openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    openai_server.script(openai_error(400, "Invalid 'messages[0].role'"))

    with pytest.raises(PermanentError) as caught:
        await ask(gateway)

    assert "Invalid 'messages[0].role'" in caught.value.message
    assert [a.outcome for a in attempts_of(caught.value)] == ["failed"]
    assert anthropic_server.requests == []
    assert states(gateway)["openai"] == ("closed", 0)


async def test_when_all_attempts_fail_billed_usage_is_kept(
    gateway: ModelGateway, openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    openai_server.script(
        openai_error(
            502,
            "upstream reset",
            type="server_error",
            usage={"prompt_tokens": 1000, "completion_tokens": 100},
        )
    )
    anthropic_server.script(anthropic_error(529, "Overloaded", headers={"retry-after": "3"}))

    with pytest.raises(TransientError) as caught:
        await ask(gateway)

    error = caught.value
    assert type(error) is TransientError
    assert error.usage == Usage(input_tokens=1000, output_tokens=100)
    assert error.retry_after == 3.0
    first, second = attempts_of(error)
    assert (first.model, first.usage_status, first.cost_usd) == ("gpt-big", "reported", "0.013")
    assert (second.model, second.usage, second.usage_status) == ("claude-mid", None, "not_reported")
    assert error.details["cost_usd"] == "0.013"
    assert [d.kind for d in decisions_of(error)] == ["preferred", "failover"]
    assert "gpt-big" in error.message
    assert "claude-mid" in error.message


# -- injected providers (the offline deterministic provider's slot) ----------------------


class ScriptedProvider:
    """An in-process provider, the way the offline deterministic provider plugs in."""

    name = "offline"

    def __init__(self, answer: str = "planned", *, hang: bool = False) -> None:
        self.answer = answer
        self.hang = hang
        self.calls = 0
        self.closed = False

    async def complete(
        self,
        model: ModelConfig,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec],
        max_tokens: int,
    ) -> Completion:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.answer == "crash":
            raise ValueError("planner bug")
        return Completion(
            text=self.answer,
            usage=Usage(input_tokens=3, output_tokens=2),
            model=model.name,
            provider=self.name,
        )

    async def aclose(self) -> None:
        self.closed = True


OFFLINE = ModelCatalog(
    models={
        "offline-planner": ModelConfig(
            name="offline-planner",
            provider="offline",
            context_window=1000,
            max_output_tokens=100,
            input_per_mtok=Decimal("0.5"),
            output_per_mtok=Decimal("1.5"),
            typical_latency_s=0.05,
        )
    },
    source="test",
)


async def test_offline_provider_is_injected_and_stays_the_callers() -> None:
    planner = ScriptedProvider()
    async with ModelGateway(OFFLINE, providers={"offline": planner}, hedge_factor=None) as gateway:
        result = await ask(gateway, ["offline-planner"])

    assert result.completion.text == "planned"
    assert result.attempts[0].cost_usd == str(Decimal("0.0000045"))
    assert not planner.closed  # injected providers belong to the caller


async def test_missing_provider_is_a_permanent_error() -> None:
    async with ModelGateway(OFFLINE, hedge_factor=None) as gateway:
        with pytest.raises(PermanentError, match="needs the 'offline' provider"):
            await ask(gateway, ["offline-planner"])


async def test_call_timeout_is_transient_with_unknown_usage() -> None:
    planner = ScriptedProvider(hang=True)
    async with ModelGateway(
        OFFLINE, providers={"offline": planner}, hedge_factor=None, call_timeout_s=0.1
    ) as gateway:
        with pytest.raises(TransientError, match=r"call timeout of 0\.1 s") as caught:
            await ask(gateway, ["offline-planner"])

    (attempt,) = attempts_of(caught.value)
    assert (attempt.outcome, attempt.usage, attempt.usage_status) == ("failed", None, "unknown")


async def test_a_provider_bug_fails_the_step_without_crashing() -> None:
    planner = ScriptedProvider("crash")
    async with ModelGateway(OFFLINE, providers={"offline": planner}, hedge_factor=None) as gateway:
        with pytest.raises(PermanentError, match="unexpected ValueError") as caught:
            await ask(gateway, ["offline-planner"])

    # The provider's own error is chained, and the bug's traceback behind it.
    assert isinstance(caught.value.__cause__, PermanentError)
    assert isinstance(caught.value.__cause__.__cause__, ValueError)


def test_breaker_states_are_labelled(gateway: ModelGateway, catalog: ModelCatalog) -> None:
    labels = {(s.provider, s.base_url, s.models) for s in gateway.breaker_states()}
    assert labels == {
        ("openai", catalog.get("gpt-big").base_url, ("gpt-big", "gpt-small")),
        ("anthropic", catalog.get("claude-mid").base_url, ("claude-mid",)),
    }
