"""Live, readable output of a workflow's events for the CLI and the demo."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.table import Table

from jetagent.client import Client, result_of
from jetagent.events import (
    ApprovalRequested,
    ApprovalResolved,
    Cancelled,
    Finalized,
    Held,
    InputDeferred,
    InputRejected,
    RequestRejected,
    Started,
    StepCompleted,
    StepFailed,
    StepScheduled,
    Terminated,
    Throttled,
    WorkflowEvent,
)
from jetagent.sessions import SessionView

__all__ = ["describe", "follow", "session_table"]


def describe(event: WorkflowEvent) -> str:
    """One line saying what an event means."""
    match event:
        case Started():
            return (
                f"[bold]started[/] for tenant {event.tenant}: "
                f"{str(event.request.get('instruction', ''))[:80]!r}"
            )
        case StepScheduled():
            what = event.capability + (f" → {event.tool}" if event.tool else "")
            route = f" via {event.route.model}" if event.route else ""
            args = f" {event.input.get('arguments')}" if event.tool else ""
            return (
                f"step {event.step_id} scheduled: [cyan]{what}[/]{route}{args} "
                f"(reserves {event.reservation.tokens} tokens)"
            )
        case StepCompleted():
            if event.tool:
                detail = str(event.output.get("result", event.output.get("error", "")))[:80]
            else:
                calls = event.output.get("tool_calls") or []
                detail = (
                    f"asks for {len(calls)} tool call(s)"
                    if calls
                    else repr(str(event.output.get("text", ""))[:80])
                )
            return (
                f"step {event.step_id} [green]done[/]: {detail} "
                f"({event.settlement.tokens} tokens, ${event.settlement.usd})"
            )
        case StepFailed():
            return f"step {event.step_id} [red]failed[/]: {event.error}"
        case ApprovalRequested():
            return (
                f"[yellow]waiting for approval[/] of {event.tool} {event.arguments} "
                f"(step {event.step_id})"
            )
        case ApprovalResolved():
            return f"approval of step {event.step_id}: {'granted' if event.approved else 'denied'}"
        case Finalized():
            return f"[bold green]finalized[/] after {event.iterations} reasoning turn(s)"
        case Terminated():
            return f"[bold red]terminated[/] ({event.reason}): {event.detail}"
        case Cancelled():
            return f"[bold yellow]cancelled[/] {event.reason}"
        case RequestRejected():
            return "[bold red]rejected[/]: " + "; ".join(event.reasons)
        case InputDeferred():
            what = "cancel" if event.kind == "cancel" else f"signal {event.name!r}"
            return f"{what} kept until the workflow starts (until {event.expires_at:%H:%M:%S})"
        case InputRejected():
            return "[yellow]inputs answered[/]: " + "; ".join(event.reasons)
        case Held():
            return (
                f"[yellow]held[/]: {event.quota.describe(event.tenant)}; "
                f"position {event.position}, starts when a slot frees"
            )
        case Throttled():
            return (
                f"[yellow]throttled[/]: the next steps reserve {event.needed} tokens; "
                f"{event.quota.in_use} of {event.quota.limit} tokens per minute in use, "
                f"so they wait until {event.until:%H:%M:%S}"
            )
    return type(event).__name__  # pragma: no cover


async def follow(client: Client, workflow_id: str, console: Console, *, prefix: str = "") -> bool:
    """Print a workflow's events as they happen; return True if it finalized."""
    start: datetime | None = None
    async for event in client.watch(workflow_id):
        start = start or event.at
        offset = (event.at - start).total_seconds() * 1000
        console.print(f"{prefix}[dim]{offset:7.1f} ms[/] {describe(event)}", highlight=False)
        result = result_of(event)
        if result is not None:
            if result.output:
                console.print(f"{prefix}[bold]answer:[/] {result.output}", highlight=False)
            console.print(
                f"{prefix}[bold]usage:[/] {result.tokens} tokens, ${result.cost_usd} "
                f"([dim]status {result.status.value}[/])",
                highlight=False,
            )
            return result.ok
    return False


def session_table(view: SessionView, console: Console) -> None:
    """Print a session view: the workflow, then one row per step."""
    console.print(
        f"[bold]{view.workflow_id}[/]  tenant {view.tenant}  status [bold]{view.status.value}[/]"
        + (f" ({view.reason}: {view.detail})" if view.reason else "")
    )
    console.print(f"instruction: {view.instruction}", highlight=False)
    table = Table()
    for column in (
        "step",
        "capability",
        "model",
        "attempt",
        "status",
        "latency",
        "tokens",
        "cost",
        "output / error",
    ):
        table.add_column(column)
    for step in view.steps:
        latency = f"{step.turnaround_s * 1000:.1f} ms" if step.turnaround_s is not None else "-"
        table.add_row(
            step.step_id,
            step.capability + (f" → {step.tool}" if step.tool else ""),
            step.model or "-",
            str(step.attempt),
            step.status,
            latency,
            str(step.input_tokens + step.output_tokens),
            f"${step.cost_usd}",
            (step.error or step.output)[:80],
        )
    console.print(table)
    console.print(
        f"total: {view.tokens} tokens, ${view.cost_usd}; output: {view.output}", highlight=False
    )
