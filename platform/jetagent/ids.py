"""Finding a workflow by its id or by a unique prefix of it (README "Command line").

A workflow's id is its request's id — a UUID unless the caller chose one — and people
paste the first few characters of it. A workflow exists once the orchestrator recorded
its first decision under ``<prefix>.wf.<id>.>``: ``Started``, or ``RequestRejected`` for
a refused request. The ids that start with a prefix are read from the stream's subject
index (``STREAM.INFO`` with a subject filter, pages of up to 100,000 subjects; the
server answers from its index, no message is read; ``Started`` and ``RequestRejected``
always stand alone in their message, so their subjects name them: ``events.
group_for_messages``) — without the projection, so a
prefix works while the projection service is down or behind.

One resolver for every command that takes an id (``Client.resolve``): an exact id wins;
a unique prefix resolves; an ambiguous one raises ``AmbiguousWorkflowIdError`` naming
the candidates; nothing raises ``WorkflowNotFoundError``. The HTTP gateway takes exact
ids only: a prefix answered across tenants would let one tenant probe another's ids.
"""

from __future__ import annotations

import re

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from jetagent._translate import nats_errors
from jetagent.errors import AmbiguousWorkflowIdError, WorkflowNotFoundError
from jetagent.subjects import Names, WorkflowSubject

__all__ = ["ID_TOKEN", "ids_starting_with", "pick"]

ID_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an id (or a prefix of one) may be: a subject token (``contract.ID_PATTERN``)."""

_FIRST_EVENTS = ("Started", "RequestRejected")
"""The events that open a workflow's history (its first decision)."""


class _Subjects(msgspec.Struct):
    subjects: dict[str, int] | None = None


class _InfoPage(msgspec.Struct):
    """The parts of a ``STREAM.INFO`` answer a subject listing needs."""

    state: _Subjects | None = None
    total: int = 0
    offset: int = 0
    error: dict[str, object] | None = None


_page = msgspec.json.Decoder(_InfoPage)


async def _subjects(
    nc: NATS, names: Names, stream: str, subject_filter: str, timeout: float
) -> list[str]:
    """Every subject of ``stream`` matching ``subject_filter`` that holds a message."""
    found: list[str] = []
    while True:
        body = msgspec.json.encode({"subjects_filter": subject_filter, "offset": len(found)})
        with nats_errors(prefix=names.prefix):
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", body, timeout=timeout)
            page = _page.decode(reply.data)
            if page.error is not None:
                APIError.from_error(page.error)  # raises the nats-py error, translated here
        subjects = list((page.state.subjects if page.state else None) or {})
        found.extend(subjects)
        if not subjects or len(found) >= page.total:
            return found


async def ids_starting_with(
    nc: NATS, names: Names, prefix: str, *, timeout: float = 10.0
) -> list[str]:
    """The ids of the workflows whose id starts with ``prefix``, sorted."""
    found: set[str] = set()
    for event in _FIRST_EVENTS:
        subject_filter = names.workflow_event("*", event)
        for subject in await _subjects(nc, names, names.workflows_stream, subject_filter, timeout):
            parsed = names.parse(subject)
            if isinstance(parsed, WorkflowSubject) and parsed.workflow_id.startswith(prefix):
                found.add(parsed.workflow_id)
    return sorted(found)


def pick(text: str, candidates: list[str]) -> str:
    """The one workflow ``text`` names among ``candidates`` (the ids starting with it)."""
    if not candidates:
        raise WorkflowNotFoundError(text)
    if len(candidates) > 1:
        raise AmbiguousWorkflowIdError(text, candidates)
    return candidates[0]
