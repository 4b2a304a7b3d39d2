"""``jetagent status``: the platform at a glance (:mod:`jetagent.overview`) — streams,
durable consumers with their backlog, workers connected per capability with their
versions, the projection service's lag, circuit breakers. ``--json`` prints the
``Overview`` document (README "Command line")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from jetagent.cli._base import connect, console, load_settings, run

if TYPE_CHECKING:
    from jetagent.overview import CapabilityState, Overview, StreamState

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (README, Command line).")
    ] = False,
) -> None:
    """Show streams, consumers and their backlog, workers per capability, projection lag
    and circuit breakers."""
    import msgspec

    from jetagent.overview import overview
    from jetagent.plugins import CAPABILITIES, installed

    settings = load_settings()
    try:
        expected = sorted(installed(CAPABILITIES))
    except Exception:  # a broken plugin must not hide the platform's state
        expected = []

    async def main(stop: asyncio.Event) -> int:
        nc = await connect(settings, "jetagent.status")
        try:
            found = await overview(nc, settings.names, capabilities=expected)
        finally:
            await nc.close()
        if as_json:
            print(msgspec.json.encode(found).decode())
        else:
            _show(found)
        return 0

    run(main)


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"  # pragma: no cover


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _show(found: Overview) -> None:
    from jetagent.cli._layout import console_width, facts, fold

    width = console_width(console)

    def say(*parts: str, indent: int = 0) -> None:
        # One part is folded, several are joined with " · " and broken between parts;
        # a line that does not fit goes on four cells further in.
        if len(parts) == 1:
            lines = fold(Text.from_markup(parts[0]), width - indent - 4)
        else:
            lines = facts(list(parts), width - indent - 4)
        for n, line in enumerate(lines):
            console.print(Text(" " * (indent + (4 if n else 0))) + line)

    server = found.server
    say(
        f"jetagent {found.jetagent_version} · prefix {found.prefix} · nats-server "
        f"{server.get('version') or '?'}"
        + (f" (cluster {server['cluster']})" if server.get("cluster") else "")
    )
    console.print()
    _streams(found, width, say)
    console.print()
    _consumers(found, width, say)
    console.print()
    say("[bold]workers per capability[/]")
    for capability in found.capabilities:
        _capability(capability, say)
    console.print()
    _projection(found, say)
    if found.circuits:
        console.print()
        _circuits(found, width, say)


def _streams(found: Overview, width: int, say: Callable[..., None]) -> None:
    from jetagent.cli._layout import Column, fit_table

    every = len(found.streams) + len(found.missing_streams)
    say(f"[bold]streams[/] ({len(found.streams)} of {every})")
    rows: list[list[Text | str]] = [
        [
            s.name,
            f"{s.messages:,}",
            _size(s.bytes),
            f"{s.last_seq:,}",
            str(s.consumers),
            str(s.replicas),
            _leader(s),
        ]
        for s in found.streams
    ]
    columns = (
        Column("stream", priority=100),
        Column("messages", priority=100, justify="right"),
        Column("bytes", priority=80, justify="right"),
        Column("last seq", priority=60, justify="right"),
        Column("consumers", priority=30, justify="right"),
        Column("replicas", priority=40, justify="right"),
        Column("leader", priority=50, flexible=True, min_width=10),
    )
    console.print(fit_table(columns, rows, width))
    if found.missing_streams:
        say(f"[red]missing:[/] {', '.join(found.missing_streams)} — run `jetagent provision`")


def _leader(stream: StreamState) -> str:
    """``n1`` alone, or ``n1 · 2/2 current`` with the replicas that lag named."""
    if not stream.peers:
        return stream.leader or "-"
    current = sum(p.current for p in stream.peers)
    behind = [
        f"{p.name} {'offline' if p.offline else f'lag {p.lag}'}"
        for p in stream.peers
        if not p.current
    ]
    lagging = f" ({', '.join(behind)})" if behind else ""
    return f"{stream.leader or '-'} · {current}/{len(stream.peers)} current{lagging}"


def _consumers(found: Overview, width: int, say: Callable[..., None]) -> None:
    from jetagent.cli._layout import Column, fit_table

    if not found.consumers:
        say("[bold]durable consumers[/]: none (no service has started)")
        return
    say(f"[bold]durable consumers[/] ({len(found.consumers)})")
    rows: list[list[Text | str]] = [
        [
            c.stream,
            c.name,
            str(c.pending),
            str(c.ack_pending),
            str(c.redelivered),
            str(c.waiting),
            c.last_active[11:19] + "Z" if c.last_active else "-",
        ]
        for c in found.consumers
    ]
    columns = (
        Column("stream", priority=50),
        Column("consumer", priority=100),
        Column("pending", priority=100, justify="right"),
        Column("ack pending", priority=90, justify="right"),
        Column("redelivered", priority=70, justify="right"),
        Column("waiting", priority=40, justify="right"),
        Column("last active", priority=30),
    )
    console.print(fit_table(columns, rows, width))


def _circuits(found: Overview, width: int, say: Callable[..., None]) -> None:
    from jetagent.cli._layout import Column, fit_table

    say(f"[bold]circuit breakers[/] ({len(found.circuits)})")
    rows: list[list[Text | str]] = [
        [
            c.provider,
            Text(c.state, {"closed": "green", "open": "red"}.get(c.state, "yellow")),
            str(c.consecutive_failures),
            c.base_url or "-",
            c.worker,
        ]
        for c in found.circuits
    ]
    columns = (
        Column("provider", priority=100),
        Column("state", priority=100),
        Column("failures", priority=60, justify="right"),
        Column("base url", priority=50, flexible=True, min_width=12),
        Column("worker", priority=40),
    )
    console.print(fit_table(columns, rows, width))


def _capability(capability: CapabilityState, say: Callable[..., None]) -> None:
    consumer = capability.consumer
    backlog = "no consumer yet"
    if consumer is not None:
        backlog = (
            f"{consumer.name}: {consumer.pending} steps waiting, {consumer.ack_pending} running"
            + (f", {consumer.redelivered} redelivered" if consumer.redelivered else "")
        )
    name = capability.name
    if capability.workers:
        count = len(capability.workers)
        say(f"{name}: {count} worker{'s' if count > 1 else ''}", backlog, indent=2)
    elif consumer is not None and consumer.waiting:
        # Pull requests wait on the consumer, yet no worker reports: one of a release
        # that wrote no reports, or one that cannot write to the registry bucket.
        pulls = f"{consumer.waiting} pull request{'s wait' if consumer.waiting > 1 else ' waits'}"
        say(
            f"{name}: [yellow]no worker reporting[/], yet {pulls} (an older worker?) · {backlog}", 2
        )
    else:
        style = "red" if consumer is not None and consumer.pending else "yellow"
        say(f"{name}: [{style}]no worker connected[/]", backlog, indent=2)
    for worker in capability.workers:
        say(
            worker.worker,
            f"jetagent {worker.version}",
            f"host {worker.host} pid {worker.pid}",
            f"concurrency {worker.concurrency}",
            f"reported {_ago(worker.last_report_s)}",
            indent=6,
        )
    for worker in capability.gone:
        say(
            f"[dim]gone: {worker.worker}[/]",
            f"[dim]jetagent {worker.version}[/]",
            f"[dim]last report {_ago(worker.last_report_s)}[/]",
            indent=6,
        )


def _projection(found: Overview, say: Callable[..., None]) -> None:
    projection = found.projection
    lag = ", ".join(f"{stream} {count:,}" for stream, count in projection.lag.items())
    behind = f"; behind by {lag}" if lag else ""
    if projection.running:
        say(
            f"[bold]projection service[/]: running (jetagent {projection.version} on "
            f"{projection.host}, pid {projection.pid}){behind}"
        )
    else:
        say(
            f"[bold]projection service[/]: [red]not running[/] ({projection.why})"
            f"{behind} — `jetagent projections run`"
        )
