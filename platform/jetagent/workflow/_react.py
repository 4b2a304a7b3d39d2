"""Reacting to an input: the events the input itself calls for. Pure: no I/O, clock, random.

A request starts the workflow (or is held by its tenant's quota); a step's result is
checked against the scheduled step and folded as completed or failed; a cancel ends it; a
signal resolves an approval. A cancel or signal for a workflow that has not started yet is
kept (``InputDeferred``) until it starts. A duplicate input reacts with nothing.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import msgspec

from jetagent.contract import ID_PATTERN, Status
from jetagent.events import (
    ApprovalResolved,
    Held,
    InputDeferred,
    Started,
    StepCompleted,
    StepError,
    StepFailed,
    WorkflowEvent,
)
from jetagent.llm import ToolCall
from jetagent.output_schema import InvalidOutputSchema, compile_output_schema

from ._ends import cancelled
from ._inputs import Admit, Begin, Cancel, DecideContext, FoldResult, Input, Signal, Tick
from ._state import REASONING, WorkflowState

__all__ = ["react"]


def react(state: WorkflowState, command: Input, ctx: DecideContext) -> list[WorkflowEvent]:
    """The events ``command`` itself calls for (none for a duplicate)."""
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
            return [_started(command, command.at)]
        case FoldResult():
            return _fold_result(state, command, ctx)
        case Admit():
            held = state.held
            if state.status is not Status.QUEUED or held is None:
                return []  # not held: started already, ended, or never requested
            return [_started(held, command.at, held_since=held.at)]
        case Cancel():
            if state.status.is_final:
                return []
            if state.status is Status.QUEUED and state.held is None:
                return _defer(state, command)
            return [cancelled(state, command.at, reason=command.reason, by=command.by)]
        case Signal():
            return _signal(state, command)
        case Tick():
            return []


def _started(request: Begin | Held, at: datetime, *, held_since: datetime | None = None) -> Started:
    """The workflow of ``request`` (a new one, or one held until now) starting ``at``."""
    return Started(
        workflow_id=request.workflow_id,
        at=at,
        tenant=request.tenant,
        request=request.request,
        deadline_at=request.deadline_at,
        held_since=held_since,
    )


def _fold_result(
    state: WorkflowState, command: FoldResult, ctx: DecideContext
) -> list[WorkflowEvent]:
    result = command.result
    view = state.steps.get(result.step_id)
    if state.status.is_final or view is None or view.status != "scheduled":
        return []  # a duplicate delivery, or a late result of an ended workflow
    # What either outcome records of the result.
    of_result: dict[str, Any] = {
        "workflow_id": state.workflow_id,
        "at": command.at,
        "step_id": result.step_id,
        "capability": view.capability,
        "tool": view.tool,
        "settlement": result.spend(),
        "result_seq": command.result_seq,
    }
    error = result.error if not result.ok else _malformed(view.capability, result.output)
    if not result.ok or error is not None:
        return [
            StepFailed(
                error=error.message if error else "the step failed",
                error_type=error.type if error else "unknown",
                retryable=bool(error and error.retryable),
                **of_result,
            )
        ]
    output = dict(result.output)
    if view.capability == REASONING:
        output["rejected_calls"] = _rejected_calls(state, output.get("tool_calls", ()), ctx)
        if state.output_type == "json" and not output.get("tool_calls"):
            output["output_check"] = _check_json(str(output.get("text", "")), state.json_schema)
    return [StepCompleted(output=output, **of_result)]


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
    what: dict[str, Any]
    if isinstance(command, Signal):
        what = {"kind": "signal", "name": command.name, "payload": command.payload}
    else:
        what = {"kind": "cancel", "reason": command.reason}
    kept = InputDeferred(
        workflow_id=workflow_id, at=command.at, by=command.by, expires_at=command.expires_at, **what
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
