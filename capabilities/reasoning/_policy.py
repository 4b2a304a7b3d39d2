"""Each model's effective resilience settings: its catalog tables (``[models.X.hedge]``,
``.timeouts``, ``.retry``) over the gateway's defaults, with the words a routing
decision uses to say which setting decided; and the latencies a ``p95`` hedge learns
from."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from jetagent.models import ModelConfig

__all__ = ["GatewayDefaults", "HedgeDelay", "HedgeTarget", "LatencyWindow", "seconds"]

HedgeTarget = Literal["same_model", "fallback"]
_WINDOW = 200  # recent answered calls per model: enough for a stable p95, quick to adapt


@dataclass(frozen=True, kw_only=True)
class GatewayDefaults:
    """What a model gets for every setting its catalog entry leaves unset."""

    hedge_factor: float | None
    """Hedge after ``typical_latency_s`` times this; ``None`` never hedges by default."""
    hedge_target: HedgeTarget
    max_hedges: int
    call_timeout_s: float

    def total_timeout(self, model: ModelConfig) -> tuple[float, str]:
        """The longest one call may take, and which setting says so."""
        if model.timeouts.total_s is not None:
            return model.timeouts.total_s, f"timeouts.total_s of {model.name}"
        return self.call_timeout_s, "the gateway's call_timeout_s"

    def hedge_target_of(self, model: ModelConfig) -> HedgeTarget:
        return model.hedge.target or self.hedge_target

    def max_hedges_of(self, model: ModelConfig) -> int:
        return self.max_hedges if model.hedge.max_hedges is None else model.hedge.max_hedges

    def hedge_delay(self, model: ModelConfig, latencies: LatencyWindow) -> HedgeDelay | None:
        """When a call to ``model`` is first hedged (``None``: never)."""
        if self.max_hedges_of(model) == 0:
            return None
        hedge = model.hedge
        if hedge.after == "p95":
            observed = latencies.p95(model.name, min_samples=hedge.min_samples)
            if observed is not None:
                p95, count = observed
                return HedgeDelay(delay_s=p95, why=f" (p95 of the last {count} calls)")
        if hedge.delay_s is not None:
            return HedgeDelay(delay_s=hedge.delay_s, why=" (hedge.delay_s)")
        if self.hedge_factor is None:
            return None
        return HedgeDelay(delay_s=model.typical_latency_s * self.hedge_factor, why="")


@dataclass(frozen=True)
class HedgeDelay:
    """Seconds before a hedge, and the reason's note on where the value came from."""

    delay_s: float
    why: str


class LatencyWindow:
    """The latencies of each model's recent answered calls."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def observe(self, model: str, seconds: float) -> None:
        self._seen.setdefault(model, deque(maxlen=_WINDOW)).append(seconds)

    def p95(self, model: str, *, min_samples: int) -> tuple[float, int] | None:
        """(p95, sample count) once at least ``min_samples`` calls answered."""
        seen = self._seen.get(model)
        if not seen or len(seen) < min_samples:
            return None
        ordered = sorted(seen)
        # Nearest-rank percentile: the smallest latency at or above 95 % of the calls.
        return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)], len(ordered)


def seconds(value: float) -> str:
    """``1.5``-style text for reasons; small values keep their digits."""
    return f"{value:.1f}" if value >= 0.1 else f"{value:.3f}"
