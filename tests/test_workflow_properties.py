"""Property tests of the pure core: any history replays to the same state and decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from capabilities.reasoning.offline import DeterministicPolicy
from capabilities.tools.builtin import calculator, memory_lookup, memory_store
from capabilities.tools.calculator import CalculatorError, evaluate
from jetagent.contract import Status, WorkflowRequest
from jetagent.events import (
    CallRecord,
    QuotaUse,
    StepError,
    StepResult,
    StepScheduled,
    WorkflowEvent,
    decode_event,
    encode,
)
from jetagent.llm import Message, ToolSpec, Usage
from jetagent.models import ModelCatalog
from jetagent.workflow import (
    Admit,
    Begin,
    Cancel,
    DecideContext,
    FoldResult,
    Hold,
    Input,
    RateLimited,
    Signal,
    Tick,
    ToolInfo,
    WorkflowState,
    decide,
    evolve,
    fold,
)

CATALOG = ModelCatalog.load()
TOOLS = {
    # The built-in tools as registered: the offline policy fills calls from their schemas.
    "calculator": ToolInfo(spec=calculator.registration().spec),
    "memory_lookup": ToolInfo(spec=memory_lookup.registration().spec),
    "memory_store": ToolInfo(spec=memory_store.registration().spec),
    "burn": ToolInfo(spec=ToolSpec(name="burn", description="tokens"), max_tokens=60),
    "dangerous": ToolInfo(spec=ToolSpec(name="dangerous", description="x"), requires_approval=True),
}
CTX = DecideContext(models=CATALOG.models, tools=TOOLS, max_step_attempts=2)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLANNER = DeterministicPolicy()

stage = st.one_of(
    st.builds(lambda a, b: f"what is {a} * {b}", st.integers(0, 99), st.integers(0, 99)),
    st.builds(lambda a: f"add {a} to the result", st.integers(0, 9)),
    st.just("remember my city is Oslo"),
    st.just("recall city"),
    st.builds(
        lambda n: f'call burn {{"tokens": {n}}} and call burn {{"tokens": {n}}}', st.integers(1, 60)
    ),
    st.just('call dangerous {"target": "x"}'),
    st.just('call nosuchtool {"a": 1}'),
    st.just("hello there"),
)


def _outcome(step: StepScheduled, draw: st.DrawFn, at: datetime) -> StepResult:
    """What a capability would answer: the offline policy for reasoning, tools computed."""
    calls: list[CallRecord] = []
    ok = draw(st.integers(0, 9)) > 0  # mostly successes, sometimes a failure
    output: dict[str, object] = {}
    if step.capability in ("reasoning", "summarize"):
        messages = [msgspec.convert(m, Message) for m in step.input["messages"]]
        tools = [msgspec.convert(t, ToolSpec) for t in step.input.get("tools", [])]
        completion = PLANNER.complete(
            "offline-planner", messages, tools=tools, max_tokens=step.input["max_tokens"]
        )
        cost = CATALOG.get("offline-planner").cost(completion.usage)
        calls.append(
            CallRecord(
                model="offline-planner",
                provider="offline",
                outcome="ok",
                usage=completion.usage,
                cost_usd=cost,
            )
        )
        output = {
            "text": completion.text,
            "tool_calls": [msgspec.to_builtins(c) for c in completion.tool_calls],
        }
    elif step.tool == "calculator":
        try:
            output = {"content": str(evaluate(step.input["arguments"]["expression"]))}
        except CalculatorError as exc:
            output = {"content": f"error: {exc}"}
    elif step.tool == "burn":
        used = min(int(step.input["arguments"]["tokens"]), 60)
        calls.append(
            CallRecord(model="m", provider="p", outcome="ok", usage=Usage(output_tokens=used))
        )
        output = {"content": str(used)}
    else:
        output = {"content": "done"}
    error = None
    if not ok:
        error = StepError(type="TransientError", message="boom", retryable=draw(st.booleans()))
    return StepResult(
        workflow_id=step.workflow_id,
        step_id=step.step_id,
        capability=step.capability,
        tool=step.tool,
        tenant=step.tenant,
        ok=ok,
        output=output if ok else {},
        error=error,
        calls=calls,
        started_at=at,
        finished_at=at,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_history_replays_to_the_same_state_and_decisions(data: st.DataObject) -> None:
    draw = data.draw
    instruction = " then ".join(draw(st.lists(stage, min_size=1, max_size=4)))
    request = WorkflowRequest(
        request_id="wf",
        tenant="t",
        instruction=instruction,
        capability_limits={
            "token_cap": draw(st.integers(300, 4000)),
            "max_iterations": draw(st.integers(1, 8)),
            "deadline_s": draw(st.none() | st.just(30.0)),
        },
        output={"summarize": draw(st.booleans())},
    )
    at = T0
    # Sometimes a cancel or a signal arrives before the start: kept, then applied.
    keep = T0 + timedelta(seconds=60)
    pre: list[Input] = []
    for kind in draw(st.lists(st.integers(0, 9), max_size=2)):
        if kind == 0:
            pre.append(Cancel(at=at, reason="early", workflow_id="wf", expires_at=keep))
        elif kind <= 3:
            payload = {"step_id": "1", "approved": True}
            pre.append(
                Signal(name="approval", payload=payload, at=at, workflow_id="wf", expires_at=keep)
            )
    # Sometimes the tenant's quota holds the request (then a freed slot admits it), and
    # sometimes its tokens per minute throttle a decision: what the orchestrator
    # measured, passed in as it would be.
    full = QuotaUse(quota="max_workflows", limit=1, in_use=1)
    hold = Hold(quota=full, position=1) if draw(st.integers(0, 3)) == 0 else None
    inputs: list[Input] = [
        *pre,
        Begin(
            workflow_id="wf",
            tenant="t",
            request=request.model_dump(mode="json"),
            at=at,
            deadline_at=at + timedelta(seconds=30)
            if request.capability_limits.deadline_s
            else None,
            hold=hold,
        ),
    ]
    rates: list[RateLimited | None] = [None] * len(inputs)
    spent = QuotaUse(quota="tokens_per_minute", limit=1000, in_use=1000)
    state = WorkflowState()
    history: list[WorkflowEvent] = []
    delivered: list[FoldResult] = []
    seq = 0
    for command in pre:
        for event in decide(state, command, CTX):
            state = evolve(state, event)
            history.append(event)
    for _ in range(60):
        command = inputs[-1]
        events = decide(state, command, CTX, rate=rates[-1])
        for event in events:
            state = evolve(state, event)
            history.append(event)
            # Budgets hold at every point: spent plus reserved within the cap.
            assert state.spent.tokens + state.reserved.tokens <= state.token_cap or (
                state.status.is_final
            )
        if state.status.is_final:
            # A final state absorbs everything: no input decides anything more.
            assert decide(state, Tick(at=at + timedelta(days=1)), CTX) == []
            break
        at += timedelta(seconds=draw(st.integers(0, 3)))
        open_steps = [
            e
            for e in history
            if isinstance(e, StepScheduled) and state.steps[e.step_id].status == "scheduled"
        ]
        choice = draw(st.integers(0, 99))
        rate = None
        if draw(st.integers(0, 9)) == 0:
            rate = RateLimited(quota=spent, needed=100, until=at + timedelta(seconds=2))
        rates.append(rate)
        if state.held is not None and choice > 10:
            inputs.append(Admit(at=at))  # a slot freed
        elif choice == 0:
            inputs.append(Cancel(at=at, reason="test"))
        elif choice <= 6 and delivered:
            inputs.append(draw(st.sampled_from(delivered)))  # a redelivery
        elif choice <= 12 or not open_steps:
            waiting = state.awaiting_approval
            if waiting:
                payload = {"step_id": waiting[0].step_id, "approved": draw(st.booleans())}
                inputs.append(Signal(name="approval", payload=payload, at=at))
            else:
                inputs.append(Tick(at=at))
        else:
            step = draw(st.sampled_from(open_steps))
            seq += 1
            fold_input = FoldResult(result=_outcome(step, draw, at), result_seq=seq, at=at)
            delivered.append(fold_input)
            inputs.append(fold_input)

    note(f"ended {state.status.value}")
    # 1. Folding the recorded history from nothing gives the same state.
    assert fold(WorkflowState(), history) == state
    # 2. Events survive their encoding (what the stream stores) unchanged.
    assert [decode_event(encode(e)) for e in history] == history
    # 3. Deciding the same inputs again gives the same events: decisions are pure.
    replayed: list[WorkflowEvent] = []
    again = WorkflowState()
    for command, limited in zip(inputs, rates, strict=True):
        for event in decide(again, command, CTX, rate=limited):
            again = evolve(again, event)
            replayed.append(event)
        if again.status.is_final:
            break
    assert replayed == history
    # 4. Every step ends at most once, and only after it was scheduled.
    ended = [e.step_id for e in history if type(e).__name__ in ("StepCompleted", "StepFailed")]
    assert len(ended) == len(set(ended))
    scheduled = {e.step_id for e in history if isinstance(e, StepScheduled)}
    assert set(ended) <= scheduled
    if state.status is Status.FINALIZED:
        assert state.spent.usd >= Decimal(0)
