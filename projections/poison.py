"""Poison messages: stored messages the projections cannot fold, skipped and recorded.

Anyone allowed to publish on ``<prefix>.wf.>`` or ``<prefix>.step.>`` can store bytes that
are not an event, an empty batch, or an event whose workflow id cannot be a key of
``JA_SESSIONS``. The streams deny deletes, so such a message stays forever: the projection
service must step over it, every time it reads it (live and in a rebuild). It counts it
(``jetagent_projection_poison_messages_total{stream}``, part of the checkpointed totals)
and writes one dead letter with the reason to ``<prefix>.dlq.projections``, which
``jetagent dlq`` lists (README, "Session views, metrics, dashboards, traces").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from jetagent.dead_letter import DeadLetterKind, dead_letter, publish_dead_letter
from jetagent.errors import JetagentError
from jetagent.events import StepResult, WorkflowEvent
from jetagent.subjects import Names

__all__ = ["PoisonMessage", "PoisonReporter", "checked_result", "workflow_of"]

log = logging.getLogger("jetagent.projections")

SOURCE = "projections"
_KEY = re.compile(r"[A-Za-z0-9_=-]{1,128}")
"""A workflow id the platform can produce (a request id, ``seq-<N>``): one subject token
and one KV key, so a view can be stored under it."""


class PoisonMessage(JetagentError):
    """A stored message that is not a valid event; the message says why."""


def _checked_id(workflow_id: str) -> str:
    if not _KEY.fullmatch(workflow_id):
        raise PoisonMessage(f"workflow id {workflow_id[:80]!r} is not a valid id")
    return workflow_id


def workflow_of(events: list[WorkflowEvent]) -> str:
    """The one workflow a ``JA_WORKFLOWS`` message is about, or :class:`PoisonMessage`."""
    if not events:
        raise PoisonMessage("no events in the message (an empty batch)")
    workflow_id = events[0].workflow_id
    if any(event.workflow_id != workflow_id for event in events):
        raise PoisonMessage("events of more than one workflow in one message")
    return _checked_id(workflow_id)


def checked_result(result: StepResult) -> StepResult:
    _checked_id(result.workflow_id)
    return result


@dataclass
class PoisonReporter:
    """Dead letters for poison messages, written in batches between applies."""

    nc: NATS
    names: Names
    reported_until: dict[str, int] = field(default_factory=dict)
    """Per stream, the last sequence already reported by an earlier run (a rebuild re-reads
    what the live service dead-lettered; it must not write those letters again)."""
    queued: list[tuple[str, int, str, str, DeadLetterKind]] = field(default_factory=list)

    def found(
        self, stream: str, seq: int, subject: str, reason: str, *, kind: DeadLetterKind = "poison"
    ) -> None:
        """``kind`` ``untrusted``: a step result that answers no step as scheduled
        (projections/trust.py), skipped like poison."""
        log.warning("skipping %s message %s:%d on %s: %s", kind, stream, seq, subject, reason)
        if seq > self.reported_until.get(stream, 0):
            self.queued.append((stream, seq, subject, reason, kind))

    async def flush(self) -> None:
        """Write the queued dead letters; ``Nats-Msg-Id`` dedupes a restart's repeats."""
        queued, self.queued = self.queued, []
        for stream, seq, subject, reason, kind in queued:
            letter = dead_letter(
                source=SOURCE,
                kind=kind,
                reason=reason,
                subject=subject,
                stream=stream,
                stream_seq=seq,
                error=f"{kind} message skipped by the projections: {reason}",
            )
            # Its own message id (per source): the orchestrator may dead-letter the same
            # stored message, and each reader's letter is kept. One that cannot be
            # written is logged (above) and counted; the projection must not stop for it.
            await publish_dead_letter(self.nc, self.names, letter, per_source=True)
