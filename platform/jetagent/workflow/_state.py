"""Workflow state and ``evolve``: fold one event into the state. Pure: no I/O, clock, random.
(A little over 400 lines: the state's shape, then one fold case per event type, which share
the state's helpers; the decisions over it are ``_decide``, ``_react``, ``_plan``.)

The state is a frozen msgspec Struct (cheap to snapshot); ``evolve`` returns a new one.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec

from jetagent.contract import Status
from jetagent.events import (
    ApprovalRequested,
    ApprovalResolved,
    Cancelled,
    Finalized,
    Held,
    InputDeferred,
    InputRejected,
    RequestRejected,
    Spend,
    Started,
    StepCompleted,
    StepFailed,
    StepScheduled,
    Terminated,
    Throttled,
    WorkflowEvent,
)
from jetagent.llm import Message, ToolCall

__all__ = ["Phase", "StepView", "WorkflowState", "evolve", "fold"]

Phase = Literal["reasoning", "tools", "summarize", "final", "done"]
StepStatus = Literal["scheduled", "completed", "failed", "awaiting_approval", "denied"]
JSON_INSTRUCTION = "Answer with JSON only: one JSON value that satisfies this JSON Schema: "
REPAIR_INSTRUCTION = (
    "Your answer is not valid JSON for the requested schema. "
    "Reply with only the corrected JSON. Problems: "
)
COMPACTION_PREFIX = "Summary of the earlier conversation: "
REASONING = "reasoning"
TOOLS = "tools"
SUMMARIZE = "summarize"


class StepView(msgspec.Struct, frozen=True, kw_only=True):
    """One step as the workflow knows it."""

    step_id: str
    capability: str
    tool: str | None = None
    call: ToolCall | None = None
    status: StepStatus
    attempt: int = 1
    iteration: int = 0
    reservation: Spend = msgspec.field(default_factory=Spend)
    settlement: Spend | None = None
    error: str | None = None


class WorkflowState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything decisions need, derived from the workflow's events alone."""

    workflow_id: str = ""
    status: Status = Status.QUEUED
    tenant: str = ""
    session_id: str | None = None
    """The conversation the workflow belongs to: the request's ``session_context.session_id``,
    else the workflow itself (its id). Every tool step carries it, so a capability that keeps
    per-session data (memory) needs nothing but its step. None in a state saved before it
    existed (an older snapshot): its tool steps then go without it."""
    started_at: datetime | None = None
    deadline_at: datetime | None = None
    max_iterations: int = 0
    token_cap: int = 0
    cost_cap_usd: Decimal | None = None
    models: tuple[str, ...] = ()
    max_output_tokens: int = 0
    allowed_tools: tuple[str, ...] | None = None
    output_type: str = "text"
    json_schema: dict[str, Any] | None = None
    summarize: bool = False
    messages: tuple[Message, ...] = ()
    steps: dict[str, StepView] = msgspec.field(default_factory=dict)
    phase: Phase = "reasoning"
    pending_calls: tuple[ToolCall, ...] = ()
    """Tool calls of the last reasoning turn not yet scheduled (or approved to be)."""
    approved_calls: frozenset[str] = frozenset()
    retries: dict[str, int] = msgspec.field(default_factory=dict)
    """Next attempt number of a logical step (a call id, or ``reasoning``)."""
    iterations: int = 0
    repairs: int = 0
    spent: Spend = msgspec.field(default_factory=Spend)
    reserved: Spend = msgspec.field(default_factory=Spend)
    final_output: str | None = None
    last_text: str = ""
    summarized: bool = False
    compactions: int = 0
    failure: str | None = None
    invalid_output: str | None = None
    """Why the final answer does not satisfy the requested format (after its repair)."""
    """Why the workflow cannot go on (a step that failed for good)."""
    deferred: tuple[InputDeferred, ...] = ()
    """Cancels and signals that arrived before the start, not yet applied or answered."""
    held: Held | None = None
    """Why a request waits for a slot of its tenant's concurrency quota (None: it is not
    held). It still has the status ``queued``; ``Started`` ends the wait."""
    paused_until: datetime | None = None
    """No step is scheduled before this time: the tenant's tokens per minute were spent
    (``Throttled``)."""
    version: int = 0
    """How many events were folded."""

    @property
    def open_steps(self) -> list[StepView]:
        return [s for s in self.steps.values() if s.status == "scheduled"]

    @property
    def awaiting_approval(self) -> list[StepView]:
        return [s for s in self.steps.values() if s.status == "awaiting_approval"]

    def next_step_id(self) -> str:
        return str(len(self.steps) + 1)


