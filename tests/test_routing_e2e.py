"""A provider outage seen end to end: the workflow completes on the fallback model, and
the step's events, the session view and the metrics say which model answered and why."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from jetagent.config import Settings
from jetagent.models import ModelCatalog
from projections.service import ProjectionService
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    anthropic_message,
    model_for,
    openai_error,
)
from tests.support.platform import InProcessPlatform

KEY_ENV = "JA_TEST_ROUTING_KEY"


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    monkeypatch.setenv(KEY_ENV, "sk-routing-test-key")
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        yield openai, anthropic


async def test_failover_is_recorded_in_events_views_and_metrics(
    settings: Settings, servers: tuple[FakeOpenAI, FakeAnthropic]
) -> None:
    openai, anthropic = servers
    models = [
        model_for(openai, "gpt-big", api_key_env=KEY_ENV, fallbacks=("claude-mid",)),
        model_for(anthropic, "claude-mid", api_key_env=KEY_ENV),
    ]
    base = ModelCatalog.load()
    catalog = ModelCatalog(models={**base.models, **{m.name: m for m in models}}, source="test")
    openai.script(openai_error(500, "The server had an error", type="server_error"))
    anthropic.script(anthropic_message("The capital of Norway is Oslo."))

    platform = await InProcessPlatform(settings, catalog=catalog).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction="What is the capital of Norway?",
            tenant="acme",
            model_preferences={"models": ["gpt-big"]},
        )
        result = await client.result(wid, timeout=30)
        assert result.output == "The capital of Norway is Oslo."

        [step] = await client.step_results(wid)
        assert [(d.model, d.reason.split(":")[0]) for d in step.routing] == [
            ("gpt-big", "preferred"),
            ("claude-mid", "failover"),
        ]
        assert "HTTP 500" in step.routing[1].reason
        assert [(c.model, c.outcome) for c in step.calls] == [
            ("gpt-big", "failed"),
            ("claude-mid", "ok"),
        ]
        assert step.calls[1].cost_usd is not None
        assert step.calls[1].cost_usd > Decimal(0)
        assert len(openai.requests) == 1
        assert len(anthropic.requests) == 1

        # An SRE replaying the streams sees the same story in the projections.
        projections = ProjectionService(client.nc, settings, catalog=catalog)
        await projections.rebuild()
        view = await client.session(wid)
        assert view.steps[0].model == "claude-mid"
        calls = projections.metrics.calls
        assert [k for k in calls if "gpt-big" in k and k.endswith("failed")]
        assert [k for k in calls if "claude-mid" in k and k.endswith("ok")]
    finally:
        await platform.stop()
