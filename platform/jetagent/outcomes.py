"""How a workflow ended, as a client answers it: a :class:`WorkflowResult`, read off the
workflow's final event (``Finalized``, ``Terminated``, ``Cancelled``, ``RequestRejected``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from jetagent.contract import Status
from jetagent.events import Cancelled, Finalized, RequestRejected, Terminated, WorkflowEvent

__all__ = ["WorkflowResult", "result_of"]


class WorkflowResult(msgspec.Struct, frozen=True, kw_only=True):
    """How a workflow ended."""

    workflow_id: str
    status: Status
    output: str = ""
    reason: str = ""
    """Why it ended without a final answer (token_cap, deadline, cancelled, ...)."""
    detail: str = ""
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    @property
    def ok(self) -> bool:
        """Whether it ended with its final answer."""
        return self.status is Status.FINALIZED


def result_of(event: WorkflowEvent) -> WorkflowResult | None:
    """The result a final event stands for (None for other events)."""
    if isinstance(event, RequestRejected):
        detail = "; ".join(event.reasons)
        return WorkflowResult(
            workflow_id=event.workflow_id, status=Status.REJECTED, reason="rejected", detail=detail
        )
    how: dict[str, Any]
    if isinstance(event, Finalized):
        how = {"status": Status.FINALIZED, "output": event.output}
    elif isinstance(event, Terminated):
        how = {
            "status": Status.TERMINATED,
            "output": event.partial_output,
            "reason": event.reason,
            "detail": event.detail,
        }
    elif isinstance(event, Cancelled):
        how = {"status": Status.CANCELLED, "reason": "cancelled", "detail": event.reason}
    else:
        return None
    spent = event.spent
    return WorkflowResult(
        workflow_id=event.workflow_id, tokens=spent.tokens, cost_usd=spent.usd, **how
    )
