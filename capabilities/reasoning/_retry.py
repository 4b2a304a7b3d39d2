"""The retry budget of one gateway call: when every candidate model answered 429, the
call waits (the provider's ``retry-after``, else a short backoff) and tries again, as
long as the preferred model's ``[retry]`` table and the workflow's deadline allow; then
it gives up with a reason that says which limit ended it.

Rate limits are retried here, inside the step, because they say nothing about the
request or the provider's health; other transient failures go back to the worker, whose
redelivery policy retries the step.
"""

from __future__ import annotations

from dataclasses import dataclass

from jetagent.errors import CapabilityError, TransientError
from jetagent.models import ModelConfig

from ._policy import seconds

__all__ = ["REPORT_RESERVE_S", "RetryBudget"]

REPORT_RESERVE_S = 1.0
"""Time kept before the workflow's deadline for a step that gives up to record its
result, so the workflow ends with the step's reason rather than a bare "deadline"."""
_FIRST_BACKOFF_S = 0.5


@dataclass(kw_only=True)
class RetryBudget:
    """Rounds and time one call may spend on rate limits."""

    model: ModelConfig
    """The preferred model, whose ``[retry]`` table applies."""
    started: float
    """``loop.time()`` of the first round."""
    deadline: float | None
    """``loop.time()`` after which no round may still be running (deadline less the
    report reserve), or ``None``."""
    rounds: int = 0

    def next_wait(self, errors: list[CapabilityError], now: float) -> float | str:
        """Seconds to wait before the next round, or why there is none."""
        retry = self.model.retry
        name = self.model.name
        spent = f"{self.rounds} attempts in {seconds(now - self.started)} s"
        if self.rounds >= retry.max_attempts:
            return f"{spent} (retry.max_attempts = {retry.max_attempts} of {name})"
        asked = [
            e.retry_after
            for e in errors
            if isinstance(e, TransientError) and e.retry_after is not None
        ]
        if asked:
            wait = min(asked)
            if wait > retry.max_wait_s:
                return (
                    f"{spent}; the provider's retry-after of {seconds(wait)} s exceeds "
                    f"retry.max_wait_s = {retry.max_wait_s} of {name}"
                )
        else:
            wait = min(_FIRST_BACKOFF_S * 2 ** (self.rounds - 1), retry.max_wait_s)
        if now + wait - self.started >= retry.max_total_s:
            return (
                f"{spent}; waiting {seconds(wait)} s more would pass "
                f"retry.max_total_s = {retry.max_total_s} of {name}"
            )
        if self.deadline is not None and now + wait >= self.deadline:
            left = max(self.deadline + REPORT_RESERVE_S - now, 0.0)
            return (
                f"{spent}; the workflow's deadline is {seconds(left)} s away, too close "
                f"to wait {seconds(wait)} s and try again"
            )
        return wait
