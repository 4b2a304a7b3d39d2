"""The events that end a workflow before its final answer: terminated, or cancelled. Pure.

Both carry what the workflow spent; a termination also carries its last text (a partial
answer is better than none).
"""

from __future__ import annotations

from datetime import datetime

from jetagent.events import Cancelled, Terminated

from ._state import WorkflowState

__all__ = ["cancelled", "terminate"]


def terminate(state: WorkflowState, at: datetime, reason: str, detail: str) -> Terminated:
    """End the workflow for ``reason`` (a cap, its deadline, a failed step, …)."""
    return Terminated(
        workflow_id=state.workflow_id,
        at=at,
        reason=reason,
        detail=detail,
        partial_output=state.last_text,
        spent=state.spent,
    )


def cancelled(state: WorkflowState, at: datetime, *, reason: str, by: str) -> Cancelled:
    """The workflow cancelled (by ``by``, for ``reason``)."""
    return Cancelled(workflow_id=state.workflow_id, at=at, reason=reason, by=by, spent=state.spent)
