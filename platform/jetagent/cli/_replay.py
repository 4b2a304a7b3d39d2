"""``jetagent replay``: a workflow's history from the log — as a timeline with stream
sequences and dates, as JSON (``--json``), re-decided (``--verify``), or folded up to a
point (``--at SEQ``: the pure ``evolve`` fold of the events stored up to that sequence).
No model or tool is called again: their answers are in the log.

``--json`` prints one document (README "Command line")::

    {"workflow_id": …, "verified": true | false | null, "decisions": N,
     "mismatches": [{"cause", "recorded", "decided", "detail"}], "untrusted": […],
     "skipped": […],
     "events": [{"seq", "subject", "at", "type", "decision", "cause", "verification",
                 "detail", "summary", "event"}]}

and with ``--at``: ``{"workflow_id", "at_seq", "events_folded", "last_event",
"last_seq", "state"}`` where ``state`` is the folded ``WorkflowState`` as JSON.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from jetagent.cli._base import connect, console, fail, load_settings, resolve_id, run

if TYPE_CHECKING:
    from jetagent.orchestrator.replay import ReplayReport
    from jetagent.workflow import WorkflowState

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
def replay(
    workflow_id: Annotated[str, typer.Argument(help="A workflow id, or a unique prefix of one.")],
    verify: Annotated[
        bool, typer.Option("--verify", help="Re-decide every input and compare.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (README, Command line).")
    ] = False,
    at: Annotated[
        int | None,
        typer.Option(
            "--at",
            metavar="SEQ",
            help="Show the workflow's state folded from its events up to this stream sequence.",
        ),
    ] = None,
) -> None:
    """Replay a workflow's history (from the log: no model or tool is called again).

    Every event is shown with its JA_WORKFLOWS stream sequence and its time (UTC).
    """
    from jetagent.client import Client
    from jetagent.models import ModelCatalog
    from jetagent.orchestrator.replay import replay_workflow
    from jetagent.worker.registry import ToolRegistry
    from jetagent.workflow import DecideContext

    if at is not None and at < 0:
        raise fail(f"--at {at}: a stream sequence is 0 or more")
    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        nc = await connect(settings, "jetagent.replay")
        try:
            client = Client(nc, settings)
            wid = await resolve_id(client, workflow_id)
            registry = ToolRegistry(nc.jetstream(), settings.names)
            await registry.start()
            await registry.stop()
            ctx = DecideContext(
                models=ModelCatalog.load(settings.models).models,
                tools=registry.tools,
                max_step_attempts=settings.max_step_attempts,
            )
            report = await replay_workflow(nc, settings.names, wid, ctx, verify=verify)
        finally:
            await nc.close()
        if not report.events:
            invalid = f" ({len(report.skipped)} messages there are not valid events)"
            raise fail(f"no workflow {wid}" + (invalid if report.skipped else ""), 1)
        if at is not None:
            _state_at(report, at, as_json=as_json)
            return 0
        if as_json:
            _timeline_json(report, verified=verify)
        else:
            _timeline(report, verify=verify)
        return 0 if report.ok else 1

    run(main)


def _timeline_json(report: ReplayReport, *, verified: bool) -> None:
    import msgspec
    from rich.text import Text

    from jetagent.cli._layout import utc
    from jetagent.cli._render import describe

    events = []
    for entry in report.entries:
        decision = report.decisions[entry.decision]
        moment = utc(entry.event.at)
        events.append(
            {
                "seq": entry.seq,
                "subject": entry.subject,
                "at": moment.isoformat() if moment else None,
                "type": type(entry.event).__name__,
                "decision": entry.decision,
                "cause": entry.cause,
                "verification": decision.verdict,
                "detail": decision.detail,
                "summary": Text.from_markup(describe(entry.event)).plain,
                "event": msgspec.to_builtins(entry.event),
            }
        )
    document = {
        "workflow_id": report.workflow_id,
        "verified": report.ok if verified else None,
        "decisions": len(report.decisions),
        "mismatches": [
            {"cause": m.cause, "recorded": m.recorded, "decided": m.decided, "detail": m.detail}
            for m in report.mismatches
        ],
        "untrusted": report.untrusted,
        "skipped": report.skipped,
        "events": events,
    }
    print(msgspec.json.encode(document).decode())


def _timeline(report: ReplayReport, *, verify: bool) -> None:
    from rich.text import Text

    from jetagent.cli._layout import console_width, fold, hang, stamp, utc
    from jetagent.cli._render import describe

    width = console_width(console)
    wide = width >= 100  # room for the date on every line
    for line in fold(Text.assemble(("workflow ", "dim"), (report.workflow_id, "bold")), width):
        console.print(line)
    day = None
    seq_width = len(str(max(e.seq for e in report.entries)))
    for entry in report.entries:
        moment = utc(entry.event.at)
        if not wide and moment is not None and moment.date() != day:
            day = moment.date()
            console.print(f"[bold]{day:%Y-%m-%d}[/] (UTC)")
        when = stamp(moment, date=wide, millis=True)
        head = Text.assemble((f"#{entry.seq:<{seq_width}} ", "cyan"), (f"{when} ", "dim"))
        for line in hang(head, Text.from_markup(describe(entry.event)), width, max_lines=4):
            console.print(line)
    if verify and report.ok:
        console.print(
            f"[green]verified:[/] {report.groups} decisions replay to the recorded events"
        )
    for mismatch in report.mismatches:
        console.print(
            f"[red]mismatch[/] after {mismatch.cause}: recorded {mismatch.recorded}, "
            f"decided {mismatch.decided} ({mismatch.detail})"
        )
    # Set aside, never folded: shown so that a forgery attempt is seen.
    for untrusted in report.untrusted:
        console.print(f"[yellow]untrusted step result (not folded)[/] {untrusted}", highlight=False)
    for skipped in report.skipped:
        console.print(f"[yellow]skipped (not an event)[/] {skipped}", highlight=False)


def _state_at(report: ReplayReport, seq: int, *, as_json: bool) -> None:
    import msgspec

    from jetagent.workflow import WorkflowState, evolve

    folded = [entry for entry in report.entries if entry.seq <= seq]
    if not folded:
        first = report.entries[0].seq
        raise fail(
            f"workflow {report.workflow_id} has no event at or before #{seq} "
            f"(its first is #{first})",
            1,
        )
    state = WorkflowState()
    for entry in folded:
        state = evolve(state, entry.event)
    last = folded[-1]
    if as_json:
        from jetagent.cli._layout import utc

        moment = utc(last.event.at)
        document = {
            "workflow_id": report.workflow_id,
            "at_seq": seq,
            "events_folded": len(folded),
            "last_event": {
                "seq": last.seq,
                "at": moment.isoformat() if moment else None,
                "type": type(last.event).__name__,
            },
            "last_seq": report.entries[-1].seq,
            "state": msgspec.json.decode(msgspec.json.encode(state)),
        }
        print(msgspec.json.encode(document).decode())
        return
    _show_state(report, state, seq, len(folded))


def _show_state(report: ReplayReport, state: WorkflowState, seq: int, folded: int) -> None:
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

    width = console_width(console)
    last = next(e for e in reversed(report.entries) if e.seq <= seq)

    def say(markup: str) -> None:
        for line in fold(Text.from_markup(markup), width):
            console.print(line)

    def show(*parts: str) -> None:
        for line in facts(list(parts), width):
            console.print(line)

    say(f"workflow [bold]{report.workflow_id}[/]")
    show(
        f"state at #{seq}",
        f"{stamp(last.event.at, millis=True)}",
        f"after {folded} of {len(report.entries)} events",
        f"last folded: {type(last.event).__name__} (#{last.seq})",
    )
    show(
        f"status [bold]{state.status.value}[/]",
        f"phase {state.phase}",
        f"tenant {state.tenant or '-'}",
        f"iteration {state.iterations} of {state.max_iterations or '-'}",
    )
    cap = f" of {state.token_cap}" if state.token_cap else ""
    usd_cap = f" of {usd(state.cost_cap_usd)}" if state.cost_cap_usd is not None else ""
    show(
        f"spent {state.spent.tokens}{cap} tokens",
        f"{usd(state.spent.usd)}{usd_cap}",
        f"reserved {state.reserved.tokens} tokens, {usd(state.reserved.usd)}",
    )
    times = [f"started {stamp(state.started_at)}"] if state.started_at else []
    if state.deadline_at:
        times.append(f"deadline {stamp(state.deadline_at)}")
    if state.models:
        times.append("models " + ", ".join(state.models))
    if times:
        show(*times)
    if state.steps:
        columns = (
            Column("step", priority=100),
            Column("capability", priority=100, max_width=32),
            Column("status", priority=100),
            Column("attempt", priority=20, justify="right"),
            Column("reserved", priority=40, justify="right"),
            Column("settled", priority=50, justify="right"),
        )
        rows: list[list[Text | str]] = [
            [
                step.step_id,
                step.capability + (f" → {step.tool}" if step.tool else ""),
                step.status,
                str(step.attempt),
                str(step.reservation.tokens),
                str(step.settlement.tokens) if step.settlement else "-",
            ]
            for step in state.steps.values()
        ]
        console.print()
        for line in grid_lines(columns, rows, width)[1]:
            console.print(line)
        console.print()
    for call in state.pending_calls:
        say(f"pending tool call: {call.name} {call.arguments}")
    if state.deferred:
        say(f"inputs kept until the start: {len(state.deferred)}")
    say(f"messages in the conversation: {len(state.messages)}")
    for label, text in (
        ("final output: ", state.final_output),
        ("failure: ", state.failure),
        ("invalid output: ", state.invalid_output),
    ):
        if text:
            for line in hang(Text(label, "dim"), Text(text), width, max_lines=6):
                console.print(line)