_replace = msgspec.structs.replace


def _start(state: WorkflowState, event: Started) -> WorkflowState:
    request = event.request
    limits = request.get("capability_limits", {})
    prefs = request.get("model_preferences", {})
    output = request.get("output", {})
    context = request.get("session_context", {})
    messages: list[Message] = [
        Message(role=m["role"], content=m["content"]) for m in context.get("messages", [])
    ]
    facts = context.get("facts") or {}
    if facts:
        known = "\n".join(f"- {k}: {v}" for k, v in sorted(facts.items()))
        messages.insert(0, Message(role="system", content=f"Known facts:\n{known}"))
    if output.get("type") == "json":
        schema = json.dumps(output.get("json_schema") or {}, sort_keys=True)
        messages.append(Message(role="system", content=JSON_INSTRUCTION + schema))
    messages.append(Message(role="user", content=request["instruction"]))
    cost_cap = limits.get("cost_cap_usd")
    allowed = request.get("allowed_tools")
    session = context.get("session_id")
    return _replace(
        state,
        workflow_id=event.workflow_id,
        status=Status.PROCESSING,
        tenant=event.tenant,
        session_id=session if isinstance(session, str) and session else event.workflow_id,
        started_at=event.at,
        deadline_at=event.deadline_at,
        max_iterations=int(limits.get("max_iterations", 12)),
        token_cap=int(limits.get("token_cap", 16384)),
        cost_cap_usd=Decimal(str(cost_cap)) if cost_cap is not None else None,
        models=tuple(prefs.get("models", ())),
        max_output_tokens=int(prefs.get("max_output_tokens", 512)),
        allowed_tools=tuple(allowed) if allowed is not None else None,
        output_type=output.get("type", "text"),
        json_schema=output.get("json_schema"),
        summarize=bool(output.get("summarize", False)),
        messages=tuple(messages),
        phase="reasoning",
        held=None,
    )


def _scheduled(state: WorkflowState, event: StepScheduled) -> WorkflowState:
    call = None
    if event.capability != REASONING and "call_id" in event.input:
        call = ToolCall(
            id=event.input["call_id"], name=event.tool or "", arguments=event.input["arguments"]
        )
    view = StepView(
        step_id=event.step_id,
        capability=event.capability,
        tool=event.tool,
        call=call,
        status="scheduled",
        attempt=event.attempt,
        iteration=event.iteration,
        reservation=event.reservation,
    )
    steps = {**state.steps, event.step_id: view}
    pending = state.pending_calls
    if call is not None:
        pending = tuple(c for c in pending if c.id != call.id)
    return _replace(
        state,
        steps=steps,
        pending_calls=pending,
        reserved=state.reserved + event.reservation,
        iterations=state.iterations
        + (1 if event.capability == REASONING and event.attempt == 1 else 0),
    )


def _settle(state: WorkflowState, view: StepView, settlement: Spend) -> WorkflowState:
    return _replace(
        state,
        reserved=state.reserved - view.reservation,
        spent=state.spent + settlement,
    )


