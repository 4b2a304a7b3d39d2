"""Circuit breakers, one per provider endpoint (provider + base_url) in each worker
replica, so a provider outage costs one fast failure per call instead of a timeout
(threshold and cool-down from the registry's settings, or the endpoint's ``[breaker]``
table in the model catalog)::

    closed ── failure_threshold consecutive counted failures ──▶ open
      ▲                                                           │ cool_down_s elapsed
      │                                                           ▼
      └──────── the trial call succeeds ◀──────────────────── half_open (one trial call)
                the trial call fails ──▶ open again, with a fresh cool-down

Counted failures are TransientErrors that count (5xx, 529, timeouts, network errors,
malformed answers). A RateLimitedError is the provider working as designed and a
PermanentError is about the request, so both leave the breaker as it was (a trial that
ends that way frees the half-open slot for the next call).

The clock is injectable (``time.monotonic`` by default), so tests move time instead of
sleeping. Breakers live in one event loop and are not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import msgspec

from jetagent.errors import ConfigError
from jetagent.models import ModelConfig

__all__ = [
    "STATE_VALUES",
    "BreakerRegistry",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "CircuitState",
    "Permit",
]

log = logging.getLogger(__name__)

CircuitState = Literal["closed", "open", "half_open"]
"""A breaker's state, as the ``state`` label of the metric shows it."""
STATE_VALUES: dict[CircuitState, int] = {"closed": 0, "open": 1, "half_open": 2}
"""Gauge value of each state (the usual convention: closed 0, open 1, half-open 2)."""


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    """When a breaker opens and how long it stays open."""

    failure_threshold: int = 5
    """Consecutive counted failures that open a closed circuit."""
    cool_down_s: float = 30.0
    """Time an open circuit waits before letting one trial call through."""
    trial_busy_retry_s: float = 1.0
    """Suggested retry delay while a half-open circuit's trial call is still running."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigError("breaker failure_threshold must be at least 1")
        if self.cool_down_s <= 0 or self.trial_busy_retry_s <= 0:
            raise ConfigError("breaker cool_down_s and trial_busy_retry_s must be positive")


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    """One breaker as the metrics see it."""

    provider: str
    base_url: str
    models: tuple[str, ...]
    """Catalog models served through this endpoint."""
    state: CircuitState
    state_value: int
    """``state`` as a number for a Prometheus gauge (``STATE_VALUES``)."""
    consecutive_failures: int
    retry_in_s: float | None
    """Seconds until an open circuit lets a trial through; ``None`` unless open."""


class Permit:
    """The right to make one call through a breaker; report how it ended exactly once
    (later reports are ignored, so ``finally: permit.release()`` is always safe)."""

    __slots__ = ("_breaker", "_done", "generation", "trial")

    def __init__(self, breaker: CircuitBreaker, *, trial: bool, generation: int) -> None:
        self._breaker = breaker
        self._done = False
        self.trial = trial
        """Whether this is the half-open circuit's single trial call."""
        self.generation = generation

    def succeeded(self) -> None:
        """The provider answered."""
        if not self._done:
            self._done = True
            self._breaker._on_success(self)

    def failed(self) -> None:
        """A counted failure."""
        if not self._done:
            self._done = True
            self._breaker._on_failure(self)

    def release(self) -> None:
        """The call ended without telling anything about the provider's health."""
        if not self._done:
            self._done = True
            self._breaker._on_release(self)


