"""The session view of one workflow, folded from its events and its step results.

Pure and idempotent: each view remembers the last sequence it applied from each stream
(``JA_WORKFLOWS`` and ``JA_STEPS``), so applying an event twice changes nothing, and the
two streams may be applied in any interleaving with the same result. The projection
service (``projections.sessions``) keeps these views in the ``JA_SESSIONS`` bucket;
``Client.session()`` and ``jetagent inspect`` read them.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from decimal import Decimal

import msgspec

from jetagent.contract import Status
from jetagent.events import (
    ApprovalRequested,
    ApprovalResolved,
    Cancelled,
    Finalized,
    Held,
    RequestRejected,
    Started,
    StepCompleted,
    StepFailed,
    StepResult,
    StepScheduled,
    Terminated,
    Throttled,
    WorkflowEvent,
)

__all__ = [
    "HeldResult",
    "SessionView",
    "StepView",
    "apply_step_result",
    "apply_workflow_event",
    "apply_workflow_message",
    "fold_step_result",
]

PREVIEW = 500
"""Characters of an output or instruction kept in a view (events hold the rest)."""


def _preview(text: str, limit: int = PREVIEW) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StepView(msgspec.Struct, kw_only=True):
    """One step: what ran, on which model, how long, what it cost, what came out."""

    step_id: str
    capability: str = ""
    tool: str | None = None
    attempt: int = 1
    iteration: int = 0
    status: str = "scheduled"
    model: str | None = None
    provider: str | None = None
    scheduled_at: datetime | None = None
    completed_at: datetime | None = None
    turnaround_s: float | None = None
    """Scheduled → completed, platform included."""
    duration_s: float | None = None
    """How long the capability handler ran (from its StepResult)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    calls: int = 0
    deliveries: int = 0
    output: str = ""
    error: str | None = None


class HeldResult(msgspec.Struct, kw_only=True):
    """A step result that arrived before the step it answers was seen scheduled (the
    projections read ``JA_WORKFLOWS`` and ``JA_STEPS`` in any interleaving): kept, not
    counted, until the schedule shows up or the workflow ends (then it is untrusted)."""

    seq: int
    subject: str
    result: StepResult


class SessionView(msgspec.Struct, kw_only=True):
    """One workflow's story: status, every step, usage, cost, output or error."""

    workflow_id: str
    tenant: str = ""
    status: Status = Status.QUEUED
    instruction: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str = ""
    detail: str = ""
    output: str = ""
    iterations: int = 0
    steps: list[StepView] = msgspec.field(default_factory=list)
    last_workflow_seq: int = 0
    last_step_seq: int = 0
    held: list[HeldResult] = msgspec.field(default_factory=list)
    """Results waiting for their step to be seen scheduled (projections/trust.py)."""

    @property
    def tokens(self) -> int:
        return sum(s.input_tokens + s.output_tokens for s in self.steps)

    @property
    def cost_usd(self) -> Decimal:
        return sum((s.cost_usd for s in self.steps), Decimal(0))

    def step(self, step_id: str) -> StepView:
        for step in self.steps:
            if step.step_id == step_id:
                return step
        step = StepView(step_id=step_id)
        bisect.insort(self.steps, step, key=_step_order)
        return step


def _step_order(step: StepView) -> tuple[int, str]:
    return len(step.step_id), step.step_id


