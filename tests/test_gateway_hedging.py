"""Hedged calls: a call slower than its model's typical latency gets a second one; the
first good answer wins, the other is cancelled, and both attempts are recorded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from decimal import Decimal

import pytest

from capabilities.reasoning import BreakerSettings, GatewayResult, HttpSettings, ModelGateway
from jetagent.errors import TransientError
from jetagent.llm import Completion, Message, ToolSpec, Usage
from jetagent.models import ModelCatalog, ModelConfig
from tests.fakes.clock import ManualClock
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    anthropic_message,
    hang,
    model_for,
    openai_completion,
    openai_error,
)

FAST = HttpSettings(read_timeout_s=5.0, trust_env=False)
HI = [Message(role="user", content="hi")]
SLOW_S = 5.0  # a "stuck" provider; the test ends long before, closing cuts it short


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def catalog(openai_server: FakeOpenAI, anthropic_server: FakeAnthropic) -> ModelCatalog:
    # Typical latency 0.1 s: with hedge_factor 1 a call still running at 0.1 s is hedged.
    models = [
        model_for(openai_server, "gpt-fast", typical_latency_s=0.1, fallbacks=("claude-fast",)),
        model_for(anthropic_server, "claude-fast", typical_latency_s=0.1),
    ]
    return ModelCatalog(models={m.name: m for m in models}, source="test")


def gateway_for(catalog: ModelCatalog, **options: object) -> ModelGateway:
    return ModelGateway(
        catalog,
        hedge_factor=1.0,
        clock=ManualClock(),
        http_settings=FAST,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def to_fallback(catalog: ModelCatalog) -> AsyncIterator[ModelGateway]:
    async with gateway_for(catalog, hedge_target="fallback") as gateway:
        yield gateway


async def ask(
    gateway: ModelGateway, *, remaining_usd: Decimal | None = None, max_tokens: int = 100
) -> tuple[float, GatewayResult]:
    started = time.monotonic()
    result = await gateway.call(
        models=["gpt-fast"],
        messages=HI,
        tools=[],
        max_tokens=max_tokens,
        remaining_tokens=None,
        remaining_usd=remaining_usd,
    )
    return time.monotonic() - started, result


async def test_slow_call_is_hedged_on_the_fallback_and_the_fast_one_wins(
    to_fallback: ModelGateway, openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    openai_server.script(openai_completion("too late", delay_s=SLOW_S))
    anthropic_server.script(anthropic_message("fast", input_tokens=8, output_tokens=2))

    elapsed, result = await ask(to_fallback)

    assert elapsed < SLOW_S / 2
    assert result.completion.text == "fast"
    primary, hedge = result.attempts
    # The loser was cancelled; whether the provider bills it is unknown, and says so.
    assert (primary.model, primary.outcome, primary.winner) == ("gpt-fast", "cancelled", False)
    assert (primary.usage, primary.usage_status, primary.cost_usd) == (None, "unknown", None)
    assert "usage unknown" in (primary.error or "")
    assert (hedge.model, hedge.outcome, hedge.hedge, hedge.winner) == (
        "claude-fast",
        "ok",
        True,
        True,
    )
    assert hedge.usage == Usage(input_tokens=8, output_tokens=2)
    assert [(d.kind, d.model, d.reason) for d in result.decisions] == [
        ("preferred", "gpt-fast", "preferred"),
        ("hedge", "claude-fast", "hedge: gpt-fast exceeded 0.1 s"),
    ]
    # A cancelled call says nothing about the provider's health.
    assert {s.provider: s.state for s in to_fallback.breaker_states()} == {
        "openai": "closed",
        "anthropic": "closed",
    }


async def test_hedge_on_the_same_model(catalog: ModelCatalog, openai_server: FakeOpenAI) -> None:
    openai_server.script(
        openai_completion("stuck", delay_s=SLOW_S), openai_completion("second try")
    )
    async with gateway_for(catalog, hedge_target="same_model") as gateway:
        _, result = await ask(gateway)

    assert result.completion.text == "second try"
    assert [(a.model, a.outcome, a.hedge) for a in result.attempts] == [
        ("gpt-fast", "cancelled", False),
        ("gpt-fast", "ok", True),
    ]
    assert len(openai_server.requests) == 2


async def test_both_usages_are_recorded_when_the_slow_call_failed_billed(
    to_fallback: ModelGateway, openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    # The primary is hedged at 0.1 s, then fails at 0.3 s having billed its input;
    # the hedge answers at about 0.7 s.
    openai_server.script(
        openai_error(
            502,
            "upstream reset",
            type="server_error",
            usage={"prompt_tokens": 40, "completion_tokens": 0},
            delay_s=0.3,
        )
    )
    anthropic_server.script(
        anthropic_message("hedge answer", input_tokens=9, output_tokens=4, delay_s=0.6)
    )

    _, result = await ask(to_fallback)

    primary, hedge = result.attempts
    assert (primary.outcome, primary.usage) == ("failed", Usage(input_tokens=40))
    assert (hedge.outcome, hedge.winner) == ("ok", True)
    assert result.usage == Usage(input_tokens=49, output_tokens=4)


async def test_hedge_is_skipped_when_the_budget_cannot_pay_for_two_calls(
    to_fallback: ModelGateway, openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    openai_server.script(openai_completion("slow but alone", delay_s=0.3))

    # One call can cost about 1000 * $2/M = $0.002; two cannot fit in $0.003.
    _, result = await ask(to_fallback, remaining_usd=Decimal("0.003"), max_tokens=1000)

    assert result.completion.text == "slow but alone"
    skipped = result.decisions[-1]
    assert skipped.kind == "hedge_skipped"
    assert "cannot cover a second call" in skipped.reason
    assert anthropic_server.requests == []


class GatedPlanner:
    """The first call waits until the second arrives; then both answer at once."""

    name = "offline"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def complete(
        self,
        model: ModelConfig,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec],
        max_tokens: int,
    ) -> Completion:
        self.calls += 1
        call = self.calls
        if call == 1:
            await self.gate.wait()
        else:
            self.gate.set()
        return Completion(
            text=f"answer {call}",
            usage=Usage(input_tokens=10 * call, output_tokens=call),
            model=model.name,
            provider=self.name,
        )

    async def aclose(self) -> None:
        pass


async def test_a_loser_that_also_answered_is_recorded_with_its_usage() -> None:
    catalog = ModelCatalog(
        models={
            "offline-planner": ModelConfig(
                name="offline-planner",
                provider="offline",
                context_window=1000,
                max_output_tokens=100,
                input_per_mtok=Decimal(1),
                output_per_mtok=Decimal(1),
                typical_latency_s=0.05,
            )
        },
        source="test",
    )
    async with ModelGateway(
        catalog, providers={"offline": GatedPlanner()}, hedge_factor=1.0
    ) as gateway:
        result = await gateway.call(
            models=["offline-planner"],
            messages=HI,
            tools=[],
            max_tokens=10,
            remaining_tokens=None,
            remaining_usd=None,
        )

    # Both calls answered (and were billed): one wins, both usages count.
    assert [a.outcome for a in result.attempts] == ["ok", "ok"]
    assert sum(a.winner for a in result.attempts) == 1
    assert result.usage == Usage(input_tokens=30, output_tokens=3)


async def test_cancelling_a_call_frees_a_half_open_trial(
    catalog: ModelCatalog, openai_server: FakeOpenAI
) -> None:
    clock = ManualClock()
    async with ModelGateway(
        catalog,
        breaker_settings=BreakerSettings(failure_threshold=1, cool_down_s=10.0),
        hedge_factor=None,
        max_models_per_call=1,
        clock=clock,
        http_settings=FAST,
    ) as gateway:
        openai_server.script(openai_error(500, "down"))
        with pytest.raises(Exception, match="HTTP 500"):
            await ask(gateway)
        clock.advance(10.0)

        # The trial call hangs, and the worker shutting down cancels it.
        openai_server.script(openai_completion("late", delay_s=SLOW_S))
        call = asyncio.create_task(ask(gateway))
        await asyncio.to_thread(openai_server.wait_for_requests, 2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        # The half-open slot is free again: the next call is the trial.
        openai_server.script(openai_completion("back"))
        _, result = await ask(gateway)
        assert result.completion.text == "back"
        assert {s.provider: s.state for s in gateway.breaker_states()}["openai"] == "closed"


# -- a failed hedge moves on; several hedges; a configured delay ------------------------


async def test_a_rate_limited_hedge_moves_on_without_waiting_for_the_hung_call(
    catalog: ModelCatalog, openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    # The primary hangs; its same-model hedge is rate limited at once. The next
    # candidate (the fallback) is tried right away instead of waiting for the hung call.
    openai_server.script(hang(), openai_error(429, "slow down", type="requests"))
    anthropic_server.script(anthropic_message("from the fallback"))

    async with gateway_for(catalog, hedge_target="same_model") as gateway:
        elapsed, result = await ask(gateway)

    assert elapsed < 2.0, elapsed  # the read timeout (5 s) was never waited out
    assert result.completion.text == "from the fallback"
    assert [(a.model, a.outcome, a.hedge) for a in result.attempts] == [
        ("gpt-fast", "cancelled", False),
        ("gpt-fast", "rate_limited", True),
        ("claude-fast", "ok", True),
    ]
    kinds = [(d.kind, d.model) for d in result.decisions]
    assert kinds == [
        ("preferred", "gpt-fast"),
        ("hedge", "gpt-fast"),
        ("hedge", "claude-fast"),
    ]
    assert "gpt-fast failed" in result.decisions[-1].reason


async def test_hedges_follow_the_configured_count_and_delay(
    openai_server: FakeOpenAI, anthropic_server: FakeAnthropic
) -> None:
    with FakeOpenAI() as backup:
        models = [
            model_for(
                openai_server,
                "gpt-slow",
                typical_latency_s=30.0,  # the old rule would hedge after 60 s
                fallbacks=("claude-slow", "gpt-backup"),
                hedge={"delay_s": 0.3, "max_hedges": 2, "target": "fallback"},
            ),
            model_for(anthropic_server, "claude-slow"),
            model_for(backup, "gpt-backup"),
        ]
        catalog = ModelCatalog(models={m.name: m for m in models}, source="test")
        openai_server.script(hang())
        anthropic_server.script(hang())
        backup.script(openai_completion("third time lucky"))
        async with ModelGateway(
            catalog, clock=ManualClock(), http_settings=FAST, max_models_per_call=3
        ) as gateway:
            started = time.monotonic()
            result = await gateway.call(
                models=["gpt-slow"],
                messages=HI,
                tools=[],
                max_tokens=50,
                remaining_tokens=None,
                remaining_usd=None,
            )

        assert result.completion.text == "third time lucky"
        assert len(openai_server.requests) == 1
        [second] = anthropic_server.requests
        [third] = backup.requests
        # Each hedge went out about delay_s after the one before (generous upper bounds:
        # the box is loaded), and none before.
        # Arrival times at the server, measured from the start: a request's own transit
        # (slow on a loaded box) may delay the second's arrival towards the third's, so
        # each is bounded from the start — k delays, less a few tens of ms of jitter.
        assert 0.25 <= second.at - started < 1.5
        assert 0.55 <= third.at - started < 3.0
        assert [(a.model, a.outcome, a.hedge) for a in result.attempts] == [
            ("gpt-slow", "cancelled", False),
            ("claude-slow", "cancelled", True),
            ("gpt-backup", "ok", True),
        ]
        hedges = [d for d in result.decisions if d.kind == "hedge"]
        assert [d.model for d in hedges] == ["claude-slow", "gpt-backup"]
        assert "hedge.delay_s" in hedges[0].reason


async def test_a_rate_limited_hedge_with_no_other_candidate_is_retried_after_retry_after(
    openai_server: FakeOpenAI,
) -> None:
    # One model, no fallback (the comparison suite's catalog): the primary hangs and its
    # hedge gets a 429 with retry-after 0.3 s. A fresh call goes out once the retry-after
    # has passed, rather than waiting out the hung call's 5 s read timeout (and the
    # step's redelivery after it).
    model = model_for(openai_server, "gpt-solo", typical_latency_s=0.1)
    catalog = ModelCatalog(models={model.name: model}, source="test")
    openai_server.script(
        hang(),
        openai_error(429, "slow down", type="requests", headers={"retry-after": "0.3"}),
        openai_completion("after the retry-after"),
    )
    async with gateway_for(catalog, hedge_target="same_model") as gateway:
        started = time.monotonic()
        result = await gateway.call(
            models=["gpt-solo"],
            messages=HI,
            tools=[],
            max_tokens=50,
            remaining_tokens=None,
            remaining_usd=None,
        )
        elapsed = time.monotonic() - started

    assert result.completion.text == "after the retry-after"
    assert elapsed < 3.0, elapsed  # the read timeout (5 s) was never waited out
    _primary, limited, fresh = openai_server.requests
    assert fresh.at - limited.at >= 0.3  # the provider's retry-after was honoured
    assert [(a.outcome, a.hedge) for a in result.attempts] == [
        ("cancelled", False),
        ("rate_limited", True),
        ("ok", True),
    ]
    kinds = [d.kind for d in result.decisions]
    assert kinds == ["preferred", "hedge", "hedge"], result.decisions
    assert "retry-after" in result.decisions[-1].reason


async def test_a_retry_after_beyond_the_retry_table_is_not_waited_for_and_says_why(
    openai_server: FakeOpenAI,
) -> None:
    # The same race, but the 429 asks for longer than the model's retry.max_wait_s: no
    # fresh call is scheduled, the skip is recorded with its reason, and the hung call's
    # timeout ends the race (the gateway's retry budget then gives up on the same rule).
    model = model_for(
        openai_server,
        "gpt-solo",
        typical_latency_s=0.1,
        retry={"max_wait_s": 0.5},
        timeouts={"total_s": 1.0},
    )
    catalog = ModelCatalog(models={model.name: model}, source="test")
    openai_server.script(
        hang(),
        openai_error(429, "slow down", type="requests", headers={"retry-after": "60"}),
    )
    async with gateway_for(catalog, hedge_target="same_model") as gateway:
        with pytest.raises(TransientError) as raised:
            await gateway.call(
                models=["gpt-solo"],
                messages=HI,
                tools=[],
                max_tokens=50,
                remaining_tokens=None,
                remaining_usd=None,
            )

    assert len(openai_server.requests) == 2  # no third call
    skipped = [d for d in raised.value.details["decisions"] if d["kind"] == "hedge_skipped"]
    assert skipped, raised.value.details
    assert "retry.max_wait_s = 0.5 of gpt-solo" in skipped[0]["reason"]
