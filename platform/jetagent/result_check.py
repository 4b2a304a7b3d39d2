"""Whether a step result may be trusted: does it answer a step that was scheduled?

A ``StepResult`` counts only when it matches a step of its workflow exactly as the
step was scheduled: the same step id, the same capability (in the body *and* in the
subject ``<prefix>.step.<capability>.<workflow_id>.<step_id>``, which NATS permissions
confine to that capability's worker user: ``nats/accounts.conf``), the same tool and
the same attempt. Anything else is set aside with the reason (a dead letter) and the
workflow goes on waiting for the real answer; ``jetagent replay --verify`` applies the
same check to the history. Pure: no I/O, so the orchestrator and replay agree.
"""

from __future__ import annotations

from jetagent.contract import Status
from jetagent.decoding import shown
from jetagent.events import StepResult
from jetagent.subjects import Names, StepResultSubject, parse
from jetagent.workflow import WorkflowState

__all__ = ["result_problem", "step_problem", "subject_problem"]


def subject_problem(
    subject: str, result: StepResult, *, prefix: str, legacy: bool = False
) -> str | None:
    """Why the result's subject does not name the step its body answers (None: it does).

    ``legacy``: also accept the layout before capability subjects
    (``<prefix>.step.<workflow_id>.<step_id>``), which only old histories hold: replay
    reads those; a live result on it is refused (any worker could write it).
    """
    where = parse(subject, prefix=prefix)
    if isinstance(where, StepResultSubject):
        names_step = (where.workflow_id, where.step_id) == (result.workflow_id, result.step_id)
        if where.capability is None and legacy and names_step:
            return None
        if where.capability is not None:
            if where.capability != result.capability:
                return (
                    f"the result says capability {result.capability!r} but was written on the "
                    f"subject of capability {where.capability!r}"
                )
            if names_step:
                return None
            return f"the subject {shown(subject)} names another step than the result's body"
    want = Names(prefix).step_result(result.capability, result.workflow_id, result.step_id)
    return (
        f"a step result must be on {want} "
        f"(<prefix>.step.<capability>.<workflow_id>.<step_id>), not {shown(subject)}"
    )


def step_problem(state: WorkflowState, result: StepResult) -> str | None:
    """Why ``result`` matches no step of the workflow as scheduled (None: it matches).

    A matching result for a step that already ended is no problem here: it is a
    redelivery, and deciding on it does nothing.
    """
    if state.status is Status.QUEUED or state.workflow_id != result.workflow_id:
        return f"there is no workflow {result.workflow_id!r}"
    view = state.steps.get(result.step_id)
    if view is None:
        return f"workflow {result.workflow_id!r} has no step {shown(result.step_id)}"
    if view.capability != result.capability:
        return (
            f"step {view.step_id} was scheduled for capability {view.capability!r}; "
            f"the result is from {result.capability!r}"
        )
    if view.tool != result.tool:
        return (
            f"step {view.step_id} was scheduled for tool {view.tool!r}; "
            f"the result is for {result.tool!r}"
        )
    if view.attempt != result.attempt:
        return (
            f"step {view.step_id} was scheduled as attempt {view.attempt}; "
            f"the result is for attempt {result.attempt}"
        )
    return None


def result_problem(
    subject: str, result: StepResult, state: WorkflowState, *, prefix: str, legacy: bool = False
) -> str | None:
    """The first reason not to trust ``result`` (written on ``subject``), or None.

    The orchestrator checks every result with it before folding, replay every result
    that was folded, and the session projection (``projections.trust``) its subject part.
    """
    return subject_problem(subject, result, prefix=prefix, legacy=legacy) or step_problem(
        state, result
    )
