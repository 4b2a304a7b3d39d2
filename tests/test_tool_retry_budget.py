"""A tool's own retry budget: ``@tool(retry_max_runs=..., retry_budget_s=...)`` overrides
the global ``JETAGENT_STEP_RETRY_*`` / ``JETAGENT_STEP_MAX_DELIVER`` for that tool's steps
(README, "Delivery, retries and recovery"); a tool without one uses the global budget."""

from __future__ import annotations

from datetime import UTC, datetime

from jetagent import Status
from jetagent.config import Settings
from jetagent.events import StepFailed
from jetagent.worker.retry import RetryPolicy
from tests.support.checks import assert_one_result_per_step
from tests.support.platform import InProcessPlatform
from tests.support.tools import DOWN_RUNS, down_budgeted


async def _failed_after(platform: InProcessPlatform, tool: str) -> tuple[str, int, int]:
    client = platform.client
    wid = await client.submit(
        instruction=f'call {tool} {{"note": "x"}}', tenant="acme", allowed_tools=[tool]
    )
    result = await client.result(wid, timeout=60)
    assert result.status is Status.TERMINATED, result
    [failed] = [e for e in await client.events(wid) if isinstance(e, StepFailed)]
    [step] = [r for r in await client.step_results(wid) if r.tool == tool]
    runs = [d for name, w, d in DOWN_RUNS if name == tool and w == wid]
    assert runs == list(range(1, len(runs) + 1)), runs  # each run once, in order
    assert await assert_one_result_per_step(client, platform.settings, [wid]) == 2
    return failed.error, len(runs), step.deliveries


async def test_a_tool_with_its_own_retry_budget_stops_at_it(settings: Settings) -> None:
    config = settings.model_copy(
        update={"step_max_deliver": 4, "max_step_attempts": 1, "step_retry_base_s": 0.05}
    )
    platform = await InProcessPlatform(config).start()
    try:
        error, runs, deliveries = await _failed_after(platform, "down_budgeted")
        assert (runs, deliveries) == (2, 2)
        assert "the upstream is down" in error
        assert "at most 2 runs" in error
        assert "down_budgeted's retry budget" in error

        error, runs, deliveries = await _failed_after(platform, "down_always")
        assert (runs, deliveries) == (4, 4)
        assert "at most 4 runs" in error
        assert "retry budget" not in error.split("at most 4 runs")[1][:40]
    finally:
        await platform.stop()


def test_a_tools_budget_travels_in_its_registration_and_overrides_the_global_one() -> None:
    registered = down_budgeted.registration()
    assert registered.retry_max_runs == 2
    assert registered.retry_budget_s is None
    base = RetryPolicy(max_runs=5, budget_s=300.0)
    policy = base.for_tool(registered)
    assert (policy.max_runs, policy.budget_s) == (2, 300.0)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    decision = policy.next(run=2, now=now, scheduled_at=now, deadline_at=None)
    assert decision.delay_s is None
    assert "down_budgeted's retry budget" in decision.reason