class CircuitBreaker:
    """The breaker of one provider endpoint."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.base_url = base_url
        self._settings = settings
        self._clock = clock
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        # Bumped whenever the circuit closes again, so a late report from a call that
        # started before an outage cannot count against the recovered circuit.
        self._generation = 0

    @property
    def settings(self) -> BreakerSettings:
        """The threshold and cool-down this breaker runs with."""
        return self._settings

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.provider!r}, {self.base_url!r}, state={self.state!r})"

    @property
    def state(self) -> CircuitState:
        """``closed``, ``open`` or ``half_open`` (an open circuit whose cool-down is over
        is already half-open)."""
        self._refresh()
        return self._state

    @property
    def state_value(self) -> int:
        """``state`` as a gauge value (closed 0, open 1, half-open 2)."""
        return STATE_VALUES[self.state]

    def available(self) -> bool:
        """Whether ``try_acquire`` would give a permit now."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial_running)

    def retry_in(self) -> float:
        """Seconds until a call may be let through (0 when one may be now)."""
        state = self.state
        if state == "open":
            return max(self._opened_at + self._settings.cool_down_s - self._clock(), 0.0)
        if state == "half_open" and self._trial_running:
            return self._settings.trial_busy_retry_s
        return 0.0

    def try_acquire(self) -> Permit | None:
        """A permit for one call, or ``None`` if the circuit does not allow one now."""
        state = self.state
        if state == "closed":
            return Permit(self, trial=False, generation=self._generation)
        if state == "half_open" and not self._trial_running:
            self._trial_running = True
            return Permit(self, trial=True, generation=self._generation)
        return None

    def snapshot(self, models: tuple[str, ...] = ()) -> BreakerState:
        """The breaker's state for metrics."""
        state = self.state
        return BreakerState(
            provider=self.provider,
            base_url=self.base_url,
            models=models,
            state=state,
            state_value=STATE_VALUES[state],
            consecutive_failures=self._failures,
            retry_in_s=self.retry_in() if state == "open" else None,
        )

    def _refresh(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self._settings.cool_down_s:
            self._state = "half_open"
            self._trial_running = False
            log.info(
                "circuit %s %s is half-open: next call is a trial", self.provider, self.base_url
            )

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._trial_running = False
        log.warning(
            "circuit %s %s opened after %d consecutive failures; cool-down %.1f s",
            self.provider,
            self.base_url,
            self._failures,
            self._settings.cool_down_s,
        )

    def _on_success(self, permit: Permit) -> None:
        self._refresh()
        if permit.trial and self._state == "half_open":
            self._state = "closed"
            self._failures = 0
            self._trial_running = False
            self._generation += 1
            log.info("circuit %s %s closed: the trial call succeeded", self.provider, self.base_url)
        elif self._state == "closed" and permit.generation == self._generation:
            self._failures = 0

    def _on_failure(self, permit: Permit) -> None:
        self._refresh()
        if permit.trial and self._state == "half_open":
            self._failures += 1
            self._open()
        elif self._state == "closed" and permit.generation == self._generation:
            self._failures += 1
            if self._failures >= self._settings.failure_threshold:
                self._open()

    def _on_release(self, permit: Permit) -> None:
        if permit.trial:
            self._trial_running = False


class BreakerRegistry:
    """Every breaker of one worker replica, keyed by provider and base_url."""

    def __init__(
        self, *, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._models: dict[tuple[str, str], list[str]] = {}

    def for_model(self, model: ModelConfig) -> CircuitBreaker:
        """The breaker guarding ``model``'s endpoint (created on first use)."""
        key = (model.provider, model.base_url or "")
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(
                provider=key[0],
                base_url=key[1],
                settings=self.settings_for(model),
                clock=self._clock,
            )
            self._breakers[key] = breaker
            self._models[key] = []
        if model.name not in self._models[key]:
            self._models[key].append(model.name)
        return breaker

    def settings_for(self, model: ModelConfig) -> BreakerSettings:
        """The registry's settings with the model's ``[breaker]`` table applied (the
        catalog makes sure models sharing an endpoint agree)."""
        own = model.breaker
        return replace(
            self._settings,
            failure_threshold=own.failure_threshold or self._settings.failure_threshold,
            cool_down_s=own.cool_down_s or self._settings.cool_down_s,
        )

    def states(self) -> list[BreakerState]:
        """Every breaker's state, with its provider, base_url and models as labels."""
        return [
            breaker.snapshot(tuple(self._models[key])) for key, breaker in self._breakers.items()
        ]
