"""What a gateway call that got no answer raises: one CapabilityError that carries
every attempt, decision and billed token in ``details`` and ``usage``, and says why in
words the model and the user can read."""

from __future__ import annotations

import msgspec

from jetagent.errors import CapabilityError, PermanentError, RateLimitedError, TransientError

from .records import Attempt, RoutingDecision, sum_cost, sum_usage

__all__ = ["exhausted", "failure", "short"]


def failure(
    errors: list[CapabilityError], attempts: list[Attempt], decisions: list[RoutingDecision]
) -> CapabilityError:
    usage = sum_usage(attempts)
    details = {
        "attempts": msgspec.to_builtins(attempts),
        "decisions": msgspec.to_builtins(decisions),
        "cost_usd": str(sum_cost(attempts)),
    }
    billed = usage if any(a.usage is not None for a in attempts) else None
    summary = "; ".join(f"{a.model}: {a.error}" for a in attempts if a.error)
    permanent = [e for e in errors if isinstance(e, PermanentError)]
    error: CapabilityError
    if permanent:
        error = PermanentError(permanent[0].message, usage=billed, details=details)
    else:
        waits = [
            e.retry_after
            for e in errors
            if isinstance(e, TransientError) and e.retry_after is not None
        ]
        retry_after = min(waits) if waits else None
        message = f"all {len(attempts)} model call(s) failed: {summary}"
        kind = (
            RateLimitedError
            if errors and all(isinstance(e, RateLimitedError) for e in errors)
            else TransientError
        )
        error = kind(message, retry_after=retry_after, usage=billed, details=details)
    # Chain the provider's own error: it is key-free (providers raise theirs with no
    # cause), and a provider bug's traceback stays reachable behind it.
    error.__cause__ = permanent[0] if permanent else (errors[-1] if errors else None)
    return error


def short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def exhausted(
    why: str,
    last: CapabilityError,
    errors: list[CapabilityError],
    attempts: list[Attempt],
    decisions: list[RoutingDecision],
) -> PermanentError:
    """The call gave up for good (its retry budget or the deadline ran out), with a
    reason the model and the user can read."""
    failed = sorted({a.model for a in attempts if a.outcome != "ok"})
    limited = all(isinstance(e, RateLimitedError) for e in errors)
    what = "was rate limited on every attempt" if limited else "did not answer"
    billed = sum_usage(attempts) if any(a.usage is not None for a in attempts) else None
    error = PermanentError(
        f"{', '.join(failed)} {what}: {why}; last error: {short(last.message)}",
        usage=billed,
        details={
            "attempts": msgspec.to_builtins(attempts),
            "decisions": msgspec.to_builtins(decisions),
            "cost_usd": str(sum_cost(attempts)),
        },
    )
    error.__cause__ = last
    return error