def _completed(state: WorkflowState, event: StepCompleted) -> WorkflowState:
    view = state.steps[event.step_id]
    state = _settle(state, view, event.settlement)
    steps = {
        **state.steps,
        event.step_id: _replace(view, status="completed", settlement=event.settlement),
    }
    state = _replace(state, steps=steps)
    output = event.output
    if event.capability == REASONING:
        text = str(output.get("text", ""))
        calls = tuple(msgspec.convert(c, ToolCall) for c in output.get("tool_calls", ()))
        rejected = output.get("rejected_calls", ())
        messages = [*state.messages, Message(role="assistant", content=text, tool_calls=calls)]
        for bad in rejected:
            # Calls the platform refused (unknown tool, not allowed): the model sees why.
            messages.append(
                Message(
                    role="tool",
                    tool_call_id=bad["call_id"],
                    name=bad["tool"],
                    content=f"error: {bad['error']}",
                )
            )
        valid = tuple(c for c in calls if c.id not in {b["call_id"] for b in rejected})
        phase: Phase
        final = None
        check = output.get("output_check")
        repairs, invalid = state.repairs, state.invalid_output
        if valid:
            phase = "tools"
        elif rejected:
            phase = "reasoning"
        elif check is not None and not check.get("valid", False):
            problems = "; ".join(check.get("errors", [])) or "not valid"
            if state.repairs < 1:
                # One repair attempt: the model sees what was wrong and answers again.
                messages.append(Message(role="user", content=REPAIR_INSTRUCTION + problems))
                phase, repairs = "reasoning", state.repairs + 1
            else:
                phase, invalid = "done", problems
        elif state.summarize and not state.summarized:
            phase = "summarize"
        else:
            phase, final = "final", text
        return _replace(
            state,
            repairs=repairs,
            invalid_output=invalid,
            retries={k: v for k, v in state.retries.items() if k != REASONING},
            messages=tuple(messages),
            pending_calls=valid,
            phase=phase,
            final_output=final,
            last_text=text or state.last_text,
        )
    if event.capability == SUMMARIZE and output.get("mode") == "compact":
        return _compacted(state, str(output.get("text", "")), int(output.get("covers", 0)))
    if event.capability == SUMMARIZE:
        summary = str(output.get("text", ""))
        return _replace(
            state, summarized=True, phase="final", final_output=summary, last_text=summary
        )
    # A tool step: its result becomes a tool message for the next reasoning turn.
    content = output.get("content")
    if content is None:
        content = msgspec.json.encode(output).decode()
    message = Message(
        role="tool",
        tool_call_id=view.call.id if view.call else event.step_id,
        name=event.tool,
        content=str(content),
    )
    state = _replace(state, messages=(*state.messages, message))
    return _maybe_next_turn(state)


def compactable(messages: tuple[Message, ...]) -> tuple[int, int]:
    """``(start, end)``: the older turns a compaction may summarise, between the
    instruction (kept) and the last turn (an assistant message and its tool results,
    kept whole so tool calls stay paired with their results)."""
    try:
        start = next(i for i, m in enumerate(messages) if m.role == "user") + 1
    except StopIteration:
        return 0, 0
    end = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=start)
    return start, max(end, start)


def _compacted(state: WorkflowState, summary: str, covers: int) -> WorkflowState:
    start, _ = compactable(state.messages)
    end = min(start + covers, len(state.messages))
    note = Message(role="system", content=f"{COMPACTION_PREFIX}{summary}")
    messages = (*state.messages[:start], note, *state.messages[end:])
    return _replace(state, messages=messages, phase="reasoning", compactions=state.compactions + 1)


def _maybe_next_turn(state: WorkflowState) -> WorkflowState:
    if state.phase == "tools" and not (
        state.pending_calls or state.open_steps or state.awaiting_approval
    ):
        return _replace(state, phase="reasoning")
    return state


