"""The event types: frozen msgspec Structs, tagged by ``type``, each with its schema version.

How they are written and read (JSON, upcasting an older shape) is ``_codec``'s.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec

from jetagent.llm import Usage

Money = Decimal
"""USD amounts: exact decimals, written as JSON strings."""


class Spend(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and USD: a reservation when a step is scheduled, a settlement when it ends."""

    tokens: int = 0
    usd: Money = Decimal(0)

    def __add__(self, other: Spend) -> Spend:
        return Spend(tokens=self.tokens + other.tokens, usd=self.usd + other.usd)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(tokens=self.tokens - other.tokens, usd=self.usd - other.usd)


class RoutingDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Which model a call used and why (preferred, fallback, cheaper, hedge)."""

    model: str
    reason: str


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    """Schema version of this event's shape."""


class _WorkflowEventBase(_Event, frozen=True, kw_only=True):
    workflow_id: str
    at: datetime
    """When the orchestrator decided it (from the input it was processing)."""


class Started(_WorkflowEventBase, frozen=True, kw_only=True, tag="Started"):
    v: int = 2
    tenant: str
    request: dict[str, Any]
    """The validated request, as JSON."""
    deadline_at: datetime | None = None
    held_since: datetime | None = None
    """When its request was held by its tenant's quota (None: it started at once)."""


class StepScheduled(_WorkflowEventBase, frozen=True, kw_only=True, tag="StepScheduled"):
    v: int = 2
    step_id: str
    capability: str
    tool: str | None = None
    attempt: int = 1
    iteration: int
    """The reasoning turn this step belongs to."""
    input: dict[str, Any]
    """What the capability needs; large values travel as claim-check references."""
    route: RoutingDecision | None = None
    reservation: Spend
    """The most this step may spend; held against the budgets until it settles."""
    tenant: str
    deadline_at: datetime | None = None


class StepCompleted(_WorkflowEventBase, frozen=True, kw_only=True, tag="StepCompleted"):
    step_id: str
    capability: str
    tool: str | None = None
    output: dict[str, Any]
    settlement: Spend
    """What the step actually spent (sum of its StepResult's calls)."""
    result_seq: int
    """The StepResult's sequence in JA_STEPS, where its usage is recorded."""


class StepFailed(_WorkflowEventBase, frozen=True, kw_only=True, tag="StepFailed"):
    step_id: str
    capability: str
    tool: str | None = None
    error: str
    error_type: str
    retryable: bool
    settlement: Spend
    result_seq: int


class ApprovalRequested(_WorkflowEventBase, frozen=True, kw_only=True, tag="ApprovalRequested"):
    step_id: str
    tool: str
    arguments: dict[str, Any]
    call_id: str


class ApprovalResolved(_WorkflowEventBase, frozen=True, kw_only=True, tag="ApprovalResolved"):
    step_id: str
    approved: bool
    by: str = ""
    comment: str = ""


class Finalized(_WorkflowEventBase, frozen=True, kw_only=True, tag="Finalized"):
    output: str
    spent: Spend
    iterations: int


class Terminated(_WorkflowEventBase, frozen=True, kw_only=True, tag="Terminated"):
    reason: str
    """token_cap, cost_cap, max_iterations, deadline, step_failed, invalid_output."""
    detail: str
    partial_output: str = ""
    spent: Spend


class Cancelled(_WorkflowEventBase, frozen=True, kw_only=True, tag="Cancelled"):
    reason: str = ""
    by: str = ""
    spent: Spend


class QuotaUse(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant quota at the moment it decided something: which, its limit, the use."""

    quota: Literal["max_workflows", "tokens_per_minute"]
    limit: int
    in_use: int
    """Workflows running, or tokens spent and reserved in the last minute."""

    def describe(self, tenant: str) -> str:
        """One sentence for a reason: ``tenant 'acme' is at its quota max_workflows …``."""
        if self.quota == "max_workflows":
            use = f"{self.in_use} of {self.limit} concurrent workflows running"
        else:
            use = f"{self.in_use} of {self.limit} tokens per minute in use"
        return f"tenant {tenant!r} is at its quota {self.quota}={self.limit} ({use})"


class RequestRejected(_WorkflowEventBase, frozen=True, kw_only=True, tag="RequestRejected"):
    v: int = 2
    reasons: list[str]
    tenant: str | None = None
    size: int = 0
    quota: QuotaUse | None = None
    """The tenant quota that refused it (None: it failed its checks)."""


class Held(_WorkflowEventBase, frozen=True, kw_only=True, tag="Held"):
    """A valid request over its tenant's concurrency quota, held (``JETAGENT_OVER_QUOTA=
    hold``): it starts, in arrival order per tenant, when a slot frees. Its deadline runs
    from now; a held workflow whose deadline passes ends ``Terminated(deadline)``."""

    tenant: str
    request: dict[str, Any]
    """The validated request, as JSON (``Started`` carries it again when it starts)."""
    deadline_at: datetime | None = None
    quota: QuotaUse
    position: int = 0
    """Its place in the tenant's queue when it was held (1: next to start)."""


