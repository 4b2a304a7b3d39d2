"""One routed call, hedged: when the call outlives its model's ``typical_latency_s``
times ``hedge_factor``, a second call starts (the same model, or the first fallback
whose circuit is closed); the first good answer wins and the other call is cancelled.

Every call is an owned task: the race awaits or cancels and awaits each one, reports
its outcome to its circuit breaker exactly once, and records it as an ``Attempt`` — a
cancelled call's usage is unknown (the provider may bill it) and is recorded as such.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from jetagent.errors import (
    CapabilityError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from jetagent.llm import Completion, Message, ToolSpec, Usage
from jetagent.models import ModelCatalog, ModelConfig

from .breakers import BreakerRegistry, Permit
from .providers import Provider
from .records import Attempt, AttemptOutcome, RoutingDecision, UsageStatus
from .routing import Candidate, format_usd

HedgeTarget = Literal["same_model", "fallback"]


@dataclass(frozen=True, kw_only=True)
class CallContext:
    """What every attempt of one gateway call shares."""

    messages: Sequence[Message]
    tools: Sequence[ToolSpec]
    input_tokens: int
    remaining_tokens: int | None
    remaining_usd: Decimal | None


@dataclass(kw_only=True)
class RaceResult:
    """The outcome of one race: the winner (if any) and everything that happened."""

    completion: Completion | None = None
    attempts: list[Attempt] = field(default_factory=list)
    decisions: list[RoutingDecision] = field(default_factory=list)
    errors: list[CapabilityError] = field(default_factory=list)
    models: set[str] = field(default_factory=set)


@dataclass(frozen=True, kw_only=True)
class _Run:
    candidate: Candidate
    permit: Permit
    hedge: bool
    started: float


class HedgedCaller:
    """Runs one candidate's call with an optional hedge."""

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: Mapping[str, Provider],
        breakers: BreakerRegistry,
        hedge_factor: float | None,
        hedge_target: HedgeTarget,
        call_timeout_s: float,
        cheaper_margin: Decimal,
    ) -> None:
        self._catalog = catalog
        self._providers = providers
        self._breakers = breakers
        self._hedge_factor = hedge_factor
        self._hedge_target = hedge_target
        self._call_timeout_s = call_timeout_s
        self._margin = cheaper_margin

    async def run(self, first: Candidate, permit: Permit, ctx: CallContext) -> RaceResult:
        """Call ``first`` (its permit already taken), hedging if it is slow."""
        result = RaceResult()
        runs: dict[asyncio.Task[Completion], _Run] = {}
        settled: dict[asyncio.Task[Completion], Attempt] = {}

        def start(candidate: Candidate, permit: Permit, *, hedge: bool) -> None:
            task = asyncio.create_task(
                self._complete(candidate, ctx), name=f"jetagent llm {candidate.model.name}"
            )
            runs[task] = _Run(
                candidate=candidate, permit=permit, hedge=hedge, started=time.monotonic()
            )
            result.models.add(candidate.model.name)

        start(first, permit, hedge=False)
        pending = set(runs)
        loop = asyncio.get_running_loop()
        hedge_after = (
            first.model.typical_latency_s * self._hedge_factor if self._hedge_factor else None
        )
        hedge_at = loop.time() + hedge_after if hedge_after is not None else None
        try:
            while pending and result.completion is None:
                timeout = None if hedge_at is None else max(hedge_at - loop.time(), 0.0)
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    hedge_at = None  # at most one hedge per call
                    second = self._hedge(first, ctx, hedge_after or 0.0, result)
                    if second is not None:
                        start(*second, hedge=True)
                        pending = {t for t in runs if not t.done()}
                    continue
                # Collect in start order, so the primary wins a tie.
                for task in [t for t in runs if t in done]:
                    settled[task] = self._settle(task, runs[task], result)
        finally:
            for task in pending:
                task.cancel()
            try:
                if pending:
                    await asyncio.wait(pending)
            finally:
                for task in [t for t in runs if t in pending]:
                    if task.done():
                        settled[task] = self._settle(task, runs[task], result)
                    else:
                        # Only if this wait was itself cancelled: the breaker must not be
                        # left waiting for a trial that will never report.
                        runs[task].permit.release()
        # Attempts in the order the calls started, however they finished.
        result.attempts.extend(settled[t] for t in runs if t in settled)
        return result

    async def _complete(self, candidate: Candidate, ctx: CallContext) -> Completion:
        model = candidate.model
        provider = self._providers[model.provider]
        deadline = asyncio.timeout(self._call_timeout_s)
        try:
            async with deadline:
                return await provider.complete(
                    model, ctx.messages, tools=ctx.tools, max_tokens=candidate.max_tokens
                )
        except TimeoutError:
            if not deadline.expired():
                raise
        raise TransientError(
            f"{model.name} ({model.provider}) did not answer within the call timeout of "
            f"{self._call_timeout_s} s; usage unknown",
            details={"provider": model.provider, "usage_status": "unknown"},
        )

    def _hedge(
        self, first: Candidate, ctx: CallContext, after_s: float, result: RaceResult
    ) -> tuple[Candidate, Permit] | None:
        same = [first.model]
        fallbacks = [self._catalog.get(name) for name in first.model.fallbacks]
        options = same + fallbacks if self._hedge_target == "same_model" else fallbacks + same
        why_not = "no model with a closed circuit to hedge with"
        for model in options:
            if model.provider not in self._providers:
                continue
            breaker = self._breakers.for_model(model)
            if breaker.state != "closed":
                continue
            cap = min(first.max_tokens, model.max_output_tokens)
            if (too_much := self._unaffordable(first, model, cap, ctx)) is not None:
                why_not = too_much
                continue
            permit = breaker.try_acquire()
            if permit is None:
                continue
            result.decisions.append(
                RoutingDecision(
                    kind="hedge",
                    model=model.name,
                    provider=model.provider,
                    reason=f"hedge: {first.model.name} exceeded {after_s:.1f} s",
                )
            )
            return Candidate(model=model, max_tokens=cap), permit
        result.decisions.append(
            RoutingDecision(
                kind="hedge_skipped",
                model=first.model.name,
                provider=first.model.provider,
                reason=f"hedge skipped: {first.model.name} exceeded {after_s:.1f} s, but {why_not}",
            )
        )
        return None

    def _unaffordable(
        self, first: Candidate, model: ModelConfig, cap: int, ctx: CallContext
    ) -> str | None:
        # A hedge may double the spend, so both calls' maximum must fit what is left.
        if ctx.remaining_usd is not None:
            both = (
                first.model.max_cost(ctx.input_tokens, first.max_tokens)
                + model.max_cost(ctx.input_tokens, cap)
            ) * self._margin
            if ctx.remaining_usd < both:
                return (
                    f"the remaining budget {format_usd(ctx.remaining_usd)} cannot cover a "
                    f"second call on {model.name} (both calls' max {format_usd(both)})"
                )
        if ctx.remaining_tokens is not None:
            both_tokens = 2 * ctx.input_tokens + first.max_tokens + cap
            if ctx.remaining_tokens < both_tokens:
                return (
                    f"the remaining token budget ({ctx.remaining_tokens}) cannot cover a "
                    f"second call on {model.name} (~{both_tokens} tokens for both)"
                )
        return None

    def _settle(self, task: asyncio.Task[Completion], run: _Run, result: RaceResult) -> Attempt:
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
            # A bug in an injected provider (the offline planner, a test double) must not
            # crash the worker or lose the other attempts: it fails the step, loudly.
            run.permit.release()
            model = run.candidate.model
            error = PermanentError(
                f"provider {model.provider} raised an unexpected "
                f"{type(exc).__name__} for {model.name}: {exc}",
                details={"provider": model.provider, "usage_status": "unknown"},
            )
            error.__cause__ = exc
        result.errors.append(error)
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
    run: _Run,
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
