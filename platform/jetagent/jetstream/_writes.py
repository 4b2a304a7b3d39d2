"""The one way jetagent writes to a stream: a single message or an atomic batch, with
its expected-sequence checks, retried through outages without writing anything twice.

- One message is one publish; several are one JetStream atomic batch (ADR-50): all or
  nothing, at most :data:`MAX_BATCH` messages, and every check in it sees the stream as
  it was before the batch.
- A message may carry an expected-last-subject-sequence check on its own subject or on
  a filter (:meth:`Message.expect_last`); the write may carry an expected last sequence
  of the whole stream.
- :func:`write` marks its first message with a fresh ``Nats-Msg-Id``. When an
  acknowledgement does not come (timeout, a connection that died), it looks at the
  first message's subject: if the newest message there carries the write's id, the
  write landed and its sequences are known; otherwise it is sent again, until the
  deadline. A retry of a write that did land is refused as a conflict (the check runs
  before dedup, §5.2), so a refusal is believed only after the stream's *leader* says
  the write is not there: a follower that is behind would not know it (§5.8).
- "No responders" (nats-server's 503: the stream has no leader, it is electing one,
  §5.14) means nothing was stored: the write is sent again at once, with the same id.
- :func:`write_once` stores a message on a subject that must still be empty; finding
  it taken is an answer, not an error.
- :func:`publish` sends a message without checks (idempotent by its ``Nats-Msg-Id``, or
  by nature, as a key-value put: :func:`kv_put`) the same way, through elections.

Both the platform's :class:`~jetagent.jetstream.AggregateStream` and the eventsourcing
store (:mod:`jetagent.store`) write through :func:`write`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from jetagent.jetstream._direct import DirectGetter, Record
from jetagent.jetstream._errors import (
    ConcurrencyConflict,
    JetStreamUnavailableError,
    StreamConfigError,
    WriteTooLargeError,
)
from jetagent.jetstream.headers import ErrorCode, Header

__all__ = ["MAX_BATCH", "Appended", "Message", "kv_put", "publish", "write", "write_once"]

MAX_BATCH = 1000
"""nats-server's default limit on the messages of one atomic batch."""

_RETRY_PAUSE_S = 0.05
_NO_LEADER_PAUSE_S = 0.1
"""Pause between tries while a stream elects a leader (4-9 s after a node's death)."""
_CONFLICTS = (ErrorCode.WRONG_LAST_SEQUENCE, ErrorCode.BATCH_DUPLICATE_MSG_ID)
_UNANSWERED = (
    NatsTimeoutError,
    ConnectionClosedError,
    OSError,
    msgspec.DecodeError,  # an empty or foreign reply: no acknowledgement came
)
"""No answer: the write may or may not have been stored."""


