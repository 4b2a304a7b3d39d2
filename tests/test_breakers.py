"""Circuit breakers and routing, as pure units: time moves by hand, no I/O."""

from __future__ import annotations

from decimal import Decimal

import pytest

from capabilities.reasoning import STATE_VALUES, BreakerSettings, RoutingDecision
from capabilities.reasoning.breakers import BreakerRegistry, CircuitBreaker
from capabilities.reasoning.routing import format_usd, plan_route
from jetagent.errors import ConfigError, PermanentError
from jetagent.models import ModelCatalog, ModelConfig
from tests.fakes.clock import ManualClock

SETTINGS = BreakerSettings(failure_threshold=3, cool_down_s=30.0)


def breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker(provider="openai", base_url="http://x/v1", settings=SETTINGS, clock=clock)


def fail_once(b: CircuitBreaker) -> None:
    permit = b.try_acquire()
    assert permit is not None
    permit.failed()


def test_opens_after_consecutive_counted_failures_only() -> None:
    clock = ManualClock()
    b = breaker(clock)
    fail_once(b)
    fail_once(b)
    # A success resets the count; rate limits and other releases do not count.
    ok = b.try_acquire()
    assert ok is not None
    ok.succeeded()
    for _ in range(5):
        limited = b.try_acquire()
        assert limited is not None
        limited.release()
    fail_once(b)
    fail_once(b)
    assert b.state == "closed"
    fail_once(b)
    assert (b.state, b.state_value) == ("open", STATE_VALUES["open"]) == ("open", 1)
    assert b.try_acquire() is None
    assert b.retry_in() == 30.0


def test_half_open_lets_one_trial_through_and_closes_on_success() -> None:
    clock = ManualClock()
    b = breaker(clock)
    for _ in range(3):
        fail_once(b)
    clock.advance(29.0)
    assert b.state == "open"
    assert b.retry_in() == pytest.approx(1.0)
    clock.advance(1.0)
    assert (b.state, b.state_value) == ("half_open", 2)

    trial = b.try_acquire()
    assert trial is not None
    assert trial.trial
    # Only one trial at a time; others wait a little.
    assert b.try_acquire() is None
    assert not b.available()
    assert b.retry_in() == SETTINGS.trial_busy_retry_s
    trial.succeeded()
    assert (b.state, b.state_value) == ("closed", 0)
    assert b.snapshot().consecutive_failures == 0


def test_failed_trial_reopens_with_a_fresh_cool_down() -> None:
    clock = ManualClock()
    b = breaker(clock)
    for _ in range(3):
        fail_once(b)
    clock.advance(31.0)
    trial = b.try_acquire()
    assert trial is not None
    trial.failed()
    assert b.state == "open"
    assert b.retry_in() == 30.0


def test_released_trial_frees_the_slot() -> None:
    # A trial that was rate limited or cancelled says nothing about health: the next
    # call gets to be the trial.
    clock = ManualClock()
    b = breaker(clock)
    for _ in range(3):
        fail_once(b)
    clock.advance(30.0)
    first = b.try_acquire()
    assert first is not None
    first.release()
    first.failed()  # a second report of the same permit is ignored
    assert b.state == "half_open"
    assert b.try_acquire() is not None


def test_late_failures_from_before_recovery_are_ignored() -> None:
    clock = ManualClock()
    b = breaker(clock)
    slow = b.try_acquire()  # started while closed, answers after the outage
    assert slow is not None
    for _ in range(3):
        fail_once(b)
    clock.advance(30.0)
    trial = b.try_acquire()
    assert trial is not None
    trial.succeeded()
    slow.failed()
    assert b.snapshot().consecutive_failures == 0


def test_registry_lists_breakers_with_labels() -> None:
    registry = BreakerRegistry(settings=SETTINGS, clock=ManualClock())
    for name, provider, url in [
        ("a", "openai", "http://one/v1"),
        ("b", "openai", "http://one/v1"),
        ("c", "anthropic", "http://two"),
    ]:
        registry.for_model(model(name, provider=provider, base_url=url))
    states = registry.states()
    assert [(s.provider, s.base_url, s.models, s.state, s.state_value) for s in states] == [
        ("openai", "http://one/v1", ("a", "b"), "closed", 0),
        ("anthropic", "http://two", ("c",), "closed", 0),
    ]


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ConfigError):
        BreakerSettings(cool_down_s=0)


# -- routing --------------------------------------------------------------------------------


def model(name: str, **fields: object) -> ModelConfig:
    values: dict[str, object] = {
        "provider": "openai",
        "base_url": "http://one/v1",
        "context_window": 10_000,
        "max_output_tokens": 1000,
        "input_per_mtok": Decimal(1),
        "output_per_mtok": Decimal(2),
        **fields,
    }
    return ModelConfig(name=name, **values)


