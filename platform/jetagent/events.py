"""Every event jetagent writes, as frozen msgspec Structs (JSON, tagged by ``type``).

A written event is a contract: its shape changes only with a new schema version ``v``
and an upcaster from the old one (``UPCASTERS``), so old streams stay readable.

- Workflow aggregate events (``JA_WORKFLOWS``, ``<prefix>.wf.<workflow_id>.<Type>[...]``):
  Started, StepScheduled, StepCompleted, StepFailed, ApprovalRequested, ApprovalResolved,
  Finalized, Terminated, Cancelled, and RequestRejected for a request that never started;
  InputDeferred (a cancel or signal that arrived before its workflow started, kept until it
  starts) and InputRejected (such inputs answered: the workflow did not start in time);
  Held (a request over its tenant's concurrency quota, waiting for a slot) and Throttled
  (steps waiting for the tenant's tokens per minute), each with the ``QuotaUse`` behind it.
- ``StepResult`` (``JA_STEPS``): what a capability worker produced for one step, with the
  usage and cost of every provider call it made (recorded there and nowhere else).
- ``CancelRequested`` and ``SignalSent`` (``JA_REQUESTS``), next to the requests.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec

from .llm import Usage
from .subjects import event_tail

__all__ = [
    "CURRENT_VERSIONS",
    "UPCASTERS",
    "ApprovalRequested",
    "ApprovalResolved",
    "CallRecord",
    "CancelRequested",
    "Cancelled",
    "Finalized",
    "Held",
    "InputDeferred",
    "InputRejected",
    "Money",
    "QuotaUse",
    "RequestRejected",
    "RoutingDecision",
    "SignalSent",
    "Spend",
    "Started",
    "StepCompleted",
    "StepError",
    "StepFailed",
    "StepResult",
    "StepScheduled",
    "Terminated",
    "Throttled",
    "WorkflowEvent",
    "decode_event",
    "decode_events",
    "decode_step_result",
    "encode",
    "encode_events",
    "event_type",
    "group_for_messages",
    "subject_tail",
]

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


# ---------------------------------------------------------------------------- codec

_encoder = msgspec.json.Encoder(decimal_format="string")


def encode(event: msgspec.Struct) -> bytes:
    """JSON bytes of any event."""
    return _encoder.encode(event)


_workflow_decoder = msgspec.json.Decoder(WorkflowEvent)
_result_decoder = msgspec.json.Decoder(StepResult)
_EVENT_CLASSES: tuple[type[_Event], ...] = (
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


def event_type(cls: type[msgspec.Struct]) -> str:
    """The ``type`` tag of an event class."""
    return str(cls.__struct_config__.tag)


def _current_version(cls: type[msgspec.Struct]) -> int:
    for field in msgspec.structs.fields(cls):
        if field.name == "v":
            return int(field.default)
    raise TypeError(f"{cls} has no schema version")


CURRENT_VERSIONS: dict[str, int] = {event_type(c): _current_version(c) for c in _EVENT_CLASSES}
"""The schema version each event type is written with today."""
_CURRENT_BY_CLASS: dict[type[msgspec.Struct], int] = {
    c: _current_version(c) for c in _EVENT_CLASSES
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""``(type, from_version) -> function`` returning the event one version newer."""


def _step_scheduled_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no budget reservation and no iteration (written before budgets existed).
    data.setdefault("reservation", {"tokens": 0, "usd": "0"})
    data.setdefault("iteration", 1)
    return data


UPCASTERS[("StepScheduled", 1)] = _step_scheduled_v1_v2


def _started_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no held_since (written before tenant quotas existed): it started at once.
    data.setdefault("held_since", None)
    return data


UPCASTERS[("Started", 1)] = _started_v1_v2


def _request_rejected_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no quota (written before tenant quotas existed): it failed its checks.
    data.setdefault("quota", None)
    return data


UPCASTERS[("RequestRejected", 1)] = _request_rejected_v1_v2


