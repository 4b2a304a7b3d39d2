"""Listing a tenant's workflows from the session views (the ``JA_SESSIONS`` bucket).

The bucket is the projection service's read model (README "Session views"); a workflow
appears here once the projection has applied it. Keys are read in order and filtered
here, so a page costs a read per key scanned: fine for thousands of workflows, and the
cursor (the last key returned) keeps pages stable while new workflows arrive.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError

from jetagent.client import Client
from jetagent.contract import Status
from jetagent.gateway._models import WorkflowPage, WorkflowSummary, summary_of
from jetagent.sessions import SessionView

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
    try:
        kv = await client.js.key_value(client.names.bucket("SESSIONS"))
        keys = sorted(await kv.keys())
    except (BucketNotFoundError, NoKeysError, NotFoundError):
        return WorkflowPage(items=[])
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a time without a zone is UTC, as events are
    if cursor:
        keys = [k for k in keys if k > cursor]
    items: list[WorkflowSummary] = []
    next_cursor = None
    for key in keys:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            continue
        if not entry.value:
            continue
        try:
            view = msgspec.json.decode(entry.value, type=SessionView)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if view.tenant != tenant or (state is not None and view.status is not state):
            continue
        if since is not None and (view.created_at is None or view.created_at < since):
            continue
        if len(items) == limit:
            next_cursor = items[-1].workflow_id
            break
        items.append(summary_of(view))
    return WorkflowPage(items=items, next_cursor=next_cursor)
