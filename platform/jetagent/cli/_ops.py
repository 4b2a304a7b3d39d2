"""The ``jetagent`` commands for operating and debugging: inspect, tail, dlq (``replay``
is :mod:`jetagent.cli._replay`, ``list`` and ``status`` have modules of their own).

Output is laid out for the terminal's width (:mod:`jetagent.cli._layout`): times are
UTC, ids are shown by a short unique prefix where a line is about many workflows.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated, Any

import typer
from rich.text import Text

from jetagent.cli._base import connect, console, err, fail, load_settings, resolve_id, run

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
def inspect(
    workflow_id: Annotated[str, typer.Argument(help="A workflow id, or a unique prefix of one.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw view.")] = False,
) -> None:
    """Show a workflow's session view: status, steps, models, latency, tokens, cost."""
    from jetagent.cli._render import show_session
    from jetagent.client import Client

    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        client = Client(await connect(settings, "jetagent.cli"), settings)
        try:
            wid = await resolve_id(client, workflow_id)
            view = await client.session(wid)
        finally:
            await client.close()
        if view.last_workflow_seq == 0:
            raise fail(f"no workflow {wid}", 1)
        if as_json:
            import msgspec

            console.print_json(msgspec.json.encode(view).decode())
        else:
            show_session(view, console)
        return 0

    run(main)


class _Tenants:
    """The tenant of each workflow ``tail`` sees: from its ``Started`` event, or — for a
    workflow that started before ``tail`` did — read once from the stream."""

    KEEP = 10_000

    def __init__(self, nc: Any, settings: Any) -> None:
        from jetagent.jetstream import DirectGetter

        self.names = settings.names
        self.reader = DirectGetter(nc, self.names.workflows_stream, timeout=5.0)
        self.known: dict[str, str] = {}

    async def of(self, event: Any) -> str:
        from jetagent.events import decode_events

        wid = event.workflow_id
        tenant = getattr(event, "tenant", None) or self.known.get(wid)
        if tenant is None:
            record = await self.reader.last(self.names.workflow_event(wid, "Started"))
            events = decode_events(record.data) if record is not None else []
            tenant = getattr(events[0], "tenant", "") if events else ""
        if len(self.known) >= self.KEEP:
            self.known.pop(next(iter(self.known)))
        self.known[wid] = tenant or "-"
        return self.known[wid]


@commands.command()
def tail(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's workflows.")] = None,
) -> None:
    """Print every workflow event as it happens, across all workflows."""
    # Each line: the workflow's short id (its unique prefix), the time (UTC), the
    # tenant, what happened (README "Command line").
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from jetagent.cli._layout import ShortIds, console_width, hang, stamp, utc
    from jetagent.cli._render import describe
    from jetagent.events import decode_events

    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        nc = await connect(settings, "jetagent.tail")
        tenants = _Tenants(nc, settings)
        short = ShortIds()
        day: date | None = None
        try:
            sub = await nc.jetstream().subscribe(
                settings.names.all_workflows,
                stream=settings.names.workflows_stream,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            )
            await tenants.reader.open()
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
                width = console_width(console)
                for event in events:
                    who = await tenants.of(event)
                    if tenant and who != tenant:
                        continue
                    moment = utc(event.at)
                    if moment is not None and moment.date() != day:
                        day = moment.date()
                        console.print(f"[bold]{day:%Y-%m-%d}[/] (UTC)")
                    head = Text.assemble(
                        (f"{short.of(event.workflow_id)} ", "cyan"),
                        (f"{stamp(moment, date=False, millis=True)} ", "dim"),
                        (f"{who} ", "magenta"),
                    )
                    for line in hang(head, Text.from_markup(describe(event)), width, max_lines=3):
                        console.print(line)
        finally:
            await tenants.reader.close()
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
            _dead_letter(record, body)
        return 0

    run(main)


def _dead_letter(record: Any, body: Any) -> None:
    """One dead letter: who set it aside, when, and why; then where the message is,
    each on a line of its own that fits the width."""
    from datetime import datetime

    from jetagent.cli._layout import console_width, facts, fold, labelled, stamp

    width = console_width(console)
    stored = record.headers.get("Nats-Time-Stamp")
    if not isinstance(body, dict):  # not written by jetagent: shown as it is
        junk = Text.assemble((f"#{record.seq} ", "bold"), f"{record.subject}: not a dead letter")
        for line in fold(junk, width):
            console.print(line)
        for line in fold(Text(repr(record.data[:400])), width - 4, max_lines=2):
            console.print(Text("    ") + line)
        return
    try:
        at = stamp(datetime.fromisoformat(str(body.get("at") or stored)))
    except ValueError:
        at = "-"
    head = [
        Text.assemble((f"#{record.seq} ", "bold"), (at, "dim")),
        Text(record.subject),  # names the source: <prefix>.dlq.<source>
        Text(str(body.get("kind", "?"))),
        Text(f"{body.get('deliveries', '?')} deliveries"),
    ]
    for line in facts(head, width):
        console.print(line)
    inner = width - 4
    reason = str(body.get("reason") or "").strip()
    error = str(body.get("error") or "").strip()
    for text, style in ((reason, ""), (error if error != reason else "", "dim")):
        if text:
            for line in fold(Text(text, style), inner, max_lines=4):
                console.print(Text("    ") + line)
    if body.get("workflow_id"):
        console.print(Text("    ") + labelled("workflow", str(body["workflow_id"]), inner))
    where = f"{body.get('stream', '?')} #{body.get('stream_seq', '?')}"
    console.print(Text("    ") + labelled("message", where, inner))
    console.print(Text("    ") + labelled("subject", str(body.get("subject", "")), inner))