@dataclass(slots=True)
class Message:
    """One message of a write."""

    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def expect_last(self, seq: int, *, on: str | None = None) -> Message:
        """Store the write only if the last message on ``on`` (a subject filter; by
        default this message's subject) has sequence ``seq`` (``0``: none yet)."""
        self.headers[Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(seq)
        if on is not None:
            self.headers[Header.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT] = on
        return self


@dataclass(slots=True)
class Appended:
    """The stream sequences a write's messages got, in order."""

    seqs: list[int]

    @property
    def last(self) -> int:
        """The sequence of the write's last message."""
        return self.seqs[-1]

    @classmethod
    def run(cls, first: int, count: int) -> Appended:
        """``count`` consecutive sequences from ``first`` (a batch is stored contiguously)."""
        return cls(list(range(first, first + count)))


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


async def _publish(nc: NATS, messages: list[Message], timeout: float) -> _PubAck:
    if len(messages) == 1:
        m = messages[0]
        reply = await nc.request(m.subject, m.data, timeout=timeout, headers=m.headers)
        return _decode_ack(reply.data)
    # An atomic batch: publish 1..n-1, request the commit with the last (ADR-50;
    # docs/ARCHITECTURE.md §5.3).
    batch_id = uuid.uuid4().hex
    for i, m in enumerate(messages, start=1):
        m.headers[Header.BATCH_ID] = batch_id
        m.headers[Header.BATCH_SEQUENCE] = str(i)
    for m in messages[:-1]:
        await nc.publish(m.subject, m.data, headers=m.headers)
    last = messages[-1]
    last.headers[Header.BATCH_COMMIT] = "1"
    reply = await nc.request(last.subject, last.data, timeout=timeout, headers=last.headers)
    return _decode_ack(reply.data)


async def write(
    nc: NATS,
    messages: Sequence[Message],
    *,
    reader: DirectGetter,
    timeout: float,
    deadline_s: float,
    what: str,
    expected_last_seq: int | None = None,
) -> Appended:
    """Store ``messages`` as one write (all or nothing) and return their sequences.

    ``reader`` reads the stream written to (to recognise a landed write);
    ``expected_last_seq`` makes the write depend on the stream's last sequence; ``what``
    names the write in errors ("append to w1 on stream 'JA_WORKFLOWS'").

    Raises :class:`ConcurrencyConflict` when a check failed, :class:`WriteTooLargeError`
    for more than :data:`MAX_BATCH` messages, :class:`StreamConfigError` when the
    stream cannot take atomic batches, and :class:`JetStreamUnavailableError` when no
    attempt was acknowledged within ``deadline_s`` or the stream refused otherwise.
    """
    batch = list(messages)
    if not batch:
        return Appended([])
    if len(batch) > MAX_BATCH:
        raise WriteTooLargeError(
            f"one atomic write may hold at most {MAX_BATCH} messages; this one has "
            f"{len(batch)} (split the work, or raise the server's "
            "jetstream.limits.batch.max_size)"
        )
    first = batch[0]
    write_id = uuid.uuid4().hex
    first.headers[Header.MSG_ID] = write_id
    if expected_last_seq is not None:
        first.headers[Header.EXPECTED_LAST_SEQUENCE] = str(expected_last_seq)

    def ours(record: Record | None) -> Appended | None:
        if record is None or record.headers.get(Header.MSG_ID) != write_id:
            return None
        return Appended.run(record.seq, len(batch))

    async def landed() -> Appended | None:
        # A quick look at any replica between tries: found, it is proof; not found, the
        # write is sent again (and a refusal of that is checked with the leader below).
        try:
            return ours(await reader.last(first.subject))
        except JetStreamUnavailableError:
            return None

    ack = await _send(nc, batch, timeout=timeout, deadline_s=deadline_s, what=what, landed=landed)
    if isinstance(ack, Appended):
        return ack
    if ack.error is None:
        return Appended.run(ack.seq - len(batch) + 1, len(batch))
    if ack.error.err_code in _CONFLICTS:
        # A retry of a write that did land (its ack was lost, or the client resent it
        # after reconnecting) is refused like a conflict: only the leader can say it
        # is not there (raises JetStreamUnavailableError when it cannot be asked).
        found = ours(await reader.confirmed_last(first.subject))
        if found is not None:
            return found
        raise ConcurrencyConflict(
            f"could not {what}: {ack.error.description}",
            actual=actual_sequence(ack.error.description),
        )
    raise _refused(ack.error, what)


async def write_once(
    nc: NATS, message: Message, *, timeout: float, deadline_s: float, what: str
) -> bool:
    """Store ``message`` only if its subject holds no message yet; return whether this
    call stored it (``False``: the subject was taken, by an earlier try of this very
    write whose acknowledgement was lost, or by another writer).

    No ``Nats-Msg-Id`` is set: the subject alone makes the write unique, and an id that
    anyone could forge would let a stranger's message make this one a "duplicate".
    """
    message.expect_last(0)
    ack = await _send(nc, [message], timeout=timeout, deadline_s=deadline_s, what=what)
    assert isinstance(ack, _PubAck)  # nothing to look for: every answer is an ack
    if ack.error is None:
        return True
    if ack.error.err_code == ErrorCode.WRONG_LAST_SEQUENCE:
        return False
    raise _refused(ack.error, what)


async def _send(
    nc: NATS,
    messages: list[Message],
    *,
    timeout: float,
    deadline_s: float,
    what: str,
    landed: Callable[[], Awaitable[Appended | None]] | None = None,
    no_leader: Callable[[], Awaitable[None]] | None = None,
) -> _PubAck | Appended:
    """Publish until an acknowledgement comes, or until ``landed()`` finds that an
    unanswered attempt was stored after all; give up after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await _publish(nc, messages, timeout)
        except NoRespondersError as exc:
            # The stream has no leader (electing): nothing was stored; send it again.
            if no_leader is not None:
                check, no_leader = no_leader, None
                await check()
            pause: float = _NO_LEADER_PAUSE_S
            failure: Exception = exc
        except _UNANSWERED as exc:
            found = None if landed is None else await landed()
            if found is not None:
                return found
            pause, failure = _RETRY_PAUSE_S, exc
        except NatsError as exc:
            raise JetStreamUnavailableError(f"could not {what}: {exc}") from exc
        if time.monotonic() > deadline:
            raise JetStreamUnavailableError(
                f"could not {what} within {deadline_s:.0f} s ({type(failure).__name__}; "
                "is the stream electing a leader, or the server unreachable?)"
            ) from failure
        await asyncio.sleep(pause)


async def publish(
    nc: NATS,
    message: Message,
    *,
    timeout: float,
    deadline_s: float,
    what: str,
    no_leader: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Store ``message`` (no checks) and return its sequence, retrying through
    elections and reconnects until ``deadline_s``. A retry may store it again unless it
    carries a ``Nats-Msg-Id`` (deduplicated) or storing it twice is harmless.

    ``no_leader`` is awaited once, at the first "no responders" (no stream leader, or
    no stream at all): it may raise to stop at once (the stream does not exist)."""
    ack = await _send(
        nc, [message], timeout=timeout, deadline_s=deadline_s, what=what, no_leader=no_leader
    )
    assert isinstance(ack, _PubAck)  # nothing to look for: every answer is an ack
    if ack.error is not None:
        raise _refused(ack.error, what)
    return ack.seq


async def kv_put(
    nc: NATS,
    bucket: str,
    key: str,
    value: bytes,
    *,
    timeout: float = 2.0,
    deadline_s: float = 30.0,
) -> int:
    """Put ``value`` under ``key`` in the key-value ``bucket`` (a publish to
    ``$KV.<bucket>.<key>``, as nats-py's ``KeyValue.put``), retried through elections;
    return the revision. A put repeated by a retry only adds a revision."""
    return await publish(
        nc,
        Message(f"$KV.{bucket}.{key}", value),
        timeout=timeout,
        deadline_s=deadline_s,
        what=f"put {key} in bucket {bucket}",
    )


def _refused(error: _ApiError, what: str) -> Exception:
    text = f"could not {what}: {error.description} (error {error.err_code})"
    if error.err_code == ErrorCode.BATCH_TOO_LARGE:
        return WriteTooLargeError(text)
    if error.err_code in (ErrorCode.ATOMIC_PUBLISH_DISABLED, ErrorCode.STREAM_INVALID_CONFIG):
        return StreamConfigError(text)
    return JetStreamUnavailableError(text)


def actual_sequence(description: str) -> int | None:
    """The sequence a "wrong last sequence: N" refusal reports."""
    try:
        return int(description.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