def _upcast(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise msgspec.ValidationError(f"an event is a JSON object, not {type(raw).__name__}")
    data: dict[str, Any] = raw
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CURRENT_VERSIONS:
        raise msgspec.ValidationError(f"unknown event type {kind!r}")
    version = data.get("v", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise msgspec.ValidationError(f"schema version {version!r} is not a version")
    while version < CURRENT_VERSIONS[kind]:
        step = UPCASTERS.get((kind, version))
        if step is None:
            raise msgspec.ValidationError(f"no upcaster for {kind} v{version}")
        data = step(data)
        version += 1
        data["v"] = version
    return data


def _too_deep() -> msgspec.DecodeError:
    # msgspec recurses and raises RecursionError on JSON nested ~1000 levels deep; that
    # is a decode error like any other here (no reader should treat it as a bug).
    return msgspec.DecodeError("the JSON is nested too deep to read")


def decode_event(data: bytes) -> WorkflowEvent:
    """Decode a workflow event, upcasting an older shape to the current one.

    Anything that is not an event raises ``msgspec.DecodeError`` or ``ValidationError``.
    """
    try:
        return _decode_event(data)
    except RecursionError:
        raise _too_deep() from None


def _decode_event(data: bytes) -> WorkflowEvent:
    event: WorkflowEvent | None
    try:
        event = _workflow_decoder.decode(data)
    except msgspec.ValidationError:
        event = None
    if event is not None and event.v == _CURRENT_BY_CLASS[type(event)]:
        return event
    raw = _upcast(msgspec.json.decode(data))
    upcast: WorkflowEvent = msgspec.convert(raw, WorkflowEvent)
    return upcast


_batch_decoder = msgspec.json.Decoder(list[WorkflowEvent])


def encode_events(events: list[WorkflowEvent]) -> bytes:
    """One message's body: the event itself, or a JSON array of a decision's events."""
    if len(events) == 1:
        return encode(events[0])
    return _encoder.encode(events)


def decode_events(data: bytes) -> list[WorkflowEvent]:
    """The events of one ``JA_WORKFLOWS`` message (one event, or an array of them).

    Never empty; anything else (``[]`` included) raises ``msgspec.DecodeError`` or
    ``msgspec.ValidationError``.
    """
    try:
        return _decode_events(data)
    except RecursionError:
        raise _too_deep() from None


def _decode_events(data: bytes) -> list[WorkflowEvent]:
    if data.lstrip()[:1] != b"[":
        return [_decode_event(data)]
    try:
        events: list[WorkflowEvent] = _batch_decoder.decode(data)
    except msgspec.ValidationError:
        events = []
    if events and all(e.v == _CURRENT_BY_CLASS[type(e)] for e in events):
        return events
    items = msgspec.json.decode(data)
    if not isinstance(items, list) or not items:
        raise msgspec.ValidationError("a message holds one event or a non-empty array of them")
    return [_decode_event(msgspec.json.encode(item)) for item in items]


def group_for_messages(events: list[WorkflowEvent]) -> list[list[WorkflowEvent]]:
    """A decision's events cut into messages: each ``StepScheduled`` ends a message (its
    subject names the capability workers filter on) and ``Started`` stands alone (the
    subject that names a workflow's creation); everything else rides along, so a usual
    step's ``StepCompleted`` and next ``StepScheduled`` are one write."""
    groups: list[list[WorkflowEvent]] = []
    current: list[WorkflowEvent] = []
    for event in events:
        if isinstance(event, Started):
            if current:
                groups.append(current)
            groups.append([event])
            current = []
            continue
        current.append(event)
        if isinstance(event, StepScheduled):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def decode_step_result(data: bytes) -> StepResult:
    """A ``StepResult`` (``msgspec.DecodeError`` / ``ValidationError`` if it is not one)."""
    try:
        return _result_decoder.decode(data)
    except RecursionError:
        raise _too_deep() from None


def subject_tail(event: WorkflowEvent) -> str:
    """The subject tokens after ``<prefix>.wf.<workflow_id>.`` for an event."""
    name = str(event_type(type(event)))
    if isinstance(event, StepScheduled):
        return event_tail(name, event.capability, event.tool or None)
    return event_tail(name)
