"""Planning the next step: its input, its attempt, and the budget it reserves. Pure.

A step reserves the most it can spend when it is scheduled, and only a step whose
reservation fits under every cap (with what is spent and reserved) is scheduled; one that
does not fit waits for steps in flight to settle, or ends the workflow if none are. An LLM
step's reservation is its input tokens (counted exactly where the route's tokenizer is
known, else estimated with a safety factor) plus its output tokens, fitted to what is
left; a conversation nearing its context window is first compacted by a summarisation
step over its older turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from jetagent.events import ApprovalRequested, RoutingDecision, Spend, StepScheduled, WorkflowEvent
from jetagent.llm import Message, ToolCall
from jetagent.models import ModelConfig
from jetagent.tokens import Tokenizer, count_message_tokens, count_tokens

from ._ends import terminate
from ._inputs import DecideContext
from ._state import REASONING, SUMMARIZE, WorkflowState, compactable

__all__ = ["COMPACT_AT", "MIN_OUTPUT_TOKENS", "next_reasoning", "next_summary", "next_tool"]

MIN_OUTPUT_TOKENS = 16
"""A reasoning call is not worth making with fewer output tokens than this."""
COMPACT_AT = Decimal("0.75")
"""Summarise older turns when a call would fill this share of the context window."""


def _plain(value: Any) -> Any:
    """``value`` exactly as it reads back from the event's JSON (lists, not tuples)."""
    return msgspec.json.decode(msgspec.json.encode(value))


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
        return terminate(state, at, "token_cap", detail)
    detail = (
        f"the next step may cost ${reservation.usd}; "
        f"${state.spent.usd} of ${state.cost_cap_usd} spent"
    )
    return terminate(state, at, "cost_cap", detail)


def _attempt(state: WorkflowState, key: str, ctx: DecideContext) -> int:
    return state.retries.get(key, 1)


def _gave_up(
    state: WorkflowState, at: datetime, attempt: int, ctx: DecideContext, what: str
) -> WorkflowEvent | None:
    """The end of the workflow when ``what`` has failed every attempt it may make."""
    if attempt > ctx.max_step_attempts:
        return terminate(state, at, "step_failed", f"{what} failed {attempt - 1} times")
    return None


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


def next_reasoning(state: WorkflowState, at: datetime, ctx: DecideContext) -> WorkflowEvent | None:
    """The next reasoning turn (or the compaction that must come first, or the end), once
    no step is in flight."""
    attempt = _attempt(state, REASONING, ctx)
    if (ended := _gave_up(state, at, attempt, ctx, "reasoning")) is not None:
        return ended
    if attempt == 1 and state.iterations >= state.max_iterations:
        return terminate(state, at, "max_iterations", f"{state.iterations} reasoning turns used")
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
    attempt = _attempt(state, SUMMARIZE, ctx)
    return _summarise(state, at, ctx, attempt, state.messages[start:end], compact=True)


def next_tool(state: WorkflowState, at: datetime, ctx: DecideContext) -> WorkflowEvent | None:
    """The next pending tool call's step (or its approval request, or the end)."""
    for call in state.pending_calls:
        info = ctx.tools[call.name]
        attempt = _attempt(state, call.id, ctx)
        if (ended := _gave_up(state, at, attempt, ctx, f"tool {call.name}")) is not None:
            return ended
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


def next_summary(state: WorkflowState, at: datetime, ctx: DecideContext) -> WorkflowEvent | None:
    """The final summary's step (or the end), once no step is in flight."""
    attempt = _attempt(state, SUMMARIZE, ctx)
    if (ended := _gave_up(state, at, attempt, ctx, "summarisation")) is not None:
        return ended
    return _summarise(state, at, ctx, attempt, state.messages, compact=False)


def _summarise(
    state: WorkflowState,
    at: datetime,
    ctx: DecideContext,
    attempt: int,
    messages: Sequence[Message],
    *,
    compact: bool,
) -> WorkflowEvent | None:
    """A summarisation step over ``messages``: the final summary, or (``compact``) one
    that stands for the older turns of a conversation nearing its window."""
    max_tokens, reservation = _llm_reservation(state, count_message_tokens(messages), ctx)
    if not _fits(state, reservation):
        return _out_of_budget(state, at, reservation)
    # The keys in the order they were always written (a claim check is of these bytes).
    data: dict[str, Any] = {"mode": "compact"} if compact else {}
    data["messages"] = _plain(messages)
    if compact:
        data["covers"] = len(messages)
    data |= {"models": list(state.models), "max_tokens": max_tokens}
    return _schedule(
        state,
        at,
        capability=SUMMARIZE,
        attempt=attempt,
        iteration=state.iterations,
        input=data,
        reservation=reservation,
    )
