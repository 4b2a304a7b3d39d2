"""Message header names and JetStream API error codes, each spelled once.

``Header`` holds the names nats-server reads or writes (ADR-31 direct get, ADR-50 atomic
batches, the expected-sequence checks) and the few of jetagent's own (``Ja-*``) that
more than one part of the platform reads. ``ErrorCode`` holds the ``err_code`` values of
the JetStream API errors jetagent acts on; the values were measured against nats-server
2.15 (docs/ARCHITECTURE.md, "JetStream facts").
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = ["ErrorCode", "Header"]


class Header:
    """Header names (a namespace, not instantiated)."""

    # What a publisher sets.
    MSG_ID: Final = "Nats-Msg-Id"
    """Deduplication id within the stream's duplicate window; jetagent also uses it to
    recognise a write whose acknowledgement was lost."""
    EXPECTED_LAST_SEQUENCE: Final = "Nats-Expected-Last-Sequence"
    """Store only if the stream's last sequence is this one."""
    EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
    """Store only if the last message on the subject (or on the filter below) has this
    sequence; ``0``: there is none."""
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
    """The subject filter the check above applies to, instead of the message's subject."""
    BATCH_ID: Final = "Nats-Batch-Id"
    """An atomic batch's id (ADR-50)."""
    BATCH_SEQUENCE: Final = "Nats-Batch-Sequence"
    """A message's position in its atomic batch, from 1."""
    BATCH_COMMIT: Final = "Nats-Batch-Commit"
    """On the batch's last message: commit it."""
    SCHEDULE: Final = "Nats-Schedule"
    """A message schedule (ADR-51), e.g. ``@at <RFC 3339 time>``."""
    SCHEDULE_TARGET: Final = "Nats-Schedule-Target"
    """Where the server publishes a schedule's message when it is due."""

    # What the server sets on what it returns.
    SEQUENCE: Final = "Nats-Sequence"
    """A direct-get reply's stream sequence."""
    SUBJECT: Final = "Nats-Subject"
    """A direct-get reply's subject."""
    TIME_STAMP: Final = "Nats-Time-Stamp"
    """A direct-get reply's storage time."""
    NUM_PENDING: Final = "Nats-Num-Pending"
    """Messages still matching a batched direct get after this reply."""
    PENDING_MESSAGES: Final = "Nats-Pending-Messages"
    """Messages of an ended pull request that were not delivered."""
    STATUS: Final = "Status"
    """A status reply's code (``204`` end of batch, ``404`` none, ``408`` expired ...)."""
    DESCRIPTION: Final = "Description"
    """A status reply's text."""

    # jetagent's own.
    JA_EVENT: Final = "Ja-Event"
    """The event type(s) a message holds."""
    JA_WORKFLOW: Final = "Ja-Workflow"
    """The workflow a message belongs to."""
    JA_CAUSATION: Final = "Ja-Causation"
    """``<stream>:<seq>`` of the message whose handling wrote this one."""
    JA_DEAD_LETTER_KIND: Final = "Ja-Dead-Letter-Kind"
    """Why a dead letter was set aside."""
    JA_SCHEDULED_SEQ: Final = "Ja-Scheduled-Seq"
    """On a ``StepResult``: the workflows stream's sequence of the ``StepScheduled`` it
    answers, as the worker received it. The orchestrator reads the workflow up to it
    before it judges the result; a lower bound to wait for, never proof of anything
    (anyone allowed to publish results can write any number)."""
    JA_TENANT: Final = "Ja-Tenant"
    """The tenant a step or a step result is for: workers and the orchestrator take
    messages round robin across tenants by it (``jetstream/fair.py``)."""


class ErrorCode(IntEnum):
    """JetStream API ``err_code`` values that jetagent acts on."""

    NO_SUITABLE_PEERS = 10005
    """No servers to place a stream or consumer on (more replicas than servers running,
    a peer offline, placement tags nobody has)."""
    CLUSTER_NOT_AVAILABLE = 10008
    """The JetStream cluster has no meta leader right now (an election): try again."""
    CONSUMER_NOT_FOUND = 10014
    """No consumer of this name on the stream."""
    NOT_ENABLED_FOR_ACCOUNT = 10039
    """The account the connection logged in to has no JetStream."""
    NO_MESSAGE_FOUND = 10037
    """``STREAM.MSG.GET``: no message matches (an answer, not a failure)."""
    STREAM_INVALID_CONFIG = 10052
    """The stream configuration is invalid (e.g. async persist mode with atomic batches)."""
    STREAM_NAME_IN_USE = 10058
    """A stream of this name exists with another configuration."""
    STREAM_NOT_FOUND = 10059
    """No stream of this name."""
    WRONG_LAST_SEQUENCE = 10071
    """An expected-sequence check failed: ``wrong last sequence: <actual>``."""
    REPLICAS_NOT_SUPPORTED = 10074
    """More than one replica asked of a server that is not in a JetStream cluster."""
    STREAM_MOVE_IN_PROGRESS = 10124
    """A stream is still moving to the peers of an earlier placement change."""
    ATOMIC_PUBLISH_DISABLED = 10174
    """A batch was sent to a stream without ``allow_atomic``."""
    BATCH_TOO_LARGE = 10199
    """An atomic batch holds more messages than the server allows (1000 by default)."""
    BATCH_DUPLICATE_MSG_ID = 10201
    """An atomic batch repeats a stored message id (a resent batch that was committed)."""