def apply_workflow_event(view: SessionView, event: WorkflowEvent, seq: int) -> bool:
    """Fold a ``JA_WORKFLOWS`` event in; False if it was already applied."""
    if seq <= view.last_workflow_seq:
        return False
    view.last_workflow_seq = seq
    view.updated_at = event.at
    if view.created_at is None:
        view.created_at = event.at
    match event:
        case Held():
            view.tenant = event.tenant
            view.instruction = _preview(str(event.request.get("instruction", "")))
            if not view.status.is_final:
                view.reason = "held"
                view.detail = f"{event.quota.describe(event.tenant)}; position {event.position}"
        case Started():
            view.tenant = event.tenant
            view.instruction = _preview(str(event.request.get("instruction", "")))
            if not view.status.is_final:
                view.status = Status.PROCESSING
                view.reason = view.detail = ""  # no longer held
        case Throttled():
            if not view.status.is_final:
                view.reason = "throttled"
                until = event.until.isoformat(timespec="seconds")
                view.detail = f"{event.quota.describe(view.tenant)}; next step at {until}"
        case StepScheduled():
            if view.reason == "throttled" and not view.status.is_final:
                view.reason = view.detail = ""
            step = view.step(event.step_id)
            step.capability, step.tool = event.capability, event.tool
            step.attempt, step.iteration = event.attempt, event.iteration
            step.scheduled_at = event.at
            if event.route is not None and step.model is None:
                step.model = event.route.model
            view.iterations = max(view.iterations, event.iteration)
            _turnaround(step)
        case StepCompleted() | StepFailed():
            step = view.step(event.step_id)
            step.capability, step.tool = event.capability, event.tool
            step.completed_at = event.at
            if isinstance(event, StepCompleted):
                step.status = "completed"
                text = event.output.get("text", event.output.get("content", ""))
                step.output = _preview(str(text))
            else:
                step.status, step.error = "failed", event.error
            _turnaround(step)
        case ApprovalRequested():
            step = view.step(event.step_id)
            step.capability, step.tool, step.status = "tools", event.tool, "awaiting_approval"
            step.scheduled_at = event.at
            if not view.status.is_final:
                view.status = Status.WAITING_APPROVAL
        case ApprovalResolved():
            step = view.step(event.step_id)
            step.status = "approved" if event.approved else "denied"
            if view.status is Status.WAITING_APPROVAL:
                view.status = Status.PROCESSING
        case Finalized():
            view.status, view.output, view.ended_at = Status.FINALIZED, event.output, event.at
        case Terminated():
            view.status, view.ended_at = Status.TERMINATED, event.at
            view.reason, view.detail, view.output = event.reason, event.detail, event.partial_output
        case Cancelled():
            view.status, view.ended_at = Status.CANCELLED, event.at
            view.reason, view.detail = "cancelled", event.reason
        case RequestRejected():
            view.status, view.ended_at = Status.REJECTED, event.at
            view.reason, view.detail = "rejected", "; ".join(event.reasons)
            view.tenant = event.tenant or view.tenant
    return True


def apply_workflow_message(view: SessionView, events: list[WorkflowEvent], seq: int) -> bool:
    """Fold every event of one ``JA_WORKFLOWS`` message (they share its sequence)."""
    if seq <= view.last_workflow_seq:
        return False
    for event in events:
        view.last_workflow_seq = seq - 1  # let each event of the message through
        apply_workflow_event(view, event, seq)
    return True


def _turnaround(step: StepView) -> None:
    if step.scheduled_at is not None and step.completed_at is not None:
        step.turnaround_s = (step.completed_at - step.scheduled_at).total_seconds()


def apply_step_result(view: SessionView, result: StepResult, seq: int) -> bool:
    """Fold a ``JA_STEPS`` result in (usage, cost, model, duration); False if seen."""
    if seq <= view.last_step_seq:
        return False
    view.last_step_seq = seq
    fold_step_result(view, result)
    return True


def fold_step_result(view: SessionView, result: StepResult) -> None:
    """Fold a result in without the sequence check (the caller has made it)."""
    step = view.step(result.step_id)
    step.capability = step.capability or result.capability
    step.tool = step.tool or result.tool
    step.duration_s = (result.finished_at - result.started_at).total_seconds()
    step.deliveries = result.deliveries
    step.calls = len(result.calls)
    winner = next((c for c in reversed(result.calls) if c.outcome == "ok"), None)
    if winner is not None:
        step.model, step.provider = winner.model, winner.provider
    for call in result.calls:
        if call.usage is not None:
            step.input_tokens += call.usage.input_tokens
            step.output_tokens += call.usage.output_tokens
            step.cached_tokens += call.usage.cached_tokens
        if call.cost_usd is not None:
            step.cost_usd += call.cost_usd
    if not result.ok and result.error is not None and step.error is None:
        step.error = result.error.message
    if not view.tenant:
        view.tenant = result.tenant
