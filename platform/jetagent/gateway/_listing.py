"""Listing a tenant's workflows: ``GET /v1/workflows``, on the session views.

The one listing implementation (:mod:`jetagent.listing`, shared with ``jetagent
list``): one batched read of the ``JA_SESSIONS`` bucket per page, newest first; the
cursor (the last id of a page) keeps pages stable while new workflows arrive. A
workflow appears once the projection service has applied it (README "Session views").
"""

from __future__ import annotations

from datetime import datetime

from jetagent.client import Client
from jetagent.contract import Status
from jetagent.errors import NotProvisionedError
from jetagent.gateway._models import WorkflowPage, summary_of
from jetagent.listing import ViewFilter, list_views

__all__ = ["list_workflows"]


async def list_workflows(
    client: Client,
    *,
    tenant: str,
    state: Status | None,
    since: datetime | None,
    cursor: str | None,
    limit: int,
) -> WorkflowPage:
    """A page of ``tenant``'s workflows, newest first (a time without a zone is UTC)."""
    view_filter = ViewFilter(
        tenant=tenant,
        statuses=frozenset({state}) if state is not None else frozenset(),
        since=since,
    )
    try:
        listing = await list_views(client.nc, client.names, view_filter, limit=limit, cursor=cursor)
    except NotProvisionedError:
        return WorkflowPage(items=[])  # no projection bucket yet: nothing listed
    return WorkflowPage(
        items=[summary_of(view) for view in listing.views], next_cursor=listing.next_cursor
    )
