"""Choosing a race's next call: which model, whether its breaker and the budget allow it.

A hedge goes to the models the first one's ``[hedge]`` table names, else to the same model
and its fallbacks in the order ``target`` says; a model that failed in this race, whose
circuit is not closed, or whose call the remaining budget cannot cover together with every
call already made (each may be billed) is passed over, and the reason of the last one
passed over is what the race records. A rate-limited model is called afresh after its
retry-after only when its ``[retry]`` table and the workflow's deadline allow the wait.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from jetagent.models import ModelCatalog, ModelConfig

from ._policy import GatewayDefaults, seconds
from ._settle import Run
from .breakers import BreakerRegistry, Permit
from .providers import Provider
from .routing import Candidate, format_usd

if TYPE_CHECKING:
    from ._race import CallContext, RaceResult

__all__ = ["Hedging", "retry_later"]

_ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}


@dataclass(frozen=True, kw_only=True)
class Hedging:
    """The choice of hedge candidates over one gateway's models, breakers and budgets."""

    catalog: ModelCatalog
    providers: Mapping[str, Provider]
    breakers: BreakerRegistry
    defaults: GatewayDefaults
    cheaper_margin: Decimal
    """The safety factor on the calls' maximum cost."""

    def options(self, first: ModelConfig) -> list[ModelConfig]:
        """The models a race started on ``first`` may hedge with, in order."""
        if first.hedge.models is not None:
            return [self.catalog.get(name) for name in first.hedge.models]
        same = [first]
        fallbacks = [self.catalog.get(name) for name in first.fallbacks]
        if self.defaults.hedge_target_of(first) == "same_model":
            return same + fallbacks
        return fallbacks + same

    def next(
        self,
        first: Candidate,
        options: list[ModelConfig],
        runs: Iterable[Run],
        ctx: CallContext,
        result: RaceResult,
        allowance: int,
        failed: set[str],
    ) -> tuple[Candidate, Permit] | str:
        """The next hedge candidate (taken off ``options``) with its permit, or why
        there is none."""
        started = list(runs)
        why_not = "no model with a closed circuit to hedge with"
        for model in list(options):
            if model.name in failed or model.provider not in self.providers:
                continue
            if model.name not in result.models and len(result.models) >= allowance:
                why_not = f"max_models_per_call ({allowance} left) is reached"
                continue
            breaker = self.breakers.for_model(model)
            if breaker.state != "closed":
                continue
            cap = min(first.max_tokens, model.max_output_tokens)
            if (too_much := self.unaffordable(started, model, cap, ctx)) is not None:
                why_not = too_much
                continue
            permit = breaker.try_acquire()
            if permit is None:
                continue
            options.remove(model)
            return Candidate(model=model, max_tokens=cap), permit
        return why_not

    def unaffordable(
        self, started: list[Run], model: ModelConfig, cap: int, ctx: CallContext
    ) -> str | None:
        """Why the remaining budget cannot cover a call on ``model`` (up to ``cap`` output
        tokens) next to every call ``started`` (None: it can)."""
        # Every call of the race may be billed, so all their maximums must fit what is left.
        nth = _ORDINALS.get(len(started) + 1, f"{len(started) + 1}th")
        if ctx.remaining_usd is not None:
            every = (
                sum(
                    (r.candidate.model.max_cost(ctx.input_tokens, r.candidate.max_tokens)
                     for r in started),
                    Decimal(0),
                )
                + model.max_cost(ctx.input_tokens, cap)
            ) * self.cheaper_margin  # fmt: skip
            if ctx.remaining_usd < every:
                return (
                    f"the remaining budget {format_usd(ctx.remaining_usd)} cannot cover a "
                    f"{nth} call on {model.name} (all calls' max {format_usd(every)})"
                )
        if ctx.remaining_tokens is not None:
            tokens = (len(started) + 1) * ctx.input_tokens + cap
            tokens += sum(r.candidate.max_tokens for r in started)
            if ctx.remaining_tokens < tokens:
                return (
                    f"the remaining token budget ({ctx.remaining_tokens}) cannot cover a "
                    f"{nth} call on {model.name} (~{tokens} tokens for all)"
                )
        return None


def retry_later(
    limited: list[tuple[ModelConfig, float]],
    why: str,
    retries: int,
    ctx: CallContext,
    now: float,
) -> tuple[float, ModelConfig, str] | str:
    """When to call a rate-limited model afresh (its retry-after from now), or why
    not: its ``[retry]`` table or the workflow's deadline forbid the wait. Without
    this the race would wait out the hung call's whole timeout, and the step's
    redelivery after it, for an answer a 429 said would be ready in a second."""
    model, wait = min(limited, key=lambda pair: pair[1])
    if retries + 1 >= model.retry.max_attempts:
        return f"retry.max_attempts = {model.retry.max_attempts} of {model.name} is spent"
    if wait > model.retry.max_wait_s:
        return (
            f"its retry-after of {seconds(wait)} s exceeds retry.max_wait_s = "
            f"{model.retry.max_wait_s} of {model.name}"
        )
    if ctx.deadline is not None and now + wait >= ctx.deadline:
        return f"the workflow's deadline is too close to wait {seconds(wait)} s"
    reason = f"{why}; a fresh call after its retry-after of {seconds(wait)} s"
    return now + wait, model, reason
