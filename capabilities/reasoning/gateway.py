"""The one entry point of the reasoning worker: ``ModelGateway.call`` routes a step to
a model, calls it through its circuit breaker with a timeout and hedges, fails over to
the next usable model when a call fails transiently, retries rate limits within a
budget, and returns (or raises, with the same records in ``details``) everything that
happened. (A little over 400 lines: the gateway's settings and the failover loop over the
candidates; one call's hedged race is ``_race``, its breakers ``breakers``, the routing
``routing``.)

Failure policy: a PermanentError stops the call at once (the request is wrong; another
model would only spend more). Transient and rate-limit failures move on to the next
usable candidate at once, up to ``max_models_per_call`` models. When every candidate was
rate limited, the call waits and tries again within the preferred model's retry budget
(``[retry]`` in the catalog, capped by the workflow's deadline) and raises a
PermanentError saying which limit ran out when it is spent. Otherwise, when all fail,
the error raised is a TransientError with the shortest ``retry_after`` any provider
gave (the worker retries the step). Every setting a model's catalog entry leaves unset
comes from this constructor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType

import msgspec

from jetagent.errors import (
    CapabilityError,
    ConfigError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from jetagent.llm import Message, ToolSpec
from jetagent.logs import seconds
from jetagent.models import ModelCatalog, ModelConfig

from ._failures import exhausted as _exhausted
from ._failures import failure as _failure
from ._failures import short as _short
from ._policy import GatewayDefaults, HedgeTarget, LatencyWindow
from ._race import CallContext, HedgedCaller, OnCall, RaceResult
from ._retry import REPORT_RESERVE_S, RetryBudget
from ._streaming import StreamGate
from .breakers import BreakerRegistry, BreakerSettings, BreakerState
from .providers import AnthropicProvider, HttpSettings, OpenAIProvider, Provider
from .records import Attempt, GatewayResult, RoutingDecision
from .routing import Candidate, estimate_input_tokens, plan_route

__all__ = ["ModelGateway"]

log = logging.getLogger("jetagent.reasoning")

_HTTP_PROVIDERS: dict[str, Callable[[HttpSettings | None], Provider]] = {
    "openai": lambda settings: OpenAIProvider(settings=settings),
    "anthropic": lambda settings: AnthropicProvider(settings=settings),
}


class ModelGateway:
    """Routes, guards and records the model calls of one worker replica."""

    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        breaker_settings: BreakerSettings | None = None,
        hedge_factor: float | None = 2.0,
        hedge_target: HedgeTarget = "same_model",
        max_hedges: int = 1,
        call_timeout_s: float = 120.0,
        cheaper_margin: Decimal = Decimal(1),
        max_models_per_call: int = 2,
        clock: Callable[[], float] = time.monotonic,
        providers: Mapping[str, Provider] | None = None,
        http_settings: HttpSettings | None = None,
    ) -> None:
        """
        - ``breaker_settings``: failure threshold and cool-down of every circuit breaker.
        - ``hedge_factor``: hedge a call that outlives ``typical_latency_s`` times this;
          ``None`` never hedges.
        - ``hedge_target``: ``"same_model"`` hedges with the same model (or, when its
          circuit is not closed, the first closed fallback); ``"fallback"`` prefers the
          first fallback whose circuit is closed.
        - ``max_hedges``: hedges one call may start, one hedge delay apart.
        - ``call_timeout_s``: the longest one provider call may take.

        A model's catalog tables (``timeouts``, ``hedge``, ``breaker``) override the
        matching defaults above for that model (README "Resilience settings").
        - ``cheaper_margin``: use a model's ``cheaper`` model when the remaining USD
          budget is below this many times one call's maximum cost.
        - ``max_models_per_call``: how many models one call may fail over across.
        - ``clock``: monotonic seconds for the breakers' cool-downs (tests inject one).
        - ``providers``: adapters by provider name; the ``offline`` deterministic provider
          must come this way. Missing ``openai``/``anthropic`` adapters are created (and closed by
          ``aclose``); injected ones belong to the caller.
        - ``http_settings``: timeouts and pool limits of the created HTTP adapters.
        """
        if hedge_factor is not None and hedge_factor <= 0:
            raise ConfigError("hedge_factor must be positive (or None to never hedge)")
        if call_timeout_s <= 0:
            raise ConfigError("call_timeout_s must be positive")
        if hedge_target not in ("same_model", "fallback"):
            raise ConfigError(
                f"hedge_target must be 'same_model' or 'fallback', not {hedge_target!r}"
            )
        if not 0 <= max_hedges <= 4:
            raise ConfigError("max_hedges must be between 0 and 4")
        if max_models_per_call < 1:
            raise ConfigError("max_models_per_call must be at least 1")
        if cheaper_margin < 0:
            raise ConfigError("cheaper_margin must not be negative")
        self._catalog = catalog
        self._margin = cheaper_margin
        self._max_models = max_models_per_call
        self._providers: dict[str, Provider] = dict(providers or {})
        self._owned: list[Provider] = []
        for name in sorted({m.provider for m in catalog.models.values()}):
            if name not in self._providers and name in _HTTP_PROVIDERS:
                provider = _HTTP_PROVIDERS[name](http_settings)
                self._providers[name] = provider
                self._owned.append(provider)
        self._breakers = BreakerRegistry(
            settings=breaker_settings or BreakerSettings(), clock=clock
        )
        for model in catalog.models.values():
            # Every endpoint's breaker exists from the start, so its gauge does too.
            self._breakers.for_model(model)
        self._caller = HedgedCaller(
            catalog=catalog,
            providers=self._providers,
            breakers=self._breakers,
            defaults=GatewayDefaults(
                hedge_factor=hedge_factor,
                hedge_target=hedge_target,
                max_hedges=max_hedges,
                call_timeout_s=call_timeout_s,
            ),
            latencies=LatencyWindow(),
            cheaper_margin=cheaper_margin,
        )

    async def __aenter__(self) -> ModelGateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP adapters this gateway created; idempotent."""
        owned, self._owned = self._owned, []
        for provider in owned:
            await provider.aclose()

    def breaker_states(self) -> list[BreakerState]:
        """Every circuit breaker's state, labelled by provider, base_url and models."""
        return self._breakers.states()

    async def call(
        self,
        *,
        models: Sequence[str],
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        remaining_tokens: int | None,
        remaining_usd: Decimal | None,
        deadline_s: float | None = None,
        origin: str = "",
        stream: StreamGate | None = None,
        on_call: OnCall | None = None,
    ) -> GatewayResult:
        """Ask the best usable model in ``models`` (first preferred) for the next turn.

        ``deadline_s`` is what is left of the workflow's deadline: no call or retry
        runs past it. ``origin`` names the caller in log lines ("workflow W step S").
        ``stream`` receives the answer's text live (only the winning call's).
        ``on_call`` is awaited with each ``Attempt`` (answered, failed, rate limited,
        cancelled) once, as soon as that provider call has settled, before the call goes
        on (a retry wait, a failover); it is given the very objects of the result's
        ``attempts`` (the raised error's ``details["attempts"]`` are the same, as builtins).

        Raises PermanentError, TransientError or RateLimitedError when no answer came;
        the error's ``details`` hold ``attempts``, ``decisions`` and ``cost_usd`` and its
        ``usage`` the tokens billed by the failed attempts (see ``attempts_of``).
        """
        if not models:
            raise PermanentError("no model was requested")
        if max_tokens < 1:
            raise PermanentError(f"max_tokens must be at least 1, not {max_tokens}")
        if deadline_s is not None and deadline_s <= 0:
            raise PermanentError("the workflow's deadline has passed; no model was called")
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = None
        if deadline_s is not None:
            # Calls end a little before the deadline, so a step that gives up can still
            # say why before the workflow is terminated for its deadline.
            deadline = now + max(deadline_s - REPORT_RESERVE_S, deadline_s / 2)
        input_tokens = estimate_input_tokens(messages, tools)
        ctx = CallContext(
            messages=messages,
            tools=tools,
            input_tokens=input_tokens,
            remaining_tokens=remaining_tokens,
            remaining_usd=remaining_usd,
            deadline=deadline,
            stream=stream,
            on_call=on_call,
        )
        attempts: list[Attempt] = []
        decisions: list[RoutingDecision] = []
        errors: list[CapabilityError] = []
        budget: RetryBudget | None = None
        who = f"{origin}: " if origin else ""
        while True:
            plan = plan_route(
                self._catalog,
                models=models,
                max_tokens=max_tokens,
                input_tokens=input_tokens,
                remaining_tokens=remaining_tokens,
                remaining_usd=remaining_usd,
                cheaper_margin=self._margin,
                unavailable=self._unavailable,
            )
            if budget is None and plan.candidates:
                budget = RetryBudget(model=plan.candidates[0].model, started=now, deadline=deadline)
            made = len(attempts)
            round_errors: list[CapabilityError] = []
            race = await self._round(plan.candidates, ctx, attempts, decisions, round_errors)
            errors.extend(round_errors)
            if race is not None and race.completion is not None:
                return GatewayResult(
                    completion=race.completion,
                    attempts=tuple(attempts),
                    decisions=tuple(decisions),
                )
            if len(attempts) == made:
                if not attempts:
                    raise self._no_usable_model(
                        [*plan.skipped, *(c.model for c in plan.candidates)], decisions
                    )
                break  # every circuit closed on us between rounds
            if (
                budget is None
                or not round_errors
                or not all(isinstance(e, RateLimitedError) for e in round_errors)
            ):
                break
            budget.rounds += 1
            wait = budget.next_wait(round_errors, loop.time())
            model = budget.model
            if isinstance(wait, str):
                decisions.append(
                    RoutingDecision(
                        kind="retry_exhausted",
                        model=model.name,
                        provider=model.provider,
                        reason=f"retry exhausted: {wait}",
                    )
                )
                log.warning("%s%s rate limited; giving up: %s", who, model.name, wait)
                raise _exhausted(wait, round_errors[-1], errors, attempts, decisions)
            decisions.append(
                RoutingDecision(
                    kind="retry",
                    model=model.name,
                    provider=model.provider,
                    reason=(
                        f"retry: every model was rate limited (attempt {budget.rounds} of "
                        f"{model.retry.max_attempts}); waiting {wait:.2f} s"
                    ),
                )
            )
            log.info(
                "%s%s rate limited (attempt %d of %d); retrying in %s s",
                who,
                model.name,
                budget.rounds,
                model.retry.max_attempts,
                seconds(wait),
            )
            await asyncio.sleep(wait)
        if (
            deadline is not None
            and loop.time() >= deadline
            and not any(isinstance(e, PermanentError) for e in errors)
        ):
            # Retrying after the deadline helps nobody: say so, for good.
            error = _failure(errors, attempts, decisions)
            raise _exhausted(
                "the workflow's deadline left no time for another attempt",
                error,
                errors,
                attempts,
                decisions,
            )
        if errors and all(isinstance(e, RateLimitedError) for e in errors):
            # No model was usable for another round (their circuits closed on us): the
            # call ends here, for good, rather than as a rate limit the worker waits out.
            raise _exhausted(
                "no model was usable for another attempt",
                errors[-1],
                errors,
                attempts,
                decisions,
            )
        raise _failure(errors, attempts, decisions)

    async def _round(
        self,
        candidates: Sequence[Candidate],
        ctx: CallContext,
        attempts: list[Attempt],
        decisions: list[RoutingDecision],
        errors: list[CapabilityError],
    ) -> RaceResult | None:
        """One pass over the candidates: the first answer, or every failure."""
        tried: set[str] = set()
        previous = len(attempts)
        for candidate in candidates:
            if len(tried) >= self._max_models:
                break
            if candidate.model.name in tried:
                continue
            if candidate.model.provider not in self._providers:
                if not attempts:
                    self._require_provider(candidate.model)
                continue  # a failover target this gateway cannot serve
            permit = self._breakers.for_model(candidate.model).try_acquire()
            if permit is None:
                continue  # its circuit opened during this call (a shared endpoint)
            decisions.extend(candidate.notes)
            decisions.append(_why(candidate, previous=attempts[previous:]))
            race = await self._caller.run(
                candidate, permit, ctx, allowance=self._max_models - len(tried)
            )
            attempts.extend(race.attempts)
            decisions.extend(race.decisions)
            tried |= race.models
            if race.completion is not None:
                return race
            errors.extend(race.errors)
            if any(isinstance(e, PermanentError) for e in race.errors):
                break
        return None

    def _unavailable(self, model: ModelConfig) -> str | None:
        breaker = self._breakers.for_model(model)
        if breaker.available():
            return None
        if breaker.state == "open":
            settings = breaker.settings
            return (
                f"circuit open for {model.name} (opened after {settings.failure_threshold} "
                f"failures; cool-down {settings.cool_down_s} s)"
            )
        return f"circuit half-open (trial running) for {model.name}"

    def _require_provider(self, model: ModelConfig) -> None:
        if model.provider not in self._providers:
            # A configuration error, loud: the worker was started without the adapter.
            raise PermanentError(
                f"model {model.name} needs the {model.provider!r} provider, which this "
                "gateway was not given (pass it in providers=)"
            )

    def _no_usable_model(
        self, models: Sequence[ModelConfig], decisions: list[RoutingDecision]
    ) -> TransientError:
        waits = [self._breakers.for_model(m).retry_in() for m in models]
        reasons = [self._unavailable(m) or f"circuit busy for {m.name}" for m in models]
        return TransientError(
            "no model is usable: " + "; ".join(reasons),
            retry_after=min(waits) if waits else None,
            details={"attempts": [], "decisions": msgspec.to_builtins(decisions)},
        )


def _why(candidate: Candidate, *, previous: list[Attempt]) -> RoutingDecision:
    model = candidate.model
    if previous:
        last = previous[-1]
        return RoutingDecision(
            kind="failover",
            model=model.name,
            provider=model.provider,
            reason=f"failover: {last.model} failed ({_short(last.error or last.outcome)})",
        )
    if candidate.skipped_before:
        return RoutingDecision(
            kind="fallback",
            model=model.name,
            provider=model.provider,
            reason="fallback: " + "; ".join(candidate.skipped_before),
        )
    return RoutingDecision(
        kind="preferred", model=model.name, provider=model.provider, reason="preferred"
    )