def _failed(state: WorkflowState, event: StepFailed) -> WorkflowState:
    view = state.steps[event.step_id]
    state = _settle(state, view, event.settlement)
    steps = {
        **state.steps,
        event.step_id: _replace(
            view, status="failed", settlement=event.settlement, error=event.error
        ),
    }
    state = _replace(state, steps=steps)
    key = view.call.id if view.call else view.capability
    if event.retryable:
        retries = {**state.retries, key: view.attempt + 1}
        pending = state.pending_calls
        if view.call is not None:
            pending = (*pending, view.call)
        return _replace(state, retries=retries, pending_calls=pending)
    return _replace(state, failure=f"{view.capability} step {view.step_id} failed: {event.error}")


def _approval_requested(state: WorkflowState, event: ApprovalRequested) -> WorkflowState:
    call = ToolCall(id=event.call_id, name=event.tool, arguments=event.arguments)
    view = StepView(
        step_id=event.step_id,
        capability=TOOLS,
        tool=event.tool,
        call=call,
        status="awaiting_approval",
        iteration=state.iterations,
    )
    return _replace(
        state,
        steps={**state.steps, event.step_id: view},
        pending_calls=tuple(c for c in state.pending_calls if c.id != call.id),
        status=Status.WAITING_APPROVAL,
    )


def _approval_resolved(state: WorkflowState, event: ApprovalResolved) -> WorkflowState:
    view = state.steps[event.step_id]
    status = Status.PROCESSING
    if event.approved and view.call is not None:
        steps = {**state.steps, event.step_id: _replace(view, status="completed")}
        state = _replace(
            state,
            steps=steps,
            pending_calls=(*state.pending_calls, view.call),
            approved_calls=state.approved_calls | {view.call.id},
        )
    else:
        denial = f"error: the call was denied by {event.by or 'a reviewer'}"
        if event.comment:
            denial += f": {event.comment}"
        message = Message(
            role="tool",
            tool_call_id=view.call.id if view.call else event.step_id,
            name=view.tool,
            content=denial,
        )
        steps = {**state.steps, event.step_id: _replace(view, status="denied")}
        state = _replace(state, steps=steps, messages=(*state.messages, message))
    if state.awaiting_approval:
        status = Status.WAITING_APPROVAL
    return _maybe_next_turn(_replace(state, status=status))


def evolve(state: WorkflowState, event: WorkflowEvent) -> WorkflowState:
    """The state after ``event``."""
    state = _evolve(state, event)
    return _replace(state, version=state.version + 1)


def _evolve(state: WorkflowState, event: WorkflowEvent) -> WorkflowState:
    match event:
        case Started():
            return _start(state, event)
        case StepScheduled():
            return _scheduled(state, event)
        case StepCompleted():
            return _completed(state, event)
        case StepFailed():
            return _failed(state, event)
        case ApprovalRequested():
            return _approval_requested(state, event)
        case ApprovalResolved():
            return _approval_resolved(state, event)
        case Finalized():
            return _replace(state, status=Status.FINALIZED, phase="done", final_output=event.output)
        case Terminated():
            return _replace(state, status=Status.TERMINATED, phase="done", held=None)
        case Cancelled():
            return _replace(state, status=Status.CANCELLED, phase="done", held=None)
        case RequestRejected():
            return _replace(
                state, workflow_id=event.workflow_id, status=Status.REJECTED, phase="done"
            )
        case InputDeferred():
            return _replace(state, workflow_id=event.workflow_id, deferred=(*state.deferred, event))
        case InputRejected():
            return _replace(state, deferred=())
        case Held():
            return _replace(
                state,
                workflow_id=event.workflow_id,
                tenant=event.tenant,
                deadline_at=event.deadline_at,
                held=event,
            )
        case Throttled():
            return _replace(state, paused_until=event.until)
    raise TypeError(f"not a workflow event: {event!r}")  # pragma: no cover


def fold(state: WorkflowState, events: list[WorkflowEvent]) -> WorkflowState:
    for event in events:
        state = evolve(state, event)
    return state
