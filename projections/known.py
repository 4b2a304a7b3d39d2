"""The label sets the projection's metrics show at 0 before their first event.

A series that appears at its first value has no earlier sample, so ``increase()`` and
``rate()`` never see that first event (two dead letters of a new source show as about
one; a capability's first step results move no rate, and its latency quantiles stay
empty). So every label set known in advance is exported at 0 from the start:

- from the configuration (:func:`known_label_sets`, :func:`known_routes`): each
  configured tenant's workflow outcomes and active count, the termination reasons, the
  dead-letter sources of the orchestrator and the projections, the poison count per
  stream, every outcome of each installed capability's calls of each catalog model (and,
  per configured tenant, their tokens and cost);
- from the state (:func:`derived_label_sets`), so a rebuild shows the same series: every
  capability installed here or scheduled so far (its step outcomes, retries, repeated
  runs, latency histograms, dead letters), every outcome of each provider route seen,
  every token kind of each route and tenant seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from projections.totals import MetricsState

QUOTA_DECISIONS = (
    ("max_workflows", "held"),
    ("max_workflows", "rejected"),
    ("tokens_per_minute", "throttled"),
    ("tokens_per_minute", "rejected"),
)
"""What a tenant quota can decide (``jetagent_quota_decisions``'s quota and outcome)."""

__all__ = [
    "CALL_OUTCOMES",
    "DEAD_LETTER_SOURCES",
    "OUTCOMES",
    "STEP_OUTCOMES",
    "TERMINATION_REASONS",
    "TOKEN_KINDS",
    "derived_label_sets",
    "known_label_sets",
    "known_routes",
]

SEP = "\x1f"
"""Joins the label values of a key (as ``projections.costs`` does)."""
OUTCOMES = ("finalized", "terminated", "cancelled", "rejected")
TERMINATION_REASONS = (
    "token_cap",
    "cost_cap",
    "max_iterations",
    "deadline",
    "step_failed",
    "invalid_output",
)
DEAD_LETTER_SOURCES = ("orchestrator", "projections")
STEP_OUTCOMES = ("ok", "failed")
CALL_OUTCOMES = ("ok", "failed", "rate_limited", "cancelled")
TOKEN_KINDS = ("input", "cached", "output")


def known_label_sets(*, tenants: frozenset[str] | None, streams: list[str]) -> dict[str, list[str]]:
    """The label sets of the configuration, at 0 until their first event."""
    return {
        "jetagent_workflows": [
            SEP.join((tenant, outcome)) for tenant in sorted(tenants or ()) for outcome in OUTCOMES
        ],
        "jetagent_workflows_active": sorted(tenants or ()),
        "jetagent_workflows_held": sorted(tenants or ()),
        "jetagent_quota_decisions": [
            SEP.join((tenant, quota, outcome))
            for tenant in sorted(tenants or ())
            for quota, outcome in QUOTA_DECISIONS
        ],
        "jetagent_workflow_terminations": list(TERMINATION_REASONS),
        "jetagent_dead_letters": list(DEAD_LETTER_SOURCES),
        "jetagent_projection_poison_messages": list(streams),
    }


def known_routes(
    capabilities: Sequence[str],
    routes: Sequence[tuple[str, str]],
    tenants: frozenset[str] | None = None,
) -> dict[str, list[str]]:
    """Every outcome of each capability's calls of each ``(model, provider)`` route, and
    with configured ``tenants`` each route's tokens (every kind) and cost per tenant (a
    new tenant's first cost would be missing from ``increase()`` otherwise)."""
    spenders = [
        SEP.join((cap, model, provider, tenant))
        for cap in capabilities
        for model, provider in routes
        for tenant in sorted(tenants or ())
    ]
    return {
        "jetagent_provider_calls": [
            SEP.join((cap, model, provider, outcome))
            for cap in capabilities
            for model, provider in routes
            for outcome in CALL_OUTCOMES
        ],
        "jetagent_tokens": [SEP.join((key, kind)) for key in spenders for kind in TOKEN_KINDS],
        "jetagent_cost_usd": spenders,
    }


def derived_label_sets(state: MetricsState, capabilities: Sequence[str]) -> dict[str, list[str]]:
    """The label sets that ``state`` (and the installed ``capabilities``) make known."""
    caps = sorted({*capabilities, *state.admitted.get("capability", {})})
    routes = {key.rsplit(SEP, 1)[0] for key in state.calls}
    spenders = {key.rsplit(SEP, 1)[0] for key in state.tokens}
    return {
        "capabilities": caps,
        "jetagent_steps": [SEP.join((cap, outcome)) for cap in caps for outcome in STEP_OUTCOMES],
        "jetagent_provider_calls": [
            SEP.join((route, outcome)) for route in routes for outcome in CALL_OUTCOMES
        ],
        "jetagent_tokens": [SEP.join((key, kind)) for key in spenders for kind in TOKEN_KINDS],
        "jetagent_dead_letters": caps,  # workers dead-letter under their capability's name
    }
