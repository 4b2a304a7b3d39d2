"""The dead letter: why a message was set aside, and where to find it.

A message that cannot be processed is answered once and visibly: its dead letter goes
to ``<prefix>.dlq.<source>`` (the ``JA_DLQ`` stream; ``jetagent dlq`` lists them, the
``jetagent_dead_letters{source}`` metric counts them) and the message is terminated,
never redelivered. The original stays in its stream at ``stream``/``stream_seq``.

Every producer (the worker, the orchestrator and its journal, the projections) builds
its letters with :func:`dead_letter` (or :func:`dead_letter_of`, for a message in hand
from a consumer) and writes them with :func:`publish_dead_letter`; nothing else builds
a ``DeadLetter`` or its headers, so every entry has one shape (``schemas/
dead-letter.schema.json``).

``kind`` says what happened (README "Rejections and dead letters"):

- ``poison``: the message can never be read (not JSON, too large or deep, wrong shape,
  an id that is not a token);
- ``untrusted``: a step result that matches no pending step of the capability that was
  scheduled (a forgery, or a worker confused about its step);
- ``failed``: processing failed unexpectedly, again and again, until retries ran out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetagent.errors import JetagentError
from jetagent.jetstream import Message, publish
from jetagent.jetstream.headers import Header
from jetagent.subjects import Names

__all__ = [
    "DeadLetter",
    "DeadLetterKind",
    "dead_letter",
    "dead_letter_of",
    "publish_dead_letter",
]

DeadLetterKind = Literal["poison", "untrusted", "failed"]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One ``JA_DLQ`` entry."""

    source: str
    """Who set it aside: ``orchestrator``, a capability's name, ``projections``."""
    kind: DeadLetterKind
    reason: str
    """One line for a person."""
    subject: str
    stream: str
    stream_seq: int
    deliveries: int
    at: datetime
    workflow_id: str | None = None
    """The workflow it concerns, when one could be named."""
    error: str = ""
    """The reason again, or a short traceback for ``failed``."""


_encoder = msgspec.json.Encoder()


def dead_letter(
    *,
    source: str,
    kind: DeadLetterKind,
    reason: str,
    subject: str,
    stream: str,
    stream_seq: int,
    deliveries: int = 1,
    workflow_id: str | None = None,
    error: str = "",
) -> DeadLetter:
    """The dead letter of the message stored at ``stream``/``stream_seq`` on ``subject``;
    ``error`` defaults to the reason. ``deliveries`` is 1 for a message read from its
    stream rather than delivered by a consumer."""
    return DeadLetter(
        source=source,
        kind=kind,
        reason=reason,
        subject=subject,
        stream=stream,
        stream_seq=stream_seq,
        deliveries=deliveries,
        at=datetime.now(UTC),
        workflow_id=workflow_id,
        error=error or reason,
    )


def dead_letter_of(
    msg: Msg,
    *,
    source: str,
    kind: DeadLetterKind,
    reason: str,
    workflow_id: str | None = None,
    error: str = "",
) -> DeadLetter:
    """The dead letter of a message received from a JetStream consumer."""
    meta = msg.metadata
    return dead_letter(
        source=source,
        kind=kind,
        reason=reason,
        subject=msg.subject,
        stream=meta.stream,
        stream_seq=meta.sequence.stream,
        deliveries=meta.num_delivered,
        workflow_id=workflow_id,
        error=error,
    )


async def publish_dead_letter(
    nc: NATS, names: Names, letter: DeadLetter, *, per_source: bool = False
) -> bool:
    """Record ``letter`` (idempotent per original message); False if NATS refused it, or
    did not store it within 10 s (retried through an election of the dead-letter
    stream meanwhile): the message is then left to come back.

    The letters of one stored message share a message id, so whoever sets it aside
    first is the one recorded within the duplicate window (the worker and the
    orchestrator's journal may both meet a poison ``StepScheduled``). ``per_source``
    keeps one letter per source instead: a reader that always re-reads what others may
    also set aside (the projections) records its own.
    """
    scope = f"{letter.source}:" if per_source else "dlq:"
    headers = {
        # A redelivered (or re-read) message is dead-lettered once (within the duplicate window).
        Header.MSG_ID: f"{scope}{letter.stream}:{letter.stream_seq}",
        Header.JA_DEAD_LETTER_KIND: letter.kind,
    }
    message = Message(names.dlq(letter.source), _encoder.encode(letter), headers)
    try:
        await publish(nc, message, timeout=2.0, deadline_s=10.0, what="record a dead letter")
    except JetagentError:
        return False
    return True