CATALOG = ModelCatalog(
    models={
        "big": model("big", output_per_mtok=Decimal(40), fallbacks=("other",), cheaper="small"),
        "small": model("small", fallbacks=("other",), cheaper="tiny"),
        "tiny": model("tiny", output_per_mtok=Decimal("0.1"), max_output_tokens=200),
        "other": model("other", provider="anthropic", base_url="http://two", cheaper="small"),
    },
    source="test",
)


def plan(
    *models: str,
    down: frozenset[str] = frozenset(),
    usd: Decimal | None = None,
    tokens: int | None = None,
    max_tokens: int = 1000,
) -> list[tuple[str, int]]:
    result = plan_route(
        CATALOG,
        models=models,
        max_tokens=max_tokens,
        input_tokens=100,
        remaining_tokens=tokens,
        remaining_usd=usd,
        cheaper_margin=Decimal(1),
        unavailable=lambda m: f"circuit open for {m.name}" if m.name in down else None,
    )
    return [(c.model.name, c.max_tokens) for c in result.candidates]


def test_route_prefers_then_falls_back_past_open_circuits() -> None:
    assert plan("big") == [("big", 1000), ("other", 1000)]
    routed = plan_route(
        CATALOG,
        models=["big"],
        max_tokens=1000,
        input_tokens=100,
        remaining_tokens=None,
        remaining_usd=None,
        cheaper_margin=Decimal(1),
        unavailable=lambda m: "circuit open for big" if m.name == "big" else None,
    )
    assert [c.model.name for c in routed.candidates] == ["other"]
    assert routed.candidates[0].skipped_before == ("circuit open for big",)
    assert [m.name for m in routed.skipped] == ["big"]


def test_route_takes_the_cheaper_chain_when_the_budget_is_low() -> None:
    # One call on big can cost (100 * 1 + 1000 * 40) / 1e6 = $0.0401.
    assert plan("big", usd=Decimal("0.05")) == [("big", 1000), ("other", 1000)]
    assert plan("big", usd=Decimal("0.04"))[0] == ("small", 1000)
    # small's max is $0.0021; below it the chain goes on to tiny (max 200 tokens).
    assert plan("big", usd=Decimal("0.002"))[0] == ("tiny", 200)
    routed = plan_route(
        CATALOG,
        models=["big"],
        max_tokens=1000,
        input_tokens=100,
        remaining_tokens=None,
        remaining_usd=Decimal("0.0012"),
        cheaper_margin=Decimal(1),
        unavailable=lambda m: None,
    )
    assert routed.candidates[0].notes[:2] == (
        RoutingDecision(
            kind="cheaper",
            model="small",
            provider="openai",
            reason="cheaper: remaining budget $0.0012 below one call's max $0.0401 on big",
        ),
        RoutingDecision(
            kind="cheaper",
            model="tiny",
            provider="openai",
            reason="cheaper: remaining budget $0.0012 below one call's max $0.0021 on small",
        ),
    )
    assert routed.candidates[0].notes[2].kind == "limit"


def test_route_limits_max_tokens_to_the_model_and_the_token_budget() -> None:
    assert plan("small", max_tokens=5000) == [("small", 1000), ("other", 1000)]
    assert plan("small", tokens=600) == [("small", 500), ("other", 500)]
    with pytest.raises(PermanentError, match="does not cover"):
        plan("small", tokens=100)


def test_route_rejects_unknown_models() -> None:
    with pytest.raises(PermanentError, match="unknown model 'nope'"):
        plan("nope")


def test_format_usd() -> None:
    assert format_usd(Decimal("0.0012")) == "$0.0012"
    assert format_usd(Decimal("0.04000000")) == "$0.04"
    assert format_usd(Decimal("12")) == "$12"


def test_public_names_are_pinned() -> None:
    import capabilities.reasoning as reasoning

    assert sorted(reasoning.__all__) == sorted(
        [
            "ARGUMENTS_ERROR_KEY",
            "RAW_ARGUMENTS_KEY",
            "STATE_VALUES",
            "AnthropicProvider",
            "Attempt",
            "BreakerSettings",
            "BreakerState",
            "CircuitState",
            "GatewayResult",
            "HttpSettings",
            "ModelGateway",
            "OpenAIProvider",
            "Provider",
            "RoutingDecision",
            "attempts_of",
            "decisions_of",
            "invalid_arguments",
        ]
    )
    # Every public class and function documents itself (constants and the Literal alias
    # are documented where they are defined).
    for name in set(reasoning.__all__) - {"CircuitState"}:
        assert getattr(reasoning, name).__doc__ or name.isupper(), name
