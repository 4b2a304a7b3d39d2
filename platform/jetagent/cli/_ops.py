"""The ``jetagent`` commands for operating and debugging: inspect, replay, tail, dlq."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from jetagent.cli._base import connect, console, err, fail, load_settings, run

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
def inspect(
    workflow_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw view.")] = False,
) -> None:
    """Show a workflow's session view: status, steps, models, latency, tokens, cost."""
    from jetagent.cli._render import session_table
    from jetagent.client import Client

    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        client = Client(await connect(settings, "jetagent.cli"), settings)
        try:
            view = await client.session(workflow_id)
        finally:
            await client.close()
        if view.last_workflow_seq == 0:
            raise fail(f"no workflow {workflow_id}", 1)
        if as_json:
            import msgspec

            console.print_json(msgspec.json.encode(view).decode())
        else:
            session_table(view, console)
        return 0

    run(main)


@commands.command()
def replay(
    workflow_id: str,
    verify: Annotated[
        bool, typer.Option("--verify", help="Re-decide every input and compare.")
    ] = False,
) -> None:
    """Replay a workflow's history (from the log: no model or tool is called again)."""
    from jetagent.cli._render import describe
    from jetagent.models import ModelCatalog
    from jetagent.orchestrator.replay import replay_workflow
    from jetagent.worker.registry import ToolRegistry
    from jetagent.workflow import DecideContext

    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        nc = await connect(settings, "jetagent.replay")
        try:
            registry = ToolRegistry(nc.jetstream(), settings.names)
            await registry.start()
            await registry.stop()
            ctx = DecideContext(
                models=ModelCatalog.load(settings.models).models,
                tools=registry.tools,
                max_step_attempts=settings.max_step_attempts,
            )
            report = await replay_workflow(nc, settings.names, workflow_id, ctx, verify=verify)
        finally:
            await nc.close()
        if not report.events:
            invalid = f" ({len(report.skipped)} messages there are not valid events)"
            raise fail(f"no workflow {workflow_id}" + (invalid if report.skipped else ""), 1)
        for event in report.events:
            console.print(f"{event.at:%H:%M:%S.%f} {describe(event)}", highlight=False)
        if verify:
            if report.ok:
                console.print(
                    f"[green]verified:[/] {report.groups} decisions replay to the recorded events"
                )
            for mismatch in report.mismatches:
                console.print(
                    f"[red]mismatch[/] after {mismatch.cause}: recorded {mismatch.recorded}, "
                    f"decided {mismatch.decided} ({mismatch.detail})"
                )
        # Set aside, never folded: shown so that a forgery attempt is seen.
        for line in report.untrusted:
            console.print(f"[yellow]untrusted step result (not folded)[/] {line}", highlight=False)
        for line in report.skipped:
            console.print(f"[yellow]skipped (not an event)[/] {line}", highlight=False)
        return 0 if report.ok else 1

    run(main)


@commands.command()
def tail(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's workflows.")] = None,
) -> None:
    """Print every workflow event as it happens, across all workflows."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from jetagent.cli._render import describe
    from jetagent.events import decode_events

    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        nc = await connect(settings, "jetagent.tail")
        tenants: dict[str, str] = {}
        try:
            sub = await nc.jetstream().subscribe(
                settings.names.all_workflows,
                stream=settings.names.workflows_stream,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            )
            err.print(
                f"following every event of {settings.names.workflows_stream} (Ctrl-C stops)",
                highlight=False,
            )
            while not stop.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except TimeoutError:  # nats-py's is one too: nothing new in 0.5 s
                    continue
                try:
                    events = decode_events(msg.data)
                except Exception as exc:  # anyone may publish there: say so, go on
                    console.print(
                        f"[dim]{msg.subject}[/] [red]not a valid event[/] "
                        f"({type(exc).__name__}); skipped",
                        highlight=False,
                    )
                    continue
                for event in events:
                    who = getattr(event, "tenant", None)
                    if who:
                        tenants[event.workflow_id] = who
                    if tenant and tenants.get(event.workflow_id) != tenant:
                        continue
                    console.print(f"[dim]{event.workflow_id}[/] {describe(event)}", highlight=False)
        finally:
            await nc.close()
        return 0

    run(main)


@commands.command()
def dlq(
    limit: Annotated[int, typer.Option(help="How many of the newest entries.")] = 20,
) -> None:
    """List the newest dead letters (messages that could not be processed)."""
    import msgspec

    from jetagent.jetstream import DirectGetter

    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        nc = await connect(settings, "jetagent.dlq")
        try:
            info = await nc.jetstream().stream_info(settings.names.dlq_stream)
            first = max(info.state.last_seq - limit + 1, 1)
            reader = DirectGetter(nc, settings.names.dlq_stream, timeout=5.0)
            await reader.open()
            records = await reader.scan(settings.names.all_dead_letters, start_seq=first)
            await reader.close()
        finally:
            await nc.close()
        if not records:
            console.print("no dead letters")
        for record in records:
            try:
                body = msgspec.json.decode(record.data)
            except msgspec.DecodeError:
                body = None
            if not isinstance(body, dict):  # not written by jetagent: shown as it is
                console.print(f"[bold]#{record.seq}[/] {record.subject}: {record.data[:200]!r}")
                continue
            console.print(
                f"[bold]#{record.seq}[/] {record.subject}: {body.get('subject', '')} "
                f"(stream seq {body.get('stream_seq')}, {body.get('deliveries', '?')} deliveries)"
            )
            console.print(f"  {str(body.get('error', '')).strip()}", highlight=False)
        return 0

    run(main)
