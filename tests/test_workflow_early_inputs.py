"""The pure core on inputs that arrive before the start: kept, applied, or answered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jetagent.contract import Status, WorkflowRequest
from jetagent.events import Cancelled, InputDeferred, InputRejected, Started, WorkflowEvent
from jetagent.models import ModelCatalog
from jetagent.orchestrator.timers import DEADLINE, INPUTS, timers_for
from jetagent.workflow import Begin, Cancel, DecideContext, Signal, Tick, WorkflowState, decide
from jetagent.workflow import fold as fold_events

CTX = DecideContext(models=ModelCatalog.load().models)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEEP = timedelta(seconds=60)


def _begin(at: datetime, deadline_s: float | None = None) -> Begin:
    request = WorkflowRequest(
        request_id="wf",
        tenant="t",
        instruction="What is 6 * 7?",
        capability_limits={"deadline_s": deadline_s},
    )
    return Begin(
        workflow_id="wf",
        tenant="t",
        request=request.model_dump(mode="json"),
        at=at,
        deadline_at=at + timedelta(seconds=deadline_s) if deadline_s else None,
    )


def _run(state: WorkflowState, *inputs: object) -> tuple[WorkflowState, list[WorkflowEvent]]:
    history: list[WorkflowEvent] = []
    for command in inputs:
        events = decide(state, command, CTX)  # type: ignore[arg-type]
        history.extend(events)
        state = fold_events(state, events)
    return state, history


def test_a_cancel_before_the_start_is_kept_then_ends_the_workflow_as_it_starts() -> None:
    cancel = Cancel(at=T0, reason="oops", by="ops", workflow_id="wf", expires_at=T0 + KEEP)
    state, events = _run(WorkflowState(), cancel)
    assert [type(e) for e in events] == [InputDeferred]
    assert state.status is Status.QUEUED
    assert timers_for(state) == {INPUTS: T0 + KEEP}
    state, events = _run(state, _begin(T0 + timedelta(seconds=1)))
    assert [type(e) for e in events] == [Started, Cancelled]
    assert isinstance(events[1], Cancelled)
    assert (events[1].reason, events[1].by) == ("oops", "ops")
    assert state.status is Status.CANCELLED
    assert timers_for(state) == {}


def test_a_start_interrupted_before_the_cancel_is_completed_by_the_redelivery() -> None:
    cancel = Cancel(at=T0, reason="oops", workflow_id="wf", expires_at=T0 + KEEP)
    state, _ = _run(WorkflowState(), cancel)
    begin = _begin(T0)
    started = decide(state, begin, CTX)[:1]  # only Started was written, then a crash
    state = fold_events(state, started)
    assert [type(e) for e in decide(state, begin, CTX)] == [Cancelled]


def test_a_signal_before_the_start_is_answered_when_it_starts() -> None:
    signal = Signal(
        name="approval",
        payload={"step_id": "1", "approved": True},
        at=T0,
        workflow_id="wf",
        expires_at=T0 + KEEP,
    )
    state, events = _run(WorkflowState(), signal)
    assert [type(e) for e in events] == [InputDeferred]
    state, events = _run(state, _begin(T0, deadline_s=30))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["Started", "InputRejected"]
    assert kinds[2] == "StepScheduled"
    rejected = events[1]
    assert isinstance(rejected, InputRejected)
    assert "arrived before the workflow started" in rejected.reasons[0]
    assert state.deferred == ()
    assert timers_for(state) == {DEADLINE: T0 + timedelta(seconds=30)}


def test_kept_inputs_of_a_workflow_that_never_starts_are_answered_after_the_last_expires() -> None:
    first = Cancel(at=T0, workflow_id="wf", expires_at=T0 + KEEP)
    later = Cancel(at=T0 + timedelta(seconds=10), workflow_id="wf", expires_at=T0 + 2 * KEEP)
    state, _ = _run(WorkflowState(), first, later)
    assert timers_for(state) == {INPUTS: T0 + 2 * KEEP}
    assert decide(state, Tick(at=T0 + KEEP), CTX) == []  # the later one is still kept
    events = decide(state, Tick(at=T0 + 2 * KEEP), CTX)
    assert [type(e) for e in events] == [InputRejected]
    assert isinstance(events[0], InputRejected)
    assert len(events[0].reasons) == 2
    assert all("did not start within" in r for r in events[0].reasons)
    state = fold_events(state, events)
    assert state.deferred == ()
    assert timers_for(state) == {}
    # A request after that starts the workflow normally.
    _, events = _run(state, _begin(T0 + 3 * KEEP))
    assert [type(e).__name__ for e in events][:2] == ["Started", "StepScheduled"]


def test_a_deadline_tick_ends_a_waiting_workflow_only_once_it_is_due() -> None:
    state, _ = _run(WorkflowState(), _begin(T0, deadline_s=2))
    assert decide(state, Tick(at=T0 + timedelta(seconds=1)), CTX) == []
    events = decide(state, Tick(at=T0 + timedelta(seconds=2)), CTX)
    assert [(type(e).__name__, getattr(e, "reason", "")) for e in events] == [
        ("Terminated", "deadline")
    ]


def test_nothing_is_kept_for_an_id_that_cannot_name_a_workflow() -> None:
    for bad in ("a.b", "x.>", "*", "", "é"):
        cancel = Cancel(at=T0, workflow_id=bad, expires_at=T0 + KEEP)
        assert decide(WorkflowState(), cancel, CTX) == []
