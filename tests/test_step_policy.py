"""The step/ack policy: each outcome of a step maps to one decision, without I/O.

What a handler did (returned, raised ``TransientError``, ``RateLimitedError``,
``PermanentError`` or something unexpected), or how often the step was delivered,
becomes a typed decision that the runtime applies: run again later (``nak(delay)``),
wait within the run, fail with or without a dead letter, or discard.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jetagent.errors import PermanentError, RateLimitedError, TransientError
from jetagent.events import Spend, StepScheduled
from jetagent.llm import Usage
from jetagent.worker._policy import Discard, Fail, RunAgain, StepPolicy, WaitInRun, billed
from jetagent.worker.calls import CALLS_RECORDED
from jetagent.worker.retry import RetryPolicy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RETRY = RetryPolicy(max_runs=3, base_s=1.0, max_delay_s=30.0, budget_s=300.0)
POLICY = StepPolicy(rate_limit_waits=2)


def _step(*, deadline_s: float | None = None) -> StepScheduled:
    return StepScheduled(
        workflow_id="wf-1",
        at=NOW,
        step_id="s1",
        capability="tools",
        tool="lookup",
        iteration=1,
        input={},
        reservation=Spend(),
        tenant="acme",
        deadline_at=None if deadline_s is None else NOW + timedelta(seconds=deadline_s),
    )


def _after(
    exc: Exception, *, run: int = 1, waits: int = 0, step: StepScheduled | None = None
) -> WaitInRun | RunAgain | Fail:
    return POLICY.after_error(exc, step=step or _step(), retry=RETRY, run=run, waits=waits, now=NOW)


def test_a_transient_error_runs_again_after_its_retry_after() -> None:
    exc = TransientError("upstream down", retry_after=4.0, usage=Usage(input_tokens=7))
    decision = _after(exc)
    assert isinstance(decision, RunAgain)
    assert decision.delay_s == 4.0
    assert decision.why == "upstream down"
    # What the failed call was billed goes with the run's end.
    assert [c.usage for c in decision.billed] == [Usage(input_tokens=7)]


def test_a_transient_error_past_the_budget_fails_and_is_dead_lettered() -> None:
    decision = _after(TransientError("upstream down"), run=3)
    assert isinstance(decision, Fail)
    assert decision.error.type == "TransientError"
    assert decision.error.retryable
    assert "not retried: failed 3 times (at most 3 runs)" in decision.error.message
    assert decision.dead_letter == "TransientError: upstream down"


def test_a_transient_error_never_runs_past_the_workflows_deadline() -> None:
    decision = _after(TransientError("down", retry_after=10.0), step=_step(deadline_s=5.0))
    assert isinstance(decision, Fail)
    assert "deadline" in decision.error.message


def test_a_permanent_error_fails_at_once_without_a_dead_letter() -> None:
    exc = PermanentError(
        "bad input", details={"decisions": [{"model": "m1", "reason": "preferred"}]}
    )
    decision = _after(exc)
    assert isinstance(decision, Fail)
    assert (decision.error.type, decision.error.retryable) == ("PermanentError", False)
    assert decision.dead_letter is None
    assert [r.model for r in decision.routing] == ["m1"]


def test_an_unexpected_exception_is_retried_then_failed_with_its_traceback() -> None:
    def broken() -> None:
        raise ValueError("a bug")

    try:
        broken()
    except ValueError as exc:
        first, last = _after(exc, run=1), _after(exc, run=3)
    assert isinstance(first, RunAgain)
    assert first.why == "ValueError('a bug')"
    assert first.delay_s == 1.0  # base * 2^0
    assert isinstance(last, Fail)
    assert (last.error.type, last.error.retryable) == ("ValueError", False)
    assert last.dead_letter is not None
    assert "in broken" in last.dead_letter  # a short traceback
    assert last.dead_letter.strip().splitlines()[-1] == "ValueError: a bug"


def test_rate_limits_are_waited_out_within_the_run_a_bounded_number_of_times() -> None:
    exc = RateLimitedError("slow down", retry_after=0.5, usage=Usage(input_tokens=3))
    first = _after(exc, waits=0)
    assert isinstance(first, WaitInRun)
    assert (first.delay_s, first.waits) == (0.5, 1)
    assert [c.outcome for c in first.billed] == ["rate_limited"]
    # A wait is not a failed run: the run count does not end it, the waits do.
    assert isinstance(_after(exc, run=3, waits=1), WaitInRun)
    last = _after(exc, waits=2)
    assert isinstance(last, Fail)
    assert last.error.type == "RateLimitRetriesExhausted"
    assert last.error.retryable
    assert "rate limited 3 times (at most 2 waits)" in last.error.message
    assert last.dead_letter == last.error.message
    assert last.report_billed  # journaled as it happened, like the waits' charges


def test_a_delivery_past_the_last_run_fails_without_running() -> None:
    decision = POLICY.exhausted(deliveries=4)
    assert decision.error.type == "MaxDeliveriesExceeded"
    assert "ran 3 times without completing" in decision.error.message
    assert decision.dead_letter == decision.error.message


def test_an_unreadable_message_is_discarded_as_poison_and_a_foreign_one_quietly() -> None:
    assert POLICY.unreadable("not JSON") == Discard(poison="undecodable StepScheduled: not JSON")
    assert POLICY.not_a_step() == Discard()


def test_calls_already_reported_are_not_billed_again() -> None:
    reported = TransientError("down", usage=Usage(input_tokens=5), details={CALLS_RECORDED: True})
    assert billed(reported) == []
