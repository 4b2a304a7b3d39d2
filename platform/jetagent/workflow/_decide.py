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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from jetagent.contract import ID_PATTERN, Status
from jetagent.events import (
    ApprovalRequested,
    ApprovalResolved,
    Cancelled,
    Finalized,
    Held,
    InputDeferred,
    InputRejected,
    QuotaUse,
    RoutingDecision,
    Spend,
    Started,
    StepCompleted,
    StepError,
    StepFailed,
    StepResult,
    StepScheduled,
    Terminated,
    Throttled,
    WorkflowEvent,
)
from jetagent.llm import ToolCall
from jetagent.models import ModelConfig
from jetagent.output_schema import InvalidOutputSchema, compile_output_schema
from jetagent.tokens import Tokenizer, count_message_tokens, count_tokens
from jetagent.tool_info import ToolInfo

from ._state import REASONING, SUMMARIZE, WorkflowState, compactable, evolve

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
    "decide",
]

MIN_OUTPUT_TOKENS = 16
"""A reasoning call is not worth making with fewer output tokens than this."""


def _plain(value: Any) -> Any:
    """``value`` exactly as it reads back from the event's JSON (lists, not tuples)."""
    return msgspec.json.decode(msgspec.json.encode(value))


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
    result: StepResult
    result_seq: int
    at: datetime


@dataclass(frozen=True, kw_only=True)
class Cancel:
    at: datetime
    reason: str = ""
    by: str = ""
    workflow_id: str = ""
    expires_at: datetime | None = None
    """Until when a cancel for a workflow not started yet is kept (None: not kept)."""


@dataclass(frozen=True, kw_only=True)
class Signal:
    name: str
    payload: dict[str, Any]
    at: datetime
    by: str = ""
    workflow_id: str = ""
    expires_at: datetime | None = None
    """Until when a signal for a workflow not started yet is kept (None: not kept)."""


@dataclass(frozen=True, kw_only=True)
class Tick:
    """Time passed: lets deadlines end idle workflows."""

    at: datetime


Input = Begin | FoldResult | Cancel | Signal | Tick | Admit


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
    events = _react(state, command, ctx)
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


def _react(state: WorkflowState, command: Input, ctx: DecideContext) -> list[WorkflowEvent]:
    wid = state.workflow_id
    match command:
        case Begin():
            if state.status is not Status.QUEUED or state.held is not None:
                return []  # the request was already accepted (or is held already)
            if command.hold is not None:
                return [
                    Held(
                        workflow_id=command.workflow_id,
                        at=command.at,
                        tenant=command.tenant,
                        request=command.request,
                        deadline_at=command.deadline_at,
                        quota=command.hold.quota,
                        position=command.hold.position,
                    )
                ]
            return [
                Started(
                    workflow_id=command.workflow_id,
                    at=command.at,
                    tenant=command.tenant,
                    request=command.request,
                    deadline_at=command.deadline_at,
                )
            ]
        case FoldResult():
            return _fold_result(state, command, ctx)
        case Admit():
            held = state.held
            if state.status is not Status.QUEUED or held is None:
                return []  # not held: started already, ended, or never requested
            return [
                Started(
                    workflow_id=held.workflow_id,
                    at=command.at,
                    tenant=held.tenant,
                    request=held.request,
                    deadline_at=held.deadline_at,
                    held_since=held.at,
                )
            ]
        case Cancel():
            if state.status.is_final:
                return []
            if state.status is Status.QUEUED and state.held is None:
                return _defer(state, command)
            return [
                Cancelled(
                    workflow_id=wid,
                    at=command.at,
                    reason=command.reason,
                    by=command.by,
                    spent=state.spent,
                )
            ]
        case Signal():
            return _signal(state, command)
        case Tick():
            return []


