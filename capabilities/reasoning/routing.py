"""Which model a call goes to. Pure: the breakers' verdicts come in as a function, so
the same inputs always give the same plan.

For each requested model, in order, and then its ``fallbacks`` (transitively, each
model once):

1. **budget** — when the remaining USD budget is below ``cheaper_margin`` times the most one
   call can cost on that model (estimated input, all of max_tokens), follow its
   ``cheaper`` chain until a model fits or the chain ends;
2. **limits** — max_tokens is lowered to the model's ``max_output_tokens`` and to what
   the remaining token budget leaves after the estimated input;
3. **circuit** — a model whose circuit lets no call through is skipped, and the next
   usable one is a fallback (the reason names the skipped circuits).

The result is the ordered list of usable candidates: the first is called, the rest are
for failover and hedging.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from jetagent.errors import ConfigError, PermanentError
from jetagent.llm import Message, ToolSpec
from jetagent.models import ModelCatalog, ModelConfig

from .records import RoutingDecision

__all__ = ["Candidate", "RoutePlan", "estimate_input_tokens", "format_usd", "plan_route"]

# A rough, provider-neutral estimate (about four characters of JSON per token): the
# exact count is the provider's, after the call. It only sizes budgets before the call.
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A model the call may go to, with the output limit it would be sent."""

    model: ModelConfig
    max_tokens: int
    notes: tuple[RoutingDecision, ...] = ()
    """Budget decisions that led to this model (``cheaper``, ``limit``)."""
    skipped_before: tuple[str, ...] = ()
    """Why the models planned before this one were skipped (circuit reasons)."""


@dataclass(frozen=True, kw_only=True)
class RoutePlan:
    """Usable candidates in order, and the models skipped for their circuits."""

    candidates: tuple[Candidate, ...]
    skipped: tuple[ModelConfig, ...]


def estimate_input_tokens(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> int:
    """A generous estimate of a request's input tokens, for budget checks only."""
    size = len(msgspec.json.encode(list(messages))) + len(msgspec.json.encode(list(tools)))
    return math.ceil(size / _CHARS_PER_TOKEN)


def format_usd(amount: Decimal) -> str:
    """``$0.0012``-style text for reasons (six decimals at most, no trailing zeros)."""
    q = amount.quantize(Decimal("0.000001")).normalize()
    return f"${q:f}"


def output_cap(
    model: ModelConfig, max_tokens: int, *, remaining_tokens: int | None, input_tokens: int
) -> int:
    """max_tokens within the model's limit and what the token budget leaves."""
    cap = min(max_tokens, model.max_output_tokens)
    if remaining_tokens is not None:
        cap = min(cap, remaining_tokens - input_tokens)
    return cap


def plan_route(
    catalog: ModelCatalog,
    *,
    models: Sequence[str],
    max_tokens: int,
    input_tokens: int,
    remaining_tokens: int | None,
    remaining_usd: Decimal | None,
    cheaper_margin: Decimal,
    unavailable: Callable[[ModelConfig], str | None],
) -> RoutePlan:
    """The routing plan of one call.

    ``unavailable(model)`` says why a model's circuit lets no call through, or ``None``.
    Raises PermanentError for an unknown model or a token budget that cannot even cover
    the input.
    """
    if remaining_tokens is not None and remaining_tokens - input_tokens < 1:
        raise PermanentError(
            f"the remaining token budget ({remaining_tokens}) does not cover this call's "
            f"estimated input (~{input_tokens} tokens) and any output"
        )
    candidates: list[Candidate] = []
    skipped: list[ModelConfig] = []
    reasons: list[str] = []
    seen: set[str] = set()
    for wanted in _expand(catalog, models):
        model, notes = _fit_budget(
            catalog,
            wanted,
            max_tokens=max_tokens,
            input_tokens=input_tokens,
            remaining_tokens=remaining_tokens,
            remaining_usd=remaining_usd,
            margin=cheaper_margin,
        )
        if model.name in seen:
            continue
        seen.add(model.name)
        if (why := unavailable(model)) is not None:
            skipped.append(model)
            reasons.append(why)
            continue
        cap = output_cap(
            model, max_tokens, remaining_tokens=remaining_tokens, input_tokens=input_tokens
        )
        if cap < max_tokens:
            limit = (
                "its max_output_tokens"
                if cap == model.max_output_tokens
                else (
                    f"the remaining token budget ({remaining_tokens}) minus ~{input_tokens} "
                    "input tokens"
                )
            )
            notes = (
                *notes,
                RoutingDecision(
                    kind="limit",
                    model=model.name,
                    provider=model.provider,
                    reason=f"limit: max_tokens {max_tokens} → {cap} on {model.name}: {limit}",
                ),
            )
        candidates.append(
            Candidate(model=model, max_tokens=cap, notes=notes, skipped_before=tuple(reasons))
        )
    return RoutePlan(candidates=tuple(candidates), skipped=tuple(skipped))


def _expand(catalog: ModelCatalog, models: Sequence[str]) -> Iterator[ModelConfig]:
    # Each requested model followed by its fallbacks, depth first, each model once
    # (catalogs often point fallbacks at each other).
    visited: set[str] = set()

    def walk(name: str) -> Iterator[ModelConfig]:
        if name in visited:
            return
        visited.add(name)
        try:
            model = catalog.get(name)
        except ConfigError as exc:
            raise PermanentError(exc.args[0]) from None
        yield model
        for fallback in model.fallbacks:
            yield from walk(fallback)

    for name in models:
        yield from walk(name)


def _fit_budget(
    catalog: ModelCatalog,
    model: ModelConfig,
    *,
    max_tokens: int,
    input_tokens: int,
    remaining_tokens: int | None,
    remaining_usd: Decimal | None,
    margin: Decimal,
) -> tuple[ModelConfig, tuple[RoutingDecision, ...]]:
    if remaining_usd is None:
        return model, ()
    notes: list[RoutingDecision] = []
    chain = {model.name}
    while model.cheaper and model.cheaper not in chain:
        cap = output_cap(
            model, max_tokens, remaining_tokens=remaining_tokens, input_tokens=input_tokens
        )
        one_call = model.max_cost(input_tokens, cap) * margin
        if remaining_usd >= one_call:
            break
        cheaper = catalog.get(model.cheaper)
        notes.append(
            RoutingDecision(
                kind="cheaper",
                model=cheaper.name,
                provider=cheaper.provider,
                reason=(
                    f"cheaper: remaining budget {format_usd(remaining_usd)} below one "
                    f"call's max {format_usd(one_call)} on {model.name}"
                ),
            )
        )
        chain.add(cheaper.name)
        model = cheaper
    return model, tuple(notes)
