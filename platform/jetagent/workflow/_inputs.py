"""What ``decide`` reads: the static :class:`DecideContext` and the inputs. Pure values.

Each input is something that happened (a request, a step's result, a cancel, a signal,
time passing, a quota slot freeing) with the time the orchestrator took from the message
that carried it; the context is the configuration decisions read (passed in, never
fetched).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from jetagent.events import QuotaUse, StepResult
from jetagent.models import ModelConfig
from jetagent.tokens import Tokenizer
from jetagent.tool_info import ToolInfo

__all__ = [
    "Admit",
    "Begin",
    "Cancel",
    "DecideContext",
    "FoldResult",
    "Hold",
    "Input",
    "RateLimited",
    "Signal",
    "Tick",
]


@dataclass(frozen=True, kw_only=True)
class DecideContext:
    """The static configuration decisions read (passed in, never fetched)."""

    models: Mapping[str, ModelConfig]
    tools: Mapping[str, ToolInfo] = field(default_factory=dict)
    max_step_attempts: int = 2
    estimate_factor: Decimal = Decimal("1.25")
    """Safety factor on the stated token estimate for providers with other tokenizers."""
    openai_tokenizer: Tokenizer | None = None
    """tiktoken's count for OpenAI-style routes (loaded by the caller; None: estimate)."""


@dataclass(frozen=True, kw_only=True)
class Hold:
    """The tenant is at its concurrency quota: the request waits (``Held``)."""

    quota: QuotaUse
    position: int
    """Its place in the tenant's queue (1: next)."""


@dataclass(frozen=True, kw_only=True)
class Begin:
    """A validated request: the workflow starts (or is held, ``hold``)."""

    workflow_id: str
    tenant: str
    request: dict[str, Any]
    at: datetime
    deadline_at: datetime | None = None
    hold: Hold | None = None
    """Set when the tenant's concurrency quota holds the request instead of starting it."""


@dataclass(frozen=True, kw_only=True)
class Admit:
    """A held workflow got a slot of its tenant's quota: it starts now."""

    at: datetime


@dataclass(frozen=True, kw_only=True)
class RateLimited:
    """The tenant's tokens per minute cannot cover the steps a decision would schedule:
    they wait until ``until`` (``Throttled``)."""

    quota: QuotaUse
    needed: int
    until: datetime


@dataclass(frozen=True, kw_only=True)
class FoldResult:
    """A capability's result for a step, read at ``result_seq`` in ``JA_STEPS``."""

    result: StepResult
    result_seq: int
    at: datetime


@dataclass(frozen=True, kw_only=True)
class _Sent:
    """An input a client sent to one workflow, which may not have started yet."""

    at: datetime
    by: str = ""
    workflow_id: str = ""
    expires_at: datetime | None = None
    """Until when it is kept for a workflow not started yet (None: not kept)."""


@dataclass(frozen=True, kw_only=True)
class Cancel(_Sent):
    """A cancel of the workflow (kept until ``expires_at`` if it has not started yet)."""

    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Signal(_Sent):
    """A named signal; ``approval`` resolves a step awaiting approval."""

    name: str
    payload: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Tick:
    """Time passed: lets deadlines end idle workflows."""

    at: datetime


Input = Begin | FoldResult | Cancel | Signal | Tick | Admit
"""Every input ``decide`` takes."""