def _fold_result(
    state: WorkflowState, command: FoldResult, ctx: DecideContext
) -> list[WorkflowEvent]:
    result = command.result
    view = state.steps.get(result.step_id)
    if state.status.is_final or view is None or view.status != "scheduled":
        return []  # a duplicate delivery, or a late result of an ended workflow
    settlement = result.spend()
    error = result.error if not result.ok else _malformed(view.capability, result.output)
    if not result.ok or error is not None:
        return [
            StepFailed(
                workflow_id=state.workflow_id,
                at=command.at,
                step_id=result.step_id,
                capability=view.capability,
                tool=view.tool,
                error=error.message if error else "the step failed",
                error_type=error.type if error else "unknown",
                retryable=bool(error and error.retryable),
                settlement=settlement,
                result_seq=command.result_seq,
            )
        ]
    output = dict(result.output)
    if view.capability == REASONING:
        output["rejected_calls"] = _rejected_calls(state, output.get("tool_calls", ()), ctx)
        if state.output_type == "json" and not output.get("tool_calls"):
            output["output_check"] = _check_json(str(output.get("text", "")), state.json_schema)
    return [
        StepCompleted(
            workflow_id=state.workflow_id,
            at=command.at,
            step_id=result.step_id,
            capability=view.capability,
            tool=view.tool,
            output=output,
            settlement=settlement,
            result_seq=command.result_seq,
        )
    ]


def _malformed(capability: str, output: dict[str, Any]) -> StepError | None:
    """A reasoning output whose tool calls cannot be read fails the step (it is retried),
    rather than stopping every decision on it."""
    if capability != REASONING:
        return None
    calls = output.get("tool_calls", ())
    try:
        if not isinstance(calls, list | tuple):
            raise msgspec.ValidationError(f"tool_calls is {type(calls).__name__}, not a list")
        for call in calls:
            msgspec.convert(call, ToolCall)
    except msgspec.ValidationError as exc:
        return StepError(
            type="MalformedOutput", message=f"unreadable tool calls: {exc}", retryable=True
        )
    return None


