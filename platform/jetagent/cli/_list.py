"""``jetagent list``: find workflows by status, tenant, capability, time and cost.

Read from the session views (:mod:`jetagent.listing`, the implementation the gateway's
``GET /v1/workflows`` uses too); when the projection service that writes them is not
running, a note on stderr says so and how far behind the views are.

``--json`` prints one document (README "Command line")::

    {"workflows": [{"workflow_id", "short_id", "tenant", "status", "created_at",
                    "updated_at", "ended_at", "capabilities", "steps", "tokens",
                    "cost_usd", "instruction", "reason"}],
     "count", "matched", "limit", "truncated", "scanned",
     "projection": {"running", "why", "reported_at", "lag"}}
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jetagent.cli._base import connect, console, fail, load_settings, note, run
from jetagent.contract import Status

if TYPE_CHECKING:
    from jetagent.listing import Listing
    from jetagent.reports import ProjectionStatus
    from jetagent.sessions import SessionView

__all__ = ["commands"]

commands = typer.Typer()

DEFAULT_LIMIT = 50


def _statuses(values: list[str]) -> frozenset[Status]:
    known = {s.value: s for s in Status}
    found = set()
    for value in (v.strip() for given in values for v in given.split(",")):
        if value not in known:
            raise fail(f"--status {value!r} is not a status: use one of {', '.join(known)}")
        found.add(known[value])
    return frozenset(found)


def _cost(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        cost = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise fail(f"--cost-above {text!r} is not an amount in USD (such as 0.01)") from None
    if not cost.is_finite() or cost < 0:
        raise fail(f"--cost-above {text!r} is not an amount in USD (such as 0.01)")
    return cost


@commands.command("list")
def list_(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Only workflows in this status (repeatable, or comma-separated): "
            + ", ".join(s.value for s in Status)
            + ".",
        ),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's workflows.")] = None,
    capability: Annotated[
        str | None,
        typer.Option(help="Only workflows that scheduled a step of this capability (tools, …)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Created at or after: 15m, 2h, 3d, 1w back, or an ISO date/time."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Created before: as --since (2h: until two hours ago).")
    ] = None,
    cost_above: Annotated[
        str | None, typer.Option(help="Only workflows that cost more than this (USD).")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="Show at most this many (the newest).")
    ] = DEFAULT_LIMIT,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (README, Command line).")
    ] = False,
    ids: Annotated[
        bool, typer.Option("--ids", help="Print only the full ids, one a line.")
    ] = False,
) -> None:
    """List workflows, newest first, from the session views (times are UTC)."""
    from jetagent.cli._moments import parse_moment
    from jetagent.errors import InvalidRequestError
    from jetagent.listing import ViewFilter

    if limit < 1:
        raise fail(f"--limit {limit}: show at least 1")
    now = datetime.now(UTC)
    try:
        view_filter = ViewFilter(
            tenant=tenant,
            statuses=_statuses(status or []),
            capability=capability,
            since=parse_moment(since, now=now, option="--since") if since else None,
            until=parse_moment(until, now=now, option="--until") if until else None,
            cost_above=_cost(cost_above),
        )
    except InvalidRequestError as exc:
        raise fail("; ".join(exc.reasons)) from None
    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        from jetagent.listing import list_views
        from jetagent.reports import projection_status

        nc = await connect(settings, "jetagent.list")
        try:
            listing = await list_views(nc, settings.names, view_filter, limit=limit)
            projection = await projection_status(nc, settings.names)
        finally:
            await nc.close()
        if as_json:
            print(_document(listing, projection, limit))
        elif ids:
            for view in listing.views:
                console.print(view.workflow_id, highlight=False, soft_wrap=True)
        else:
            _table(listing)
        if (text := projection.note()) is not None:
            note(text)
        if listing.matched > len(listing.views) and not as_json:
            note(f"showing the newest {len(listing.views)} of {listing.matched} (--limit)")
        return 0

    run(main)


def _summary(view: SessionView, short: str) -> dict[str, Any]:
    from jetagent.cli._layout import utc

    def when(moment: datetime | None) -> str | None:
        moment = utc(moment)
        return moment.isoformat() if moment else None

    return {
        "workflow_id": view.workflow_id,
        "short_id": short,
        "tenant": view.tenant,
        "status": view.status.value,
        "created_at": when(view.created_at),
        "updated_at": when(view.updated_at),
        "ended_at": when(view.ended_at),
        "capabilities": sorted({s.capability for s in view.steps if s.capability}),
        "steps": len(view.steps),
        "tokens": view.tokens,
        "cost_usd": str(view.cost_usd),
        "instruction": view.instruction,
        "reason": view.reason,
    }


def _document(listing: Listing, projection: ProjectionStatus, limit: int) -> str:
    import msgspec

    from jetagent.cli._layout import short_ids

    short = short_ids(listing.ids)
    reported = projection.report
    return msgspec.json.encode(
        {
            "workflows": [_summary(v, short[v.workflow_id]) for v in listing.views],
            "count": len(listing.views),
            "matched": listing.matched,
            "limit": limit,
            "truncated": listing.matched > len(listing.views),
            "scanned": listing.scanned,
            "projection": {
                "running": projection.running,
                "why": projection.why,
                "reported_at": (
                    datetime.fromtimestamp(reported.at, UTC).isoformat() if reported else None
                ),
                "lag": projection.lag,
            },
        }
    ).decode()


def _table(listing: Listing) -> None:
    from rich.text import Text

    from jetagent.cli._layout import (
        Column,
        console_width,
        fit_table,
        short_ids,
        stamp,
        usd,
        utc,
    )

    if not listing.views:
        console.print("no workflows match" if listing.scanned else "no workflows listed yet")
        return
    width = console_width(console)
    short = short_ids(listing.ids)
    wide = width >= 120
    columns = (
        Column("id", priority=100),
        Column("status", priority=100),
        Column("tenant", priority=70, max_width=16),
        Column("created (UTC)", priority=90),
        Column("steps", priority=20, justify="right"),
        Column("tokens", priority=30, justify="right"),
        Column("cost", priority=60, justify="right", max_width=12),
        Column("capabilities", priority=10, max_width=30),
        Column("instruction", priority=50, flexible=True, min_width=12),
    )
    rows: list[list[Text | str]] = []
    for view in listing.views:
        created = utc(view.created_at)
        rows.append(
            [
                Text(short[view.workflow_id], "cyan"),
                Text(view.status.value, _STYLES.get(view.status, "")),
                view.tenant or "-",
                stamp(created) if wide else (f"{created:%m-%d %H:%M:%S}" if created else "-"),
                str(len(view.steps)),
                str(view.tokens),
                usd(view.cost_usd),
                ", ".join(sorted({s.capability for s in view.steps if s.capability})) or "-",
                " ".join(view.instruction.split()),
            ]
        )
    console.print(fit_table(columns, rows, width))


_STYLES = {
    Status.FINALIZED: "green",
    Status.TERMINATED: "red",
    Status.REJECTED: "red",
    Status.CANCELLED: "yellow",
    Status.WAITING_APPROVAL: "yellow",
}
