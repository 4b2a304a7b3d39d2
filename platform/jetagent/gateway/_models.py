"""What the HTTP API accepts and answers (its OpenAPI document is generated from these)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from jetagent.contract import ID_PATTERN, Status, WorkflowRequest
from jetagent.sessions import SessionView

__all__ = [
    "Accepted",
    "HttpWorkflowRequest",
    "Usage",
    "WorkflowPage",
    "WorkflowSummary",
    "WorkflowView",
    "view_of",
]


class HttpWorkflowRequest(WorkflowRequest):
    """The request contract; ``tenant`` is the bearer token's, and may be left out."""

    tenant: str | None = Field(  # type: ignore[assignment]
        None, pattern=ID_PATTERN, description="Omitted: the bearer token's tenant."
    )


class Accepted(BaseModel):
    """A request accepted for processing (``202``): follow it at ``links``."""

    workflow_id: str
    status: Status = Status.QUEUED
    duplicate: bool = Field(False, description="The same request was accepted before.")
    links: dict[str, str]


class Usage(BaseModel):
    """Tokens spent, from the providers' own usage reports."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0


class WorkflowSummary(BaseModel):
    """One workflow in a list."""

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    tenant: str
    state: Status = Field(description="queued, processing, finalized, terminated, ...")
    created_at: datetime | None = None
    updated_at: datetime | None = None
    cost_usd: str = Field("0", description="Decimal USD, as a string (no float rounding).")


class StepSummary(BaseModel):
    step_id: str
    capability: str
    tool: str | None = None
    status: str
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: str = "0"
    error: str | None = None


class WorkflowView(WorkflowSummary):
    """The session view: state, answer, usage, cost, every step."""

    instruction: str = ""
    output: str = ""
    reason: str = ""
    detail: str = ""
    ended_at: datetime | None = None
    iterations: int = 0
    usage: Usage = Field(default_factory=Usage)
    steps: list[StepSummary] = Field(default_factory=list)


class WorkflowPage(BaseModel):
    """A page of workflows; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[WorkflowSummary]
    next_cursor: str | None = None


def view_of(view: SessionView) -> WorkflowView:
    usage = Usage(
        input_tokens=sum(s.input_tokens for s in view.steps),
        output_tokens=sum(s.output_tokens for s in view.steps),
        cached_tokens=sum(s.cached_tokens for s in view.steps),
    )
    usage.total_tokens = usage.input_tokens + usage.output_tokens
    steps = [
        StepSummary(
            step_id=s.step_id,
            capability=s.capability,
            tool=s.tool,
            status=s.status,
            model=s.model,
            input_tokens=s.input_tokens,
            output_tokens=s.output_tokens,
            cost_usd=str(s.cost_usd),
            error=s.error,
        )
        for s in view.steps
    ]
    return WorkflowView(
        **dict(summary_of(view)),
        instruction=view.instruction,
        output=view.output,
        reason=view.reason,
        detail=view.detail,
        ended_at=view.ended_at,
        iterations=view.iterations,
        usage=usage,
        steps=steps,
    )


def summary_of(view: SessionView) -> WorkflowSummary:
    return WorkflowSummary(
        workflow_id=view.workflow_id,
        tenant=view.tenant,
        state=view.status,
        created_at=view.created_at,
        updated_at=view.updated_at,
        cost_usd=str(view.cost_usd),
    )
