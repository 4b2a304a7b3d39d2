"""One routed call, hedged: when the call outlives its hedge delay (the model's
``[hedge]`` table: a fixed ``delay_s``, the endpoint's observed p95, or by default
``typical_latency_s`` times the gateway's ``hedge_factor``), another call starts (the same
model or a fallback, in the order ``target`` says), up to ``max_hedges`` of them one
delay apart; the first good answer wins and the others are cancelled. A call that fails
while another is still running is replaced at once by the next candidate, so a fast
failure (a 429) never leaves the race waiting on a hung call for its whole timeout.

Every call is an owned task: the race awaits or cancels and awaits each one, reports
its outcome to its circuit breaker exactly once, and records it as an ``Attempt`` — a
cancelled call's usage is unknown (the provider may bill it) and is recorded as such.
Each ``Attempt`` is handed to the call's ``on_call`` hook once, as soon as the call has
settled (after any replacement call has been started, so reporting never delays the
race), and before the race goes on waiting: a worker that dies later in the step has
already reported it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jetagent.errors import (
    CapabilityError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from jetagent.llm import Completion, Message, ToolSpec, Usage
from jetagent.models import ModelCatalog, ModelConfig

from ._policy import GatewayDefaults, LatencyWindow, seconds
from ._streaming import StreamGate
from .breakers import BreakerRegistry, Permit
from .providers import Provider
from .records import Attempt, AttemptOutcome, RoutingDecision, UsageStatus
from .routing import Candidate, format_usd

OnCall = Callable[[Attempt], Awaitable[None]]
"""Told of each provider call the moment it has settled (see ``CallContext.on_call``)."""

_ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}


@dataclass(frozen=True, kw_only=True)
class CallContext:
    """What every attempt of one gateway call shares."""

    messages: Sequence[Message]
    tools: Sequence[ToolSpec]
    input_tokens: int
    remaining_tokens: int | None
    remaining_usd: Decimal | None
    deadline: float | None = None
    """``loop.time()`` by which every call must have ended (the workflow's deadline,
    less the time the step needs to report); ``None`` without a deadline."""
    stream: StreamGate | None = None
    """Where streamed text goes (only the winner's counts); ``None``: no streaming."""
    on_call: OnCall | None = None
    """Awaited with every ``Attempt`` once, as it settles: the worker journals it, so
    the call's usage is recorded even if the step's run dies before it ends."""


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
    """Runs one candidate's call with its hedges."""

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: Mapping[str, Provider],
        breakers: BreakerRegistry,
        defaults: GatewayDefaults,
        latencies: LatencyWindow,
        cheaper_margin: Decimal,
    ) -> None:
        self._catalog = catalog
        self._providers = providers
        self._breakers = breakers
        self._defaults = defaults
        self._latencies = latencies
        self._margin = cheaper_margin

    async def run(
        self, first: Candidate, permit: Permit, ctx: CallContext, *, allowance: int
    ) -> RaceResult:
        """Call ``first`` (its permit already taken), hedging if it is slow; at most
        ``allowance`` distinct models (``first`` included) are called."""
        result = RaceResult()
        runs: dict[asyncio.Task[Completion], _Run] = {}
        keys: dict[asyncio.Task[Completion], int] = {}
        settled: dict[asyncio.Task[Completion], Attempt] = {}
        reported: set[asyncio.Task[Completion]] = set()
        options = self._options(first.model)
        failed: set[str] = set()

        def start(candidate: Candidate, permit: Permit, *, hedge: bool) -> None:
            key, on_delta = (
                ctx.stream.open(candidate.model.name) if ctx.stream is not None else (0, None)
            )
            task = asyncio.create_task(
                self._complete(candidate, ctx, key, on_delta),
                name=f"jetagent llm {candidate.model.name}",
            )
            keys[task] = key
            runs[task] = _Run(
                candidate=candidate, permit=permit, hedge=hedge, started=time.monotonic()
            )
            result.models.add(candidate.model.name)

        def another(reason: str, skipped: str, *, quiet: bool = False) -> bool:
            chosen = self._next(first, options, runs.values(), ctx, result, allowance, failed)
            if isinstance(chosen, str):
                if quiet:
                    return False
                result.decisions.append(
                    RoutingDecision(
                        kind="hedge_skipped",
                        model=first.model.name,
                        provider=first.model.provider,
                        reason=f"hedge skipped: {skipped}, but {chosen}",
                    )
                )
                return False
            candidate, permit = chosen
            model = candidate.model
            result.decisions.append(
                RoutingDecision(
                    kind="hedge", model=model.name, provider=model.provider, reason=reason
                )
            )
            start(candidate, permit, hedge=True)
            return True

        start(first, permit, hedge=False)
        pending = set(runs)
        loop = asyncio.get_running_loop()
        delay = self._defaults.hedge_delay(first.model, self._latencies)
        max_hedges = self._defaults.max_hedges_of(first.model)
        timed = 0
        hedge_at = loop.time() + delay.delay_s if delay is not None else None
        # A 429 next to a hung call with no other candidate: a fresh call of the limited
        # model once its retry-after has passed (see ``_retry_later``).
        retry: tuple[float, ModelConfig, str] | None = None
        retries = 0
        try:
            while pending and result.completion is None:
                wake = [t for t in (hedge_at, retry[0] if retry else None) if t is not None]
                timeout = max(min(wake) - loop.time(), 0.0) if wake else None
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done and retry is not None and loop.time() >= retry[0]:
                    _, model, why = retry
                    retry = None
                    retries += 1
                    self._retry_now(first, model, why, runs.values(), ctx, result, start)
                    pending = {t for t in runs if not t.done()}
                    continue
                if not done and delay is not None and hedge_at is not None:
                    timed += 1
                    late = f"{first.model.name} exceeded {seconds(delay.delay_s * timed)} s"
                    hedged = another(f"hedge: {late}{delay.why}", late)
                    more = hedged and timed < max_hedges
                    hedge_at = loop.time() + delay.delay_s if more else None
                    pending = {t for t in runs if not t.done()}
                    continue
                # Collect in start order, so the primary wins a tie.
                replace: list[str] = []
                limited: list[tuple[ModelConfig, float]] = []
                for task in [t for t in runs if t in done]:
                    attempt = self._settle(task, runs[task], result)
                    settled[task] = attempt
                    if attempt.outcome in ("failed", "rate_limited"):
                        failed.add(attempt.model)
                        error = result.errors[-1]
                        if not isinstance(error, PermanentError):
                            replace.append(f"{attempt.model} failed ({_short(attempt.error)})")
                        if isinstance(error, RateLimitedError) and error.retry_after is not None:
                            limited.append((runs[task].candidate.model, error.retry_after))
                if result.completion is None and pending and replace:
                    # A fast failure next to a hung call: try the next candidate now.
                    running = ", ".join(sorted({runs[t].candidate.model.name for t in pending}))
                    why = f"{'; '.join(replace)} while {running} is still running"
                    if not another(f"hedge: {why}", why, quiet=bool(limited)) and limited:
                        later = self._retry_later(limited, why, retries, ctx, loop.time())
                        if isinstance(later, str):
                            result.decisions.append(
                                RoutingDecision(
                                    kind="hedge_skipped",
                                    model=first.model.name,
                                    provider=first.model.provider,
                                    reason=f"hedge skipped: {why}, but {later}",
                                )
                            )
                        else:
                            retry = later
                    pending = {t for t in runs if not t.done()}
                if result.completion is None:  # a winner is reported once the losers end
                    await self._report(ctx, settled, reported)
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
        # The losers of a race (cancelled as the winner came in) and the winner.
        await self._report(ctx, settled, reported)
        # Attempts in the order the calls started, however they finished.
        result.attempts.extend(settled[t] for t in runs if t in settled)
        if ctx.stream is not None:
            winner = next(
                (
                    keys[t]
                    for t in runs
                    if t.done()
                    and not t.cancelled()
                    and t.exception() is None
                    and t.result() is result.completion
                ),
                None,
            )
            await ctx.stream.settle(winner if result.completion is not None else None)
        return result

    @staticmethod
    def _retry_later(
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

    def _retry_now(
        self,
        first: Candidate,
        model: ModelConfig,
        why: str,
        runs: Iterable[_Run],
        ctx: CallContext,
        result: RaceResult,
        start: Callable[..., None],
    ) -> None:
        """Start the fresh call ``_retry_later`` scheduled, if its breaker and the
        budget still allow it."""
        cap = min(first.max_tokens, model.max_output_tokens)
        breaker = self._breakers.for_model(model)
        blocked = self._unaffordable(list(runs), model, cap, ctx)
        permit = breaker.try_acquire() if blocked is None and breaker.state == "closed" else None
        if permit is None:
            result.decisions.append(
                RoutingDecision(
                    kind="hedge_skipped",
                    model=model.name,
                    provider=model.provider,
                    reason=f"hedge skipped: {why}, but {blocked or 'its circuit is open'}",
                )
            )
            return
        result.decisions.append(
            RoutingDecision(
                kind="hedge", model=model.name, provider=model.provider, reason=f"hedge: {why}"
            )
        )
        start(Candidate(model=model, max_tokens=cap), permit, hedge=True)

    @staticmethod
    async def _report(
        ctx: CallContext,
        settled: dict[asyncio.Task[Completion], Attempt],
        reported: set[asyncio.Task[Completion]],
    ) -> None:
        """Hand each newly settled attempt to the call's hook, once."""
        if ctx.on_call is None:
            return
        for task, attempt in settled.items():
            if task not in reported:
                reported.add(task)
                await ctx.on_call(attempt)

    async def _complete(
        self,
        candidate: Candidate,
        ctx: CallContext,
        key: int = 0,
        on_delta: Callable[[str], Awaitable[None]] | None = None,
    ) -> Completion:
        try:
            return await self._call(candidate, ctx, on_delta)
        except BaseException:
            if ctx.stream is not None:
                ctx.stream.lost(key)
            raise

    async def _call(
        self,
        candidate: Candidate,
        ctx: CallContext,
        on_delta: Callable[[str], Awaitable[None]] | None,
    ) -> Completion:
        model = candidate.model
        provider = self._providers[model.provider]
        limit, source = self._defaults.total_timeout(model)
        if ctx.deadline is not None:
            left = ctx.deadline - asyncio.get_running_loop().time()
            if left < limit:
                limit, source = round(max(left, 0.001), 3), "what the workflow's deadline left"
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                if on_delta is not None and getattr(provider, "streams", False):
                    # Only adapters that declare it take on_delta (the offline one doesn't).
                    streaming: Any = provider
                    completion: Completion = await streaming.complete(
                        model,
                        ctx.messages,
                        tools=ctx.tools,
                        max_tokens=candidate.max_tokens,
                        on_delta=on_delta,
                    )
                    return completion
                return await provider.complete(
                    model, ctx.messages, tools=ctx.tools, max_tokens=candidate.max_tokens
                )
        except TimeoutError:
            if not deadline.expired():
                raise
        raise TransientError(
            f"{model.name} ({model.provider}) did not answer within the call timeout of "
            f"{limit} s ({source}); usage unknown",
            details={
                "provider": model.provider,
                "usage_status": "unknown",
                "timeout": f"timeout: {model.name} gave no answer within {limit} s ({source})",
            },
        )

    def _options(self, first: ModelConfig) -> list[ModelConfig]:
        if first.hedge.models is not None:
            return [self._catalog.get(name) for name in first.hedge.models]
        same = [first]
        fallbacks = [self._catalog.get(name) for name in first.fallbacks]
        if self._defaults.hedge_target_of(first) == "same_model":
            return same + fallbacks
        return fallbacks + same

    def _next(
        self,
        first: Candidate,
        options: list[ModelConfig],
        runs: Iterable[_Run],
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
            if model.name in failed or model.provider not in self._providers:
                continue
            if model.name not in result.models and len(result.models) >= allowance:
                why_not = f"max_models_per_call ({allowance} left) is reached"
                continue
            breaker = self._breakers.for_model(model)
            if breaker.state != "closed":
                continue
            cap = min(first.max_tokens, model.max_output_tokens)
            if (too_much := self._unaffordable(started, model, cap, ctx)) is not None:
                why_not = too_much
                continue
            permit = breaker.try_acquire()
            if permit is None:
                continue
            options.remove(model)
            return Candidate(model=model, max_tokens=cap), permit
        return why_not

    def _unaffordable(
        self, started: list[_Run], model: ModelConfig, cap: int, ctx: CallContext
    ) -> str | None:
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
            ) * self._margin  # fmt: skip
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
            self._latencies.observe(run.candidate.model.name, latency)
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


def _short(text: str | None, limit: int = 120) -> str:
    text = text or "no reason given"
    return text if len(text) <= limit else text[: limit - 1] + "…"
