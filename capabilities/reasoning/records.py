"""What one gateway call did, as event-ready values: the winning answer, every attempt
(with what it cost, failed and abandoned ones too) and every routing decision, so a
replay shows which model answered and why, and no billed token goes unrecorded."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from jetagent.errors import CapabilityError
from jetagent.llm import Completion, Usage

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "DecisionKind",
    "GatewayResult",
    "RoutingDecision",
    "UsageStatus",
    "attempts_of",
    "decisions_of",
]

AttemptOutcome = Literal["ok", "failed", "cancelled", "rate_limited"]
UsageStatus = Literal["reported", "not_reported", "unknown"]
DecisionKind = Literal[
    "preferred",
    "fallback",
    "cheaper",
    "limit",
    "failover",
    "hedge",
    "hedge_skipped",
    "timeout",
    "retry",
    "retry_exhausted",
]


class RoutingDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Why a model was (or was not) called, in words a person reads in a replay."""

    kind: DecisionKind
    """``preferred``: the first choice; ``fallback``: the preferred model's circuit was
    not available; ``cheaper``: the remaining budget was too low; ``limit``: max_tokens
    was lowered; ``failover``: the previous model failed in this call; ``hedge``: a
    call raced a slow or failed one; ``hedge_skipped``: a hedge was due but not made;
    ``timeout``: a call's total timeout fired; ``retry``: every model was rate limited and
    the call waits to try again; ``retry_exhausted``: its retry budget ran out."""
    model: str
    provider: str
    reason: str
    """E.g. ``"fallback: circuit open for gpt-4o"``."""


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One provider call: its outcome and, when known, what it cost."""

    model: str
    provider: str
    outcome: AttemptOutcome
    usage: Usage | None
    """Tokens the provider reported for this call; ``None`` when it reported none."""
    usage_status: UsageStatus
    """``reported``; ``not_reported`` (the provider answered, or was never reached,
    without billing anything visible); ``unknown`` (the call was sent and then abandoned —
    cancelled or timed out — so the provider may bill it without our knowing)."""
    cost_usd: str | None
    """``usage`` priced with the catalog, as a Decimal string; ``None`` without usage."""
    latency_s: float
    max_tokens: int
    """The output limit this call was sent with."""
    hedge: bool = False
    """Whether this was the second call of a hedged pair."""
    winner: bool = False
    """Whether this call's answer is the result."""
    error: str | None = None


class GatewayResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of one reasoning step, with every attempt and decision behind it."""

    completion: Completion
    attempts: tuple[Attempt, ...]
    decisions: tuple[RoutingDecision, ...]

    @property
    def usage(self) -> Usage:
        """All reported usage of every attempt, the losers of a hedge included."""
        return sum_usage(self.attempts)

    @property
    def cost_usd(self) -> Decimal:
        """The cost of every attempt with known usage."""
        return sum_cost(self.attempts)


def sum_usage(attempts: tuple[Attempt, ...] | list[Attempt]) -> Usage:
    """Total reported usage of ``attempts``."""
    total = Usage()
    for attempt in attempts:
        if attempt.usage is not None:
            total = total + attempt.usage
    return total


def sum_cost(attempts: tuple[Attempt, ...] | list[Attempt]) -> Decimal:
    """Total cost of ``attempts`` with known usage."""
    return sum((Decimal(a.cost_usd) for a in attempts if a.cost_usd is not None), Decimal(0))


def attempts_of(error: CapabilityError) -> tuple[Attempt, ...]:
    """The attempts a failed gateway call made (from ``error.details["attempts"]``)."""
    return msgspec.convert(error.details.get("attempts", ()), tuple[Attempt, ...])


def decisions_of(error: CapabilityError) -> tuple[RoutingDecision, ...]:
    """The routing decisions of a failed gateway call."""
    return msgspec.convert(error.details.get("decisions", ()), tuple[RoutingDecision, ...])
