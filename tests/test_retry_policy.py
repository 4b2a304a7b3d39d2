"""The retry budget: count, time since scheduling and the workflow's deadline bound the
runs of a step; rate limits waited out within a run are bounded too."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from jetagent import Status
from jetagent.client import Client
from jetagent.config import Settings
from jetagent.events import StepFailed
from jetagent.jetstream import DirectGetter
from jetagent.testing import eventually
from jetagent.worker.retry import RetryPolicy
from tests.support.checks import assert_one_result_per_step
from tests.support.platform import InProcessPlatform

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_delays_double_up_to_the_cap() -> None:
    policy = RetryPolicy(max_runs=10, base_s=1.0, max_delay_s=5.0, budget_s=1000.0)
    delays = [
        policy.next(run=n, now=T0, scheduled_at=T0, deadline_at=None).delay_s for n in (1, 2, 3, 4)
    ]
    assert delays == [1.0, 2.0, 4.0, 5.0]


def test_the_count_the_budget_and_the_deadline_each_stop_retries() -> None:
    policy = RetryPolicy(max_runs=3, base_s=1.0, max_delay_s=30.0, budget_s=10.0)
    assert policy.next(run=3, now=T0, scheduled_at=T0, deadline_at=None).delay_s is None
    late = T0 + timedelta(seconds=9.5)
    stopped = policy.next(run=1, now=late, scheduled_at=T0, deadline_at=None)
    assert stopped.delay_s is None
    assert "retry budget" in stopped.reason
    deadline = T0 + timedelta(seconds=3)
    after = policy.next(
        run=2, now=T0 + timedelta(seconds=1.5), scheduled_at=T0, deadline_at=deadline
    )
    assert after.delay_s is None  # a 2 s wait would end past the deadline
    assert "deadline" in after.reason
    assert policy.next(run=1, now=T0, scheduled_at=T0, deadline_at=deadline).delay_s == 1.0


def test_retry_after_is_honoured_but_still_bounded() -> None:
    policy = RetryPolicy(max_runs=5, base_s=1.0, max_delay_s=2.0, budget_s=60.0)
    assert policy.next(run=1, now=T0, scheduled_at=T0, deadline_at=None, retry_after=7).delay_s == 7
    assert (
        policy.next(run=1, now=T0, scheduled_at=T0, deadline_at=None, retry_after=70).delay_s
        is None
    )


async def test_a_step_rate_limited_forever_fails_with_the_reason(settings: Settings) -> None:
    config = settings.model_copy(update={"step_rate_limit_retries": 3, "max_step_attempts": 1})
    platform = await InProcessPlatform(config).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction='call throttled {"note": "x"}', tenant="acme", allowed_tools=["throttled"]
        )
        result = await client.result(wid, timeout=30)
        assert result.status is Status.TERMINATED
        assert result.reason == "step_failed"
        [failed] = [e for e in await client.events(wid) if isinstance(e, StepFailed)]
        assert "429" in failed.error
        assert "rate limited 4 times (at most 3 waits)" in failed.error
        assert await assert_one_result_per_step(client, config, [wid]) == 2
    finally:
        await platform.stop()


async def test_a_retried_runs_calls_are_recorded_and_it_is_no_repeated_run(
    settings: Settings,
) -> None:
    platform = await InProcessPlatform(settings).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction='call flaky_once {"note": "x"}', tenant="acme", allowed_tools=["flaky_once"]
        )
        result = await client.result(wid, timeout=30)
        assert result.ok, result
        [step] = [r for r in await client.step_results(wid) if r.tool == "flaky_once"]
        assert step.deliveries == 2
        # The failed run's billed call is in the result with the second run's.
        assert [c.model for c in step.calls] == ["flaky-model", "flaky-model"]
        assert step.spend().tokens == 10
        assert step.interrupted_runs == 0  # it ended with a retry, it did not die
    finally:
        await platform.stop()


async def _dead_letters(client: Client, settings: Settings, source: str) -> list[dict[str, Any]]:
    names = settings.names
    reader = DirectGetter(client.nc, names.dlq_stream, timeout=5)
    await reader.open()
    try:
        return [json.loads(r.data) for r in await reader.scan(names.dlq(source))]
    finally:
        await reader.close()


async def test_a_step_whose_rate_limit_waits_ran_out_is_dead_lettered_once(
    settings: Settings,
) -> None:
    """The README promises a JA_DLQ entry whenever a retry bound ends a step, the bound on
    rate-limit waits included (not only a transient error's runs)."""
    config = settings.model_copy(update={"step_rate_limit_retries": 2, "max_step_attempts": 1})
    platform = await InProcessPlatform(config).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction='call throttled {"note": "x"}', tenant="acme", allowed_tools=["throttled"]
        )
        result = await client.result(wid, timeout=30)
        assert result.status is Status.TERMINATED
        [step] = [r for r in await client.step_results(wid) if r.tool == "throttled"]
        assert not step.ok
        letters = await eventually(lambda: _dead_letters(client, config, "tools"), timeout=10)
        assert [letter["workflow_id"] for letter in letters] == [wid]
        assert "rate limited" in str(letters[0]["reason"])
    finally:
        await platform.stop()
