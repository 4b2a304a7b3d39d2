"""Each call of a race: how it ran, and how it settled.

A finished call is reported to its circuit breaker exactly once — a success, a transient
failure (a verdict on the endpoint's health), or a release (a rate limit, a permanent
error, a cancelled loser: no verdict) — and becomes the ``Attempt`` the step records. A
cancelled call's usage is unknown (the provider may bill it) and is recorded as such; a
provider that raises something unexpected fails the call loudly instead of the worker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jetagent.errors import CapabilityError, PermanentError, RateLimitedError, TransientError
from jetagent.llm import Completion, Usage

from ._policy import LatencyWindow
from .breakers import Permit
from .records import Attempt, AttemptOutcome, RoutingDecision, UsageStatus
from .routing import Candidate

if TYPE_CHECKING:
    from ._race import RaceResult

__all__ = ["Run", "settle"]


@dataclass(frozen=True, kw_only=True)
class Run:
    """One call of a race: what it calls, its breaker permit, whether it is a hedge."""

    candidate: Candidate
    permit: Permit
    hedge: bool
    started: float


def settle(
    task: asyncio.Task[Completion], run: Run, result: RaceResult, latencies: LatencyWindow
) -> Attempt:
    """Report a finished call to its breaker and turn it into an Attempt."""
    latency = round(time.monotonic() - run.started, 4)
    if task.cancelled():
        run.permit.release()
        return _attempt(
            run,
            "cancelled",
            latency,
            usage=None,
            usage_status="unknown",
            error="cancelled: another call answered first; usage unknown "
            "(the provider may still bill it)",
        )
    exc = task.exception()
    if exc is None:
        run.permit.succeeded()
        latencies.observe(run.candidate.model.name, latency)
        completion = task.result()
        won = result.completion is None
        if won:
            result.completion = completion
        return _attempt(
            run, "ok", latency, usage=completion.usage, usage_status="reported", winner=won
        )
    outcome: AttemptOutcome = "failed"
    error: CapabilityError
    if isinstance(exc, RateLimitedError):
        # The provider is working as designed: no verdict on its health.
        run.permit.release()
        outcome, error = "rate_limited", exc
    elif isinstance(exc, TransientError):
        run.permit.failed()
        error = exc
    elif isinstance(exc, CapabilityError):
        run.permit.release()
        error = exc
    else:
        # A bug in an injected provider (the offline deterministic provider, a test
        # double) must not crash the worker or lose the other attempts: it fails the
        # step, loudly.
        run.permit.release()
        model = run.candidate.model
        error = PermanentError(
            f"provider {model.provider} raised an unexpected "
            f"{type(exc).__name__} for {model.name}: {exc}",
            details={"provider": model.provider, "usage_status": "unknown"},
        )
        error.__cause__ = exc
    result.errors.append(error)
    if isinstance(timeout := error.details.get("timeout"), str):
        model = run.candidate.model
        result.decisions.append(
            RoutingDecision(
                kind="timeout", model=model.name, provider=model.provider, reason=timeout
            )
        )
    # An error with usage was billed; otherwise the provider says whether the request
    # may have been billed unseen ("unknown") or was not ("not_reported").
    status: UsageStatus = "not_reported"
    if error.usage is not None:
        status = "reported"
    elif error.details.get("usage_status") == "unknown":
        status = "unknown"
    return _attempt(
        run, outcome, latency, usage=error.usage, usage_status=status, error=error.message
    )


def _attempt(
    run: Run,
    outcome: AttemptOutcome,
    latency: float,
    *,
    usage: Usage | None,
    usage_status: UsageStatus,
    winner: bool = False,
    error: str | None = None,
) -> Attempt:
    model = run.candidate.model
    return Attempt(
        model=model.name,
        provider=model.provider,
        outcome=outcome,
        usage=usage,
        usage_status=usage_status,
        cost_usd=str(model.cost(usage)) if usage is not None else None,
        latency_s=latency,
        max_tokens=run.candidate.max_tokens,
        hedge=run.hedge,
        winner=winner,
        error=error,
    )
