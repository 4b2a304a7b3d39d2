"""``decide``: the events an input calls for, given the state. Pure: no I/O, clock, random.

``decide(state, input, ctx)`` first reacts to the input (a duplicate input reacts with
nothing), then advances the state machine as far as the state allows: schedule the
reasoning turn, the tool calls it asked for, the summary, or end the workflow. Because
the advance depends on the state alone, a decision interrupted after writing some of its
events is completed by deciding again on the same input.

Budgets are race-free: a step reserves the most it can spend when it is scheduled, and
only steps whose reservation fits under every cap (with what is spent and reserved) are
scheduled. Parallel steps therefore can never overshoot a cap together.

Tenant quotas are the orchestrator's to measure (they span workflows and replicas); what it
measured arrives in the input, and the decision records it (docs/ARCHITECTURE.md §9): a
``Begin`` with ``hold`` records ``Held`` instead of ``Started``; ``Admit`` starts a held
workflow; ``decide(..., rate=...)`` records ``Throttled`` instead of the steps it would
schedule.

Here: ``decide`` and the advance of the state machine (ends, held workflows, inputs kept
from before the start). The inputs are in ``_inputs``, the reactions to them in
``_react``, the planning of the next step and its budget in ``_plan``.
"""

from __future__ import annotations

from datetime import datetime

from jetagent.contract import Status
from jetagent.events import (
    Finalized,
    InputDeferred,
    InputRejected,
    StepScheduled,
    Throttled,
    WorkflowEvent,
)

from ._ends import cancelled, terminate
from ._inputs import DecideContext, Input, RateLimited
from ._plan import next_reasoning, next_summary, next_tool
from ._react import react
from ._state import WorkflowState, evolve

__all__ = ["decide"]


def decide(
    state: WorkflowState,
    command: Input,
    ctx: DecideContext,
    *,
    rate: RateLimited | None = None,
) -> list[WorkflowEvent]:
    """The events ``command`` calls for, in order.

    ``rate``: the tenant's tokens per minute are spent; a step this decision would
    schedule is recorded as ``Throttled`` instead (and no step is scheduled before
    ``rate.until``)."""
    events = react(state, command, ctx)
    for event in events:
        state = evolve(state, event)
    at = command.at
    for _ in range(1000):
        step = _next(state, at, ctx)
        if step is None:
            return events
        if isinstance(step, StepScheduled):
            if state.paused_until is not None and at < state.paused_until:
                return events  # throttled: the rate timer decides again at paused_until
            if rate is not None:
                events.append(_throttled(state, step, at, rate))
                return events
        events.append(step)
        state = evolve(state, step)
    raise RuntimeError("decide did not settle")  # pragma: no cover - a bug guard


def _throttled(
    state: WorkflowState, step: StepScheduled, at: datetime, rate: RateLimited
) -> Throttled:
    return Throttled(
        workflow_id=state.workflow_id,
        at=at,
        quota=rate.quota,
        needed=max(rate.needed, step.reservation.tokens),
        until=rate.until,
    )


# ------------------------------------------------------------------ advancing


def _next(state: WorkflowState, at: datetime, ctx: DecideContext) -> WorkflowEvent | None:
    if state.status.is_final:
        return None
    if state.status is Status.QUEUED:
        return _held(state, at) if state.held is not None else _expire_deferred(state, at)
    if state.deferred:
        return _apply_deferred(state, at)
    wid = state.workflow_id
    if state.deadline_at is not None and at >= state.deadline_at:
        return terminate(state, at, "deadline", f"the deadline {state.deadline_at} passed")
    if state.spent.tokens > state.token_cap:
        return terminate(state, at, "token_cap", f"{state.spent.tokens} tokens spent")
    if state.cost_cap_usd is not None and state.spent.usd > state.cost_cap_usd:
        return terminate(state, at, "cost_cap", f"${state.spent.usd} spent")
    if state.failure is not None:
        return terminate(state, at, "step_failed", state.failure)
    if state.invalid_output is not None:
        return terminate(state, at, "invalid_output", state.invalid_output)
    if state.phase == "final" and not state.open_steps:
        return Finalized(
            workflow_id=wid,
            at=at,
            output=state.final_output or "",
            spent=state.spent,
            iterations=state.iterations,
        )
    if state.phase in ("reasoning", "summarize") and state.open_steps:
        return None  # a turn over the whole conversation waits for every step in flight
    if state.phase == "reasoning":
        return next_reasoning(state, at, ctx)
    if state.phase == "tools":
        return next_tool(state, at, ctx)
    if state.phase == "summarize":
        return next_summary(state, at, ctx)
    return None


def _held(state: WorkflowState, at: datetime) -> WorkflowEvent | None:
    """A held workflow ends at its deadline, or on a cancel kept from before its hold;
    signals kept for it wait for its start (or expire)."""
    if state.deadline_at is not None and at >= state.deadline_at:
        detail = f"the deadline {state.deadline_at} passed while held by a tenant quota"
        return terminate(state, at, "deadline", detail)
    kept = _kept_cancel(state, at)
    return kept if kept is not None else _expire_deferred(state, at)


def _kept_cancel(state: WorkflowState, at: datetime) -> WorkflowEvent | None:
    """The workflow cancelled by a cancel kept from before it started (None: none kept)."""
    cancel = next((d for d in state.deferred if d.kind == "cancel"), None)
    if cancel is None:
        return None
    return cancelled(state, at, reason=cancel.reason, by=cancel.by)


def _what(deferred: InputDeferred) -> str:
    what = "cancel" if deferred.kind == "cancel" else f"signal {deferred.name!r}"
    return what + (f" by {deferred.by}" if deferred.by else "")


def _expire_deferred(state: WorkflowState, at: datetime) -> WorkflowEvent | None:
    """Answer the kept inputs of a workflow that did not start once the last one expired."""
    if not state.deferred or at < max(d.expires_at for d in state.deferred):
        return None
    reasons = [
        f"{_what(d)}: workflow {state.workflow_id!r} did not start within "
        f"{(d.expires_at - d.at).total_seconds():g} s"
        for d in state.deferred
    ]
    return InputRejected(workflow_id=state.workflow_id, at=at, reasons=reasons)


def _apply_deferred(state: WorkflowState, at: datetime) -> WorkflowEvent:
    """Inputs kept from before the start, applied now that it has started: a cancel ends
    the workflow; a signal cannot apply yet (an approval names a step, and no step can
    have been waiting for it), so it is answered with the reason."""
    kept = _kept_cancel(state, at)
    if kept is not None:
        return kept
    reasons = [
        f"{_what(d)}: it arrived before the workflow started, so no step was waiting for it"
        for d in state.deferred
    ]
    return InputRejected(workflow_id=state.workflow_id, at=at, reasons=reasons)
