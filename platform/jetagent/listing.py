"""Listing workflows from their session views: the one implementation behind
``jetagent list`` and the gateway's ``GET /v1/workflows``.

The views live in the ``JA_SESSIONS`` bucket, written by the projection service
(README "Session views"); a workflow is listed once the projection has applied it, so a
caller says when the projection is not running (:mod:`jetagent.reports`).

**Reading.** The bucket's stream is read in order with batched direct gets — a thousand
views per request — instead of a key listing and one ``get`` per key (the gateway's
first listing: a round trip per workflow on every page). The bucket keeps one revision
per key, so the stream holds exactly the current views (and delete markers). With a
``since``, the read starts at the first view written since then, less a margin for the
clocks of the orchestrator (which stamps events) and the server (which stamps writes):
a view is written after its workflow's first event, so an older write holds no newer
workflow. Everything else is filtered here; a listing costs one read of the views
(measured in ``bench/listing.py``).

**Order and pages.** Newest first (by creation, then id). A page's cursor is its last
id; the next page lists what sorts after it, so workflows created meanwhile (newer)
never shift the pages being read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
from nats.aio.client import Client as NATS

from jetagent._translate import nats_errors
from jetagent.contract import Status
from jetagent.jetstream import DirectGetter
from jetagent.sessions import SessionView
from jetagent.subjects import Names

__all__ = ["CLOCK_MARGIN", "Listing", "ViewFilter", "list_views"]

CLOCK_MARGIN = timedelta(minutes=10)
"""How far a ``since`` read starts before ``since`` (clock skew between services)."""

_OLDEST = datetime.min.replace(tzinfo=UTC)
_decoder = msgspec.json.Decoder(SessionView)


@dataclass(frozen=True, kw_only=True)
class ViewFilter:
    """Which workflows to list; every criterion given must hold."""

    tenant: str | None = None
    statuses: frozenset[Status] = frozenset()
    """Any of these statuses (none given: any status)."""
    capability: str | None = None
    """A step of this capability was scheduled (``tools``, ``reasoning``, …)."""
    since: datetime | None = None
    """Created at or after (a time without a zone is UTC)."""
    until: datetime | None = None
    """Created before."""
    cost_above: Decimal | None = None
    """Spent more than this many USD."""

    def matches(self, view: SessionView) -> bool:
        """Whether ``view`` passes every criterion."""
        if self.tenant is not None and view.tenant != self.tenant:
            return False
        if self.statuses and view.status not in self.statuses:
            return False
        if self.capability is not None and not any(
            s.capability == self.capability for s in view.steps
        ):
            return False
        created = _created(view)
        if self.since is not None and created < _aware(self.since):
            return False
        if self.until is not None and created >= _aware(self.until):
            return False
        return self.cost_above is None or view.cost_usd > self.cost_above


@dataclass
class Listing:
    """One page of workflows, newest first."""

    views: list[SessionView]
    matched: int
    """How many views passed the filter (this page and every other)."""
    scanned: int
    """How many views were read."""
    ids: list[str]
    """The id of every view read (what a short id must be unique among)."""
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; None on the last one."""


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _created(view: SessionView) -> datetime:
    return _aware(view.created_at) if view.created_at is not None else _OLDEST


def _order(view: SessionView) -> tuple[datetime, str]:
    return _created(view), view.workflow_id


async def list_views(
    nc: NATS,
    names: Names,
    view_filter: ViewFilter,
    *,
    limit: int,
    cursor: str | None = None,
    timeout: float = 10.0,
) -> Listing:
    """A page of at most ``limit`` views passing ``view_filter``, newest first, after
    ``cursor`` (the last id of the page before). ``NotProvisionedError`` without the
    bucket."""
    bucket = names.bucket("SESSIONS")
    stream = f"KV_{bucket}"
    with nats_errors(prefix=names.prefix):
        await nc.jetstream().stream_info(stream)  # a missing bucket, said as such
    start = 1
    if view_filter.since is not None:
        start = await _first_written_since(
            nc, names, stream, _aware(view_filter.since) - CLOCK_MARGIN, timeout
        )
    reader = DirectGetter(nc, stream, timeout=timeout)
    await reader.open()
    try:
        records = await reader.scan(f"$KV.{bucket}.>", start_seq=start) if start else []
    finally:
        await reader.close()
    views: list[SessionView] = []
    ids = []
    for record in records:
        if record.headers.get("KV-Operation") in ("DEL", "PURGE") or not record.data:
            continue
        try:
            view = _decoder.decode(record.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # not a view this release can read: left out, never fatal
        ids.append(view.workflow_id)
        if view_filter.matches(view):
            views.append(view)
    views.sort(key=_order, reverse=True)
    matched = len(views)
    if cursor is not None:
        views = _after(views, cursor)
    page = views[:limit]
    more = len(views) > limit
    return Listing(
        views=page,
        matched=matched,
        scanned=len(ids),
        ids=ids,
        next_cursor=page[-1].workflow_id if more and page else None,
    )


def _after(views: list[SessionView], cursor: str) -> list[SessionView]:
    """The views that sort after the one ``cursor`` names (none if it is not listed)."""
    for i, view in enumerate(views):
        if view.workflow_id == cursor:
            return views[i + 1 :]
    return []


async def _first_written_since(
    nc: NATS, names: Names, stream: str, moment: datetime, timeout: float
) -> int:
    """The sequence of the first message ``stream`` stored at or after ``moment``; 0 if
    none was (a direct get by start time, ADR-31)."""
    body = msgspec.json.encode({"start_time": moment.astimezone(UTC).isoformat()})
    with nats_errors(prefix=names.prefix):
        reply = await nc.request(f"$JS.API.DIRECT.GET.{stream}", body, timeout=timeout)
    headers = reply.headers or {}
    if headers.get("Status") == "404":
        return 0
    if "Nats-Sequence" not in headers:
        return 1  # an answer this reader does not know: read everything instead
    return int(headers["Nats-Sequence"])
