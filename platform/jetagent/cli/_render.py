"""Live, readable output of a workflow's events for the CLI and the demo."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.text import Text

from jetagent.cli._layout import (
    Column,
    console_width,
    facts,
    fold,
    grid_lines,
    hang,
    stamp,
    usd,
)
from jetagent.client import Client
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
from jetagent.outcomes import result_of
from jetagent.sessions import SessionView

__all__ = ["describe", "follow", "show_session"]


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


def show_session(view: SessionView, console: Console) -> None:
    """Print a session view in the console's width: the workflow, then one line per step
    with its output or error folded under it (``jetagent inspect``)."""
    width = console_width(console)
    head = Text.assemble(("workflow ", "dim"), (view.workflow_id, "bold"))
    for line in fold(head, width):
        console.print(line)
    parts = [f"tenant {view.tenant or '-'}", f"status [bold]{view.status.value}[/]"]
    if view.reason:
        parts.append(f"{view.reason}: {view.detail}" if view.detail else view.reason)
    parts.append(f"created {stamp(view.created_at, millis=True)}")
    if view.ended_at is not None and view.created_at is not None:
        took = (view.ended_at - view.created_at).total_seconds()
        parts.append(f"ended after {took:.3f} s")
    parts.append(f"as of event #{view.last_workflow_seq}")  # its stream sequence
    for line in facts([Text.from_markup(p) for p in parts], width):
        console.print(line)
    if view.instruction:
        for line in hang(Text("instruction: ", "dim"), Text(view.instruction), width, max_lines=4):
            console.print(line)
    if view.steps:
        _steps(view, console, width)
    total = f"total: {view.tokens} tokens, {usd(view.cost_usd)} in {len(view.steps)} step(s)"
    console.print(total, highlight=False)
    if view.output:
        for line in hang(Text("output: ", "dim"), Text(view.output), width, max_lines=6):
            console.print(line)


_STEP_COLUMNS = (
    Column("step", priority=100),
    Column("capability", priority=100, max_width=32),
    Column("model", priority=30, max_width=28),
    Column("status", priority=100),
    Column("scheduled", priority=35),
    Column("latency", priority=40, justify="right"),
    Column("tokens", priority=50, justify="right"),
    Column("cost", priority=60, justify="right", max_width=12),
)


def _steps(view: SessionView, console: Console, width: int) -> None:
    rows: list[list[Text | str]] = []
    for step in view.steps:
        latency = f"{step.turnaround_s * 1000:.1f} ms" if step.turnaround_s is not None else "-"
        status = Text(step.status, _STATUS_STYLES.get(step.status, ""))
        rows.append(
            [
                step.step_id + (f" #{step.attempt}" if step.attempt > 1 else ""),
                step.capability + (f" → {step.tool}" if step.tool else ""),
                step.model or "-",
                status,
                stamp(step.scheduled_at, date=False, millis=True),
                latency,
                str(step.input_tokens + step.output_tokens),
                usd(step.cost_usd),
            ]
        )
    shown, lines = grid_lines(_STEP_COLUMNS, rows, width)
    console.print()
    console.print(lines[0])
    for step, line in zip(view.steps, lines[1:], strict=True):
        console.print(line)
        # What did not fit as a column, and the step's output or error, under its row.
        notes = []
        if "model" not in shown and step.model:
            notes.append(f"model {step.model}")
        if "tokens" not in shown:
            notes.append(f"{step.input_tokens + step.output_tokens} tokens")
        if "cost" not in shown:
            notes.append(usd(step.cost_usd))
        below = Text(" · ".join(notes) + (": " if notes else ""), "dim")
        if step.error:
            below.append(step.error, "red")
        else:
            below.append(step.output or "")
        if below.plain.strip(" :"):
            for folded in fold(below, width - 4, max_lines=3):
                console.print(Text("    ") + folded)
    console.print()


_STATUS_STYLES = {"completed": "green", "failed": "red", "awaiting_approval": "yellow"}
