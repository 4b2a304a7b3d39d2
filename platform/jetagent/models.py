"""The model catalog: which provider serves a model, where, and what its tokens cost.

One TOML file (``JETAGENT_MODELS``, default: ``models.toml`` shipped with jetagent)::

    [models."gpt-4o-mini"]
    provider = "openai"                   # openai | anthropic | offline
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"        # the key's variable name; never the key itself
    context_window = 128000
    max_output_tokens = 4096
    input_per_mtok = 0.15                 # USD per million input tokens
    output_per_mtok = 0.60
    cached_per_mtok = 0.075               # USD per million cached input tokens
    typical_latency_s = 2.0               # a call slower than this may be hedged
    fallbacks = ["claude-3-5-haiku"]      # tried in order when this model's circuit is open
    cheaper = "gpt-4o-mini"               # used when the remaining budget is low

    # Resilience, all optional (README "Resilience settings"); unset values take the
    # gateway's defaults.
    [models."gpt-4o-mini".timeouts]       # connect_s, read_s, total_s
    [models."gpt-4o-mini".hedge]          # after, delay_s, min_samples, max_hedges, target
    [models."gpt-4o-mini".breaker]        # failure_threshold, cool_down_s (per endpoint)
    [models."gpt-4o-mini".retry]          # max_attempts, max_total_s, max_wait_s
    [models."gpt-4o-mini".headers]        # extra request headers, e.g. X-Route = "eu"

The orchestrator reads prices to reserve a step's maximum spend; workers read endpoints
and resilience settings.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .llm import Usage
from .model_settings import (
    BreakerConfig,
    HedgeConfig,
    RetryConfig,
    TimeoutConfig,
    check_headers,
)

__all__ = [
    "BreakerConfig",
    "HedgeConfig",
    "ModelCatalog",
    "ModelConfig",
    "RetryConfig",
    "TimeoutConfig",
    "cost_usd",
]

ProviderName = Literal["openai", "anthropic", "offline"]
_MTOK = Decimal(1_000_000)


class ModelConfig(BaseModel):
    """One model: provider, endpoint, limits and prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: ProviderName
    base_url: str | None = None
    api_key_env: str | None = None
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)
    cached_per_mtok: Decimal = Field(ge=0, default=Decimal(0))
    typical_latency_s: float = Field(gt=0, default=5.0)
    fallbacks: tuple[str, ...] = ()
    cheaper: str | None = None
    timeouts: TimeoutConfig = TimeoutConfig()
    """Connect, read and total timeouts of one call to this model."""
    hedge: HedgeConfig = HedgeConfig()
    """When a slow call to this model is raced by another, how often, and on what."""
    breaker: BreakerConfig = BreakerConfig()
    """The circuit breaker of this model's endpoint (models sharing one must agree)."""
    retry: RetryConfig = RetryConfig()
    """How long a call that is rate limited everywhere keeps trying."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers sent to this model's endpoint (a TOML table in the file)."""

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: object) -> object:
        return check_headers(value)

    def cost(self, usage: Usage) -> Decimal:
        """USD for a call's usage; cached input tokens are billed at the cached price."""
        fresh = max(usage.input_tokens - usage.cached_tokens, 0)
        return (
            fresh * self.input_per_mtok
            + usage.cached_tokens * self.cached_per_mtok
            + usage.output_tokens * self.output_per_mtok
        ) / _MTOK

    def max_cost(self, input_tokens: int, max_output_tokens: int) -> Decimal:
        """The most a call can cost: all input uncached, every output token used."""
        return (
            input_tokens * self.input_per_mtok + max_output_tokens * self.output_per_mtok
        ) / _MTOK


def cost_usd(model: ModelConfig, usage: Usage) -> Decimal:
    return model.cost(usage)


@dataclass(frozen=True)
class ModelCatalog:
    """Every configured model, by name."""

    models: dict[str, ModelConfig]
    source: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> ModelCatalog:
        """Read the catalog from ``path``, ``$JETAGENT_MODELS``, or the shipped default."""
        where = path or os.environ.get("JETAGENT_MODELS")
        if where:
            try:
                text = Path(where).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read the model catalog {where}: {exc}") from exc
            source = str(where)
        else:
            text = resources.files("jetagent").joinpath("models.toml").read_text()
            source = "jetagent/models.toml (built in)"
        return cls.parse(text, source=source)

    @classmethod
    def parse(cls, text: str, *, source: str = "<text>") -> ModelCatalog:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
        models: dict[str, ModelConfig] = {}
        problems: list[str] = []
        for name, entry in (raw.get("models") or {}).items():
            try:
                models[name] = ModelConfig(name=name, **entry)
            except ValidationError as exc:
                for err in exc.errors():
                    where = ".".join(str(p) for p in err["loc"])
                    problems.append(f"models.{name}.{where}: {err['msg']}")
            except TypeError as exc:
                problems.append(f"models.{name}: {exc}")
        problems.extend(_breaker_conflicts(models))
        for model in models.values():
            cheaper = [model.cheaper] if model.cheaper else []
            for other in (*model.fallbacks, *cheaper, *(model.hedge.models or ())):
                if other not in models:
                    problems.append(f"models.{model.name} refers to unknown model {other!r}")
        if problems:
            raise ConfigError(f"invalid model catalog {source}: " + "; ".join(problems))
        if not models:
            raise ConfigError(f"the model catalog {source} defines no models")
        return cls(models=models, source=source)

    def get(self, name: str) -> ModelConfig:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ConfigError(f"unknown model {name!r} (configured: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.models


def _breaker_conflicts(models: dict[str, ModelConfig]) -> list[str]:
    # One breaker guards one endpoint (provider + base_url), so the models it serves
    # must not ask for different thresholds.
    first: dict[tuple[str, str], ModelConfig] = {}
    problems: list[str] = []
    for model in models.values():
        key = (model.provider, model.base_url or "")
        seen = first.setdefault(key, model)
        if seen.breaker != model.breaker:
            problems.append(
                f"models.{seen.name} and models.{model.name} share the endpoint "
                f"{model.provider} {model.base_url or '(none)'} but set different "
                f"breaker settings ({seen.breaker} vs {model.breaker}); one breaker guards "
                "one endpoint, so give them the same [breaker] table"
            )
    return problems
