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

Choosing the next call is ``_hedging``'s; settling a finished one, ``_settle``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jetagent.errors import CapabilityError, PermanentError, RateLimitedError, TransientError
from jetagent.llm import Completion, Message, ToolSpec
from jetagent.models import ModelCatalog, ModelConfig

from ._hedging import Hedging, retry_later
from ._policy import GatewayDefaults, LatencyWindow, seconds
from ._settle import Run, settle
from ._streaming import StreamGate
from .breakers import BreakerRegistry, Permit
from .providers import Provider
from .records import Attempt, RoutingDecision
from .routing import Candidate

OnCall = Callable[[Attempt], Awaitable[None]]
"""Told of each provider call the moment it has settled (see ``CallContext.on_call``)."""


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

    def hedged(self, model: ModelConfig, reason: str) -> None:
        """Record a hedge call started on ``model``."""
        self.decisions.append(
            RoutingDecision(kind="hedge", model=model.name, provider=model.provider, reason=reason)
        )

    def hedge_skipped(self, model: ModelConfig, why: str, but: str) -> None:
        """Record that ``why`` called for a hedge, ``but`` none could start."""
        self.decisions.append(
            RoutingDecision(
                kind="hedge_skipped",
                model=model.name,
                provider=model.provider,
                reason=f"hedge skipped: {why}, but {but}",
            )
        )


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
        self._providers = providers
        self._breakers = breakers
        self._defaults = defaults
        self._latencies = latencies
        self._hedging = Hedging(
            catalog=catalog,
            providers=providers,
            breakers=breakers,
            defaults=defaults,
            cheaper_margin=cheaper_margin,
        )

    async def run(
        self, first: Candidate, permit: Permit, ctx: CallContext, *, allowance: int
    ) -> RaceResult:
        """Call ``first`` (its permit already taken), hedging if it is slow; at most
        ``allowance`` distinct models (``first`` included) are called."""
        result = RaceResult()
        runs: dict[asyncio.Task[Completion], Run] = {}
        keys: dict[asyncio.Task[Completion], int] = {}
        settled: dict[asyncio.Task[Completion], Attempt] = {}
        reported: set[asyncio.Task[Completion]] = set()
        options = self._hedging.options(first.model)
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
            runs[task] = Run(
                candidate=candidate, permit=permit, hedge=hedge, started=time.monotonic()
            )
            result.models.add(candidate.model.name)

        def another(reason: str, skipped: str, *, quiet: bool = False) -> bool:
            chosen = self._hedging.next(
                first, options, runs.values(), ctx, result, allowance, failed
            )
            if isinstance(chosen, str):
                if not quiet:
                    result.hedge_skipped(first.model, skipped, chosen)
                return False
            candidate, permit = chosen
            result.hedged(candidate.model, reason)
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
        # model once its retry-after has passed (see ``retry_later``).
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
                    attempt = settle(task, runs[task], result, self._latencies)
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
                        later = retry_later(limited, why, retries, ctx, loop.time())
                        if isinstance(later, str):
                            result.hedge_skipped(first.model, why, later)
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
                        settled[task] = settle(task, runs[task], result, self._latencies)
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

    def _retry_now(
        self,
        first: Candidate,
        model: ModelConfig,
        why: str,
        runs: Iterable[Run],
        ctx: CallContext,
        result: RaceResult,
        start: Callable[..., None],
    ) -> None:
        """Start the fresh call ``retry_later`` scheduled, if its breaker and the
        budget still allow it."""
        cap = min(first.max_tokens, model.max_output_tokens)
        breaker = self._breakers.for_model(model)
        blocked = self._hedging.unaffordable(list(runs), model, cap, ctx)
        permit = breaker.try_acquire() if blocked is None and breaker.state == "closed" else None
        if permit is None:
            result.hedge_skipped(model, why, blocked or "its circuit is open")
            return
        result.hedged(model, f"hedge: {why}")
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


def _short(text: str | None, limit: int = 120) -> str:
    text = text or "no reason given"
    return text if len(text) <= limit else text[: limit - 1] + "…"
