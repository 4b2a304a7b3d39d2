"""The resilience settings of one model in the catalog (README "Resilience settings"):
timeouts, hedging, its endpoint's circuit breaker, the rate-limit retry budget and extra
request headers. Each is a TOML table under the model; every field is optional, and an
unset one (``None``) takes the reasoning gateway's default, so a catalog without these
tables behaves as before. Validated when the catalog is loaded, with the field's path in
the error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BreakerConfig", "HedgeConfig", "RetryConfig", "TimeoutConfig", "check_headers"]

MAX_HEDGES = 4
"""More parallel copies of one call than this only multiply the bill."""

# RFC 9110 §5.6.2: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Keys come from api_key_env only, never from a file that gets copied around; framing
# headers are the HTTP client's.
_KEY_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
_FRAMING_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection"}
)


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeoutConfig(_Table):
    """How long one call to the model may take."""

    connect_s: float | None = Field(None, gt=0, le=600)
    """Time to open the TCP/TLS connection (default: the worker's, 5 s)."""
    read_s: float | None = Field(None, gt=0, le=3600)
    """Longest silence while waiting for the answer (default: the worker's, 120 s)."""
    total_s: float | None = Field(None, gt=0, le=3600)
    """The whole call, connect to last byte (default: the gateway's, 120 s); never
    longer than what the workflow's deadline leaves."""

    @model_validator(mode="after")
    def _read_within_total(self) -> Self:
        for name in ("connect_s", "read_s"):
            part = getattr(self, name)
            if part is not None and self.total_s is not None and part > self.total_s:
                raise ValueError(
                    f"{name} ({part}) is longer than total_s ({self.total_s}): "
                    "the total timeout would always fire first"
                )
        return self


class HedgeConfig(_Table):
    """Racing a slow call with another one."""

    after: Literal["fixed", "p95"] = "fixed"
    """``fixed``: hedge after ``delay_s``; ``p95``: after the p95 latency observed for
    this model's endpoint, once ``min_samples`` calls have answered (``delay_s`` until
    then)."""
    delay_s: float | None = Field(None, gt=0, le=3600)
    """Seconds before the first hedge, and between hedges (default: the model's
    ``typical_latency_s`` times the gateway's hedge factor, 2)."""
    min_samples: int = Field(20, ge=1, le=10_000)
    """Answered calls needed before ``after = "p95"`` trusts the observed p95."""
    max_hedges: int | None = Field(None, ge=0, le=MAX_HEDGES)
    """Hedges one call may start on a timer (default 1; 0 never hedges). A hedge that
    fails while another call is still running is replaced by the next candidate at
    once, without counting against this."""
    target: Literal["same_model", "fallback"] | None = None
    """``same_model``: hedge with this model first, then its fallbacks; ``fallback``:
    its fallbacks first (default: the gateway's, ``same_model``). Candidates whose
    circuit is not closed, or that the budget cannot pay for, are skipped."""
    models: tuple[str, ...] | None = None
    """The candidates to hedge with, in order, instead of what ``target`` says (this
    model may be one of them)."""


class BreakerConfig(_Table):
    """The circuit breaker of the model's endpoint (provider + base_url)."""

    failure_threshold: int | None = Field(None, ge=1, le=10_000)
    """Consecutive counted failures (5xx, timeouts, network errors) that open it
    (default 5)."""
    cool_down_s: float | None = Field(None, gt=0, le=86_400)
    """Seconds an open circuit waits before one trial call (default 30)."""


class RetryConfig(_Table):
    """The retry budget of a call that every candidate model rate limits (429)."""

    max_attempts: int = Field(5, ge=1, le=1000)
    """Rounds of calls in one step, the first included (each round tries the model and
    its fallbacks)."""
    max_total_s: float = Field(60.0, gt=0, le=86_400)
    """Seconds from the step's first call after which no further round starts; the
    workflow's remaining deadline caps it further."""
    max_wait_s: float = Field(30.0, gt=0, le=3600)
    """The longest wait before one retry; a provider asking for more (``retry-after``)
    ends the budget at once instead of holding the step."""


def check_headers(value: object) -> object:
    """Extra headers from a TOML table, as sorted ``(name, value)`` pairs; raises
    ValueError naming the offending header."""
    if not isinstance(value, Mapping):
        return value  # a tuple of pairs (from code), validated by its type
    pairs: list[tuple[str, str]] = []
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP field name")
        if not isinstance(text, str):
            raise ValueError(f"header {name}: the value must be a string, not {text!r}")
        if any(c in text for c in "\r\n\0") or not text.isascii():
            raise ValueError(f"header {name}: the value must be ASCII without CR, LF or NUL")
        lower = name.lower()
        if lower in _KEY_HEADERS:
            raise ValueError(
                f"header {name}: credentials come from api_key_env (read from the "
                "environment at call time), never from the catalog"
            )
        if lower in _FRAMING_HEADERS:
            raise ValueError(f"header {name} is set by the HTTP client and cannot be changed")
        pairs.append((name, text))
    return tuple(sorted(pairs))