class Throttled(_WorkflowEventBase, frozen=True, kw_only=True, tag="Throttled"):
    """The workflow's next steps wait: its tenant's tokens per minute are spent. They are
    scheduled at ``until`` (a durable timer), or throttled again then if still over."""

    quota: QuotaUse
    needed: int
    """Tokens the waiting steps reserve."""
    until: datetime


class InputDeferred(_WorkflowEventBase, frozen=True, kw_only=True, tag="InputDeferred"):
    """A cancel or a signal for a workflow that has not started yet: kept, and applied
    when it starts (a cancel ends it at once), or answered by ``InputRejected`` if it has
    not started by ``expires_at``."""

    kind: Literal["cancel", "signal"]
    name: str = ""
    """The signal's name (empty for a cancel)."""
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    reason: str = ""
    by: str = ""
    expires_at: datetime


class InputRejected(_WorkflowEventBase, frozen=True, kw_only=True, tag="InputRejected"):
    """Every deferred cancel and signal of a workflow answered: why none could apply."""

    reasons: list[str]


WorkflowEvent = (
    Started
    | StepScheduled
    | StepCompleted
    | StepFailed
    | ApprovalRequested
    | ApprovalResolved
    | Finalized
    | Terminated
    | Cancelled
    | RequestRejected
    | InputDeferred
    | InputRejected
    | Held
    | Throttled
)


class CallRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One provider call of a step: the single place its usage and cost are recorded."""

    model: str
    provider: str
    outcome: str
    """ok, failed, rate_limited, or cancelled (a hedge that lost)."""
    usage: Usage | None = None
    """None when the provider did not report it (a cancelled call)."""
    cost_usd: Money | None = None
    latency_s: float = 0.0
    error: str | None = None


class StepError(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    message: str
    retryable: bool


class StepResult(_Event, frozen=True, kw_only=True, tag="StepResult"):
    """A capability's answer for one step; write-once per step."""

    workflow_id: str
    step_id: str
    capability: str
    tool: str | None = None
    attempt: int = 1
    tenant: str
    ok: bool
    output: dict[str, Any] = msgspec.field(default_factory=dict)
    error: StepError | None = None
    calls: list[CallRecord] = msgspec.field(default_factory=list)
    routing: list[RoutingDecision] = msgspec.field(default_factory=list)
    started_at: datetime
    finished_at: datetime
    worker: str = ""
    deliveries: int = 1
    interrupted_runs: int = 0
    """Earlier runs of this step that died mid-way (their worker stopped or was lost);
    ``calls`` holds their provider calls too."""

    def spend(self) -> Spend:
        """Tokens and USD of every call of this step, billed failures included."""
        tokens = sum(c.usage.total_tokens for c in self.calls if c.usage)
        usd = sum((c.cost_usd for c in self.calls if c.cost_usd), Decimal(0))
        return Spend(tokens=tokens, usd=usd)


class CancelRequested(_Event, frozen=True, kw_only=True, tag="CancelRequested"):
    workflow_id: str
    reason: str = ""
    by: str = ""


class SignalSent(_Event, frozen=True, kw_only=True, tag="SignalSent"):
    workflow_id: str
    name: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    by: str = ""


EVENT_CLASSES: tuple[type[_Event], ...] = (
    Started,
    StepScheduled,
    StepCompleted,
    StepFailed,
    ApprovalRequested,
    ApprovalResolved,
    Finalized,
    Terminated,
    Cancelled,
    RequestRejected,
    InputDeferred,
    InputRejected,
    Held,
    Throttled,
    StepResult,
    CancelRequested,
    SignalSent,
)
