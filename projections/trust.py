"""Which step results the projections count: the orchestrator's trust rule, as far as a
session view can check it.

A ``StepResult`` is folded into views and cost metrics only when its subject names the
capability, workflow and step of its body (``jetagent.result_check.subject_problem``;
NATS permissions confine each capability's worker user to its own subjects) and the view
shows that step scheduled for that capability and tool, at that attempt or a later one
(a late answer of an earlier attempt was really run and billed). The projections read
``JA_WORKFLOWS`` and ``JA_STEPS`` in any interleaving, so a result whose step is not yet
seen scheduled *waits* in the view; it is judged when the schedule arrives, and is
untrusted if the workflow ends first. The verdict is therefore the same live and in a
rebuild. An untrusted result is skipped, counted with the poison messages and
dead-lettered once as ``untrusted`` (README, "Session views, metrics, dashboards, traces").
"""

from __future__ import annotations

from enum import Enum

from jetagent.decoding import shown
from jetagent.events import StepResult
from jetagent.result_check import subject_problem
from jetagent.sessions import SessionView, StepView

__all__ = ["Verdict", "judge", "judge_scheduled"]


class Verdict(Enum):
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    WAIT = "wait"
    """The step is not seen scheduled yet; judge again when it is."""


def _scheduled_step(view: SessionView, step_id: str) -> StepView | None:
    for step in view.steps:
        # An approval alone does not schedule a step (its StepScheduled follows).
        if (
            step.step_id == step_id
            and step.capability
            and step.status
            not in (
                "awaiting_approval",
                "denied",
            )
        ):
            return step
    return None


def judge_scheduled(view: SessionView, result: StepResult) -> tuple[Verdict, str]:
    """Whether ``result`` answers a step ``view`` shows scheduled (and why not)."""
    step = _scheduled_step(view, result.step_id)
    if step is None or result.attempt > step.attempt:
        if not view.status.is_final:
            return Verdict.WAIT, ""
        if step is None:
            return Verdict.UNTRUSTED, (
                f"workflow {result.workflow_id!r} ended without scheduling step "
                f"{shown(result.step_id)}"
            )
        return Verdict.UNTRUSTED, (
            f"step {step.step_id} was scheduled up to attempt {step.attempt}; "
            f"the result is for attempt {result.attempt}"
        )
    if step.capability != result.capability:
        return Verdict.UNTRUSTED, (
            f"step {step.step_id} was scheduled for capability {step.capability!r}; "
            f"the result is from {result.capability!r}"
        )
    if step.tool != result.tool:
        return Verdict.UNTRUSTED, (
            f"step {step.step_id} was scheduled for tool {step.tool!r}; "
            f"the result is for {result.tool!r}"
        )
    if result.attempt < 1:
        return Verdict.UNTRUSTED, f"attempt {result.attempt} was never scheduled"
    return Verdict.TRUSTED, ""


def judge(
    view: SessionView, subject: str, result: StepResult, *, prefix: str
) -> tuple[Verdict, str]:
    """The verdict on ``result``, written on ``subject``, for the workflow of ``view``."""
    problem = subject_problem(subject, result, prefix=prefix)
    if problem is not None:
        return Verdict.UNTRUSTED, problem
    return judge_scheduled(view, result)