def _check_json(text: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    """Whether a final answer is one JSON value satisfying ``schema`` (and why not)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"valid": False, "errors": [f"not JSON: {exc.msg} at position {exc.pos}"]}
    try:
        # Compiled once per schema; checked at ingress, so this refuses only schemas
        # accepted before that check existed.
        validator = compile_output_schema(schema or {})
    except InvalidOutputSchema as exc:
        return {"valid": False, "errors": exc.problems[:10]}
    errors = [
        f"{'/'.join(str(p) for p in e.path) or 'answer'}: {e.message}"
        for e in validator.iter_errors(value)
    ]
    return {"valid": not errors, "errors": errors[:10]}


def _rejected_calls(state: WorkflowState, calls: Any, ctx: DecideContext) -> list[dict[str, str]]:
    rejected = []
    for raw in calls:
        call = msgspec.convert(raw, ToolCall)
        if call.name not in ctx.tools:
            error = f"unknown tool {call.name!r}; available: {', '.join(sorted(ctx.tools))}"
        elif state.allowed_tools is not None and call.name not in state.allowed_tools:
            error = f"tool {call.name!r} is not allowed for this request"
        else:
            continue
        rejected.append({"call_id": call.id, "tool": call.name, "error": error})
    return rejected


def _defer(state: WorkflowState, command: Cancel | Signal) -> list[WorkflowEvent]:
    """Keep a cancel or signal that arrived before its workflow's start (another replica
    may be starting it right now): it applies when the workflow starts."""
    workflow_id = command.workflow_id or state.workflow_id
    if command.expires_at is None or not re.fullmatch(ID_PATTERN, workflow_id):
        return []  # not kept: nothing is recorded under an id that cannot be a workflow's
    at, by, expires_at = command.at, command.by, command.expires_at
    if isinstance(command, Signal):
        kept = InputDeferred(
            workflow_id=workflow_id,
            at=at,
            kind="signal",
            name=command.name,
            payload=command.payload,
            by=by,
            expires_at=expires_at,
        )
    else:
        kept = InputDeferred(
            workflow_id=workflow_id,
            at=at,
            kind="cancel",
            reason=command.reason,
            by=by,
            expires_at=expires_at,
        )
    return [kept]


def _signal(state: WorkflowState, command: Signal) -> list[WorkflowEvent]:
    if state.status is Status.QUEUED:
        return _defer(state, command)
    if command.name != "approval" or state.status.is_final:
        return []
    step_id = str(command.payload.get("step_id", ""))
    view = state.steps.get(step_id)
    if view is None or view.status != "awaiting_approval":
        return []
    return [
        ApprovalResolved(
            workflow_id=state.workflow_id,
            at=command.at,
            step_id=step_id,
            approved=bool(command.payload.get("approved", False)),
            by=command.by,
            comment=str(command.payload.get("comment", "")),
        )
    ]


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
        return _terminate(state, at, "deadline", f"the deadline {state.deadline_at} passed")
    if state.spent.tokens > state.token_cap:
        return _terminate(state, at, "token_cap", f"{state.spent.tokens} tokens spent")
    if state.cost_cap_usd is not None and state.spent.usd > state.cost_cap_usd:
        return _terminate(state, at, "cost_cap", f"${state.spent.usd} spent")
    if state.failure is not None:
        return _terminate(state, at, "step_failed", state.failure)
    if state.invalid_output is not None:
        return _terminate(state, at, "invalid_output", state.invalid_output)
    if state.phase == "final" and not state.open_steps:
        return Finalized(
            workflow_id=wid,
            at=at,
            output=state.final_output or "",
            spent=state.spent,
            iterations=state.iterations,
        )
    if state.phase == "reasoning":
        return _next_reasoning(state, at, ctx)
    if state.phase == "tools":
        return _next_tool(state, at, ctx)
    if state.phase == "summarize":
        return _next_summary(state, at, ctx)
    return None


def _held(state: WorkflowState, at: datetime) -> WorkflowEvent | None:
    """A held workflow ends at its deadline, or on a cancel kept from before its hold;
    signals kept for it wait for its start (or expire)."""
    if state.deadline_at is not None and at >= state.deadline_at:
        detail = f"the deadline {state.deadline_at} passed while held by a tenant quota"
        return _terminate(state, at, "deadline", detail)
    cancel = next((d for d in state.deferred if d.kind == "cancel"), None)
    if cancel is not None:
        return Cancelled(
            workflow_id=state.workflow_id,
            at=at,
            reason=cancel.reason,
            by=cancel.by,
            spent=state.spent,
        )
    return _expire_deferred(state, at)


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
    cancel = next((d for d in state.deferred if d.kind == "cancel"), None)
    if cancel is not None:
        return Cancelled(
            workflow_id=state.workflow_id,
            at=at,
            reason=cancel.reason,
            by=cancel.by,
            spent=state.spent,
        )
    reasons = [
        f"{_what(d)}: it arrived before the workflow started, so no step was waiting for it"
        for d in state.deferred
    ]
    return InputRejected(workflow_id=state.workflow_id, at=at, reasons=reasons)


def _terminate(state: WorkflowState, at: datetime, reason: str, detail: str) -> Terminated:
    return Terminated(
        workflow_id=state.workflow_id,
        at=at,
        reason=reason,
        detail=detail,
        partial_output=state.last_text,
        spent=state.spent,
    )


def _fits(state: WorkflowState, reservation: Spend) -> bool:
    held = state.spent + state.reserved + reservation
    if held.tokens > state.token_cap:
        return False
    return state.cost_cap_usd is None or held.usd <= state.cost_cap_usd


def _out_of_budget(state: WorkflowState, at: datetime, reservation: Spend) -> WorkflowEvent | None:
    """Wait if steps in flight may free budget; otherwise end the workflow."""
    if state.open_steps:
        return None
    held = state.spent + reservation
    if held.tokens > state.token_cap:
        detail = (
            f"the next step needs up to {reservation.tokens} tokens; "
            f"{state.token_cap - state.spent.tokens} of {state.token_cap} are left"
        )
        return _terminate(state, at, "token_cap", detail)
    detail = (
        f"the next step may cost ${reservation.usd}; "
        f"${state.spent.usd} of ${state.cost_cap_usd} spent"
    )
    return _terminate(state, at, "cost_cap", detail)


def _attempt(state: WorkflowState, key: str, ctx: DecideContext) -> int:
    return state.retries.get(key, 1)


def _route_models(state: WorkflowState, ctx: DecideContext) -> list[ModelConfig]:
    names: list[str] = []
    for name in state.models:
        model = ctx.models.get(name)
        if model is None:
            continue
        for candidate in (name, *model.fallbacks, *([model.cheaper] if model.cheaper else [])):
            if candidate not in names and candidate in ctx.models:
                names.append(candidate)
    return [ctx.models[n] for n in names]


def _llm_reservation(
    state: WorkflowState, input_tokens: int, ctx: DecideContext
) -> tuple[int, Spend]:
    """(max_tokens, reservation) for an LLM call over this conversation, fitted to budget."""
    models = _route_models(state, ctx)
    exact = all(m.provider == "offline" for m in models) or (
        ctx.openai_tokenizer is not None and all(m.provider == "openai" for m in models)
    )
    estimate = input_tokens if exact else int(Decimal(input_tokens) * ctx.estimate_factor) + 1
    left = state.token_cap - state.spent.tokens - state.reserved.tokens - estimate
    max_tokens = max(min(state.max_output_tokens, left), MIN_OUTPUT_TOKENS)
    usd = max((m.max_cost(estimate, max_tokens) for m in models), default=Decimal(0))
    return max_tokens, Spend(tokens=estimate + max_tokens, usd=usd)


def _tokenizer(state: WorkflowState, ctx: DecideContext) -> Tokenizer | None:
    models = _route_models(state, ctx)
    if ctx.openai_tokenizer is not None and models and all(m.provider == "openai" for m in models):
        return ctx.openai_tokenizer
    return None


def _tool_specs(state: WorkflowState, ctx: DecideContext) -> list[dict[str, Any]]:
    names = sorted(ctx.tools) if state.allowed_tools is None else list(state.allowed_tools)
    specs: list[dict[str, Any]] = _plain([ctx.tools[n].spec for n in names if n in ctx.tools])
    return specs


def _next_reasoning(state: WorkflowState, at: datetime, ctx: DecideContext) -> WorkflowEvent | None:
    if state.open_steps:
        return None
    attempt = _attempt(state, REASONING, ctx)
    if attempt > ctx.max_step_attempts:
        return _terminate(state, at, "step_failed", f"reasoning failed {attempt - 1} times")
    if attempt == 1 and state.iterations >= state.max_iterations:
        return _terminate(state, at, "max_iterations", f"{state.iterations} reasoning turns used")
    tools = _tool_specs(state, ctx)
    tokenizer = _tokenizer(state, ctx)
    count = tokenizer or count_tokens
    input_tokens = count_message_tokens(state.messages, tokenizer) + sum(
        count(str(t)) for t in tools
    )
    compaction = _compaction(state, at, input_tokens, ctx)
    if compaction is not None:
        return compaction
    max_tokens, reservation = _llm_reservation(state, input_tokens, ctx)
    if not _fits(state, reservation):
        return _out_of_budget(state, at, reservation)
    left = state.token_cap - state.spent.tokens - state.reserved.tokens
    usd_left = None if state.cost_cap_usd is None else state.cost_cap_usd - state.spent.usd
    iteration = state.iterations + (1 if attempt == 1 else 0)
    return _schedule(
        state,
        at,
        capability=REASONING,
        attempt=attempt,
        iteration=iteration,
        input={
            "messages": _plain(state.messages),
            "tools": tools,
            "models": list(state.models),
            "max_tokens": max_tokens,
            "remaining_tokens": left,
            "remaining_usd": None if usd_left is None else str(usd_left),
            "output_type": state.output_type,
            "json_schema": state.json_schema,
        },
        route=RoutingDecision(model=state.models[0], reason="preferred") if state.models else None,
        reservation=reservation,
    )


COMPACT_AT = Decimal("0.75")
"""Summarise older turns when a call would fill this share of the context window."""


def _compaction(
    state: WorkflowState, at: datetime, input_tokens: int, ctx: DecideContext
) -> WorkflowEvent | None:
    """A summarisation step over older turns when the conversation nears the window."""
    models = _route_models(state, ctx)
    if not models:
        return None
    window = min(m.context_window for m in models)
    needed = input_tokens + min(state.max_output_tokens, window // 4)
    start, end = compactable(state.messages)
    if needed <= window * COMPACT_AT or end - start < 2:
        return None
    older = state.messages[start:end]
    max_tokens, reservation = _llm_reservation(state, count_message_tokens(older), ctx)
    if not _fits(state, reservation):
        return _out_of_budget(state, at, reservation)
    return _schedule(
        state,
        at,
        capability=SUMMARIZE,
        attempt=_attempt(state, SUMMARIZE, ctx),
        iteration=state.iterations,
        input={
            "mode": "compact",
            "messages": _plain(older),
            "covers": len(older),
            "models": list(state.models),
            "max_tokens": max_tokens,
        },
        reservation=reservation,
    )


def _schedule(state: WorkflowState, at: datetime, **step: Any) -> StepScheduled:
    """A step of this workflow, numbered next, for its tenant, under its deadline."""
    return StepScheduled(
        workflow_id=state.workflow_id,
        at=at,
        step_id=state.next_step_id(),
        tenant=state.tenant,
        deadline_at=state.deadline_at,
        **step,
    )


def _next_tool(state: WorkflowState, at: datetime, ctx: DecideContext) -> WorkflowEvent | None:
    for call in state.pending_calls:
        info = ctx.tools[call.name]
        attempt = _attempt(state, call.id, ctx)
        if attempt > ctx.max_step_attempts:
            return _terminate(
                state, at, "step_failed", f"tool {call.name} failed {attempt - 1} times"
            )
        if info.requires_approval and call.id not in state.approved_calls:
            return ApprovalRequested(
                workflow_id=state.workflow_id,
                at=at,
                step_id=state.next_step_id(),
                tool=call.name,
                arguments=call.arguments,
                call_id=call.id,
            )
        reservation = Spend(tokens=info.max_tokens)
        if not _fits(state, reservation):
            return _out_of_budget(state, at, reservation)
        return _schedule(
            state,
            at,
            capability=info.capability,
            tool=call.name,
            attempt=attempt,
            iteration=state.iterations,
            input=_tool_input(state, call),
            reservation=reservation,
        )
    return None


def _tool_input(state: WorkflowState, call: ToolCall) -> dict[str, Any]:
    """A tool step's input: the call, and what its capability may need of the workflow
    (its session; the tenant is a field of the step), so that it reads nothing else."""
    data: dict[str, Any] = {"call_id": call.id, "tool": call.name, "arguments": call.arguments}
    if state.session_id is not None:
        data["session_id"] = state.session_id
    return data


def _next_summary(state: WorkflowState, at: datetime, ctx: DecideContext) -> WorkflowEvent | None:
    if state.open_steps:
        return None
    attempt = _attempt(state, SUMMARIZE, ctx)
    if attempt > ctx.max_step_attempts:
        return _terminate(state, at, "step_failed", f"summarisation failed {attempt - 1} times")
    input_tokens = count_message_tokens(state.messages)
    max_tokens, reservation = _llm_reservation(state, input_tokens, ctx)
    if not _fits(state, reservation):
        return _out_of_budget(state, at, reservation)
    return _schedule(
        state,
        at,
        capability=SUMMARIZE,
        attempt=attempt,
        iteration=state.iterations,
        input={
            "messages": _plain(state.messages),
            "models": list(state.models),
            "max_tokens": max_tokens,
        },
        reservation=reservation,
    )
