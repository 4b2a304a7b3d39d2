"""Aggregates as subject trees: ``<root>.<aggregate_id>.<tail...>``, appended with a CAS chain.

This is the store's async primitive for services that choose their own subjects (the
workflow engine names events ``ja.wf.<id>.StepScheduled.tools`` so that workers filter
server-side). It knows nothing of what the events mean.

Every append carries ``Nats-Expected-Last-Subject-Sequence: <n>`` with
``Nats-Expected-Last-Subject-Sequence-Subject: <root>.<id>.>`` — the aggregate's last
message must still be the one the writer folded (JETSTREAM-FACTS.md, option 2). ``n = 0``
creates the aggregate: a second "first" write can never succeed, whatever the dedup
window. One message is one write, so an append needs no atomic batch (on an R1 file
stream a batch costs ~2 ms of server-side staging); several messages are sent as one
atomic batch only when asked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from ._direct import DirectGetter, Record
from ._errors import StoreUnavailableError, WriteTooLargeError

__all__ = ["AggregateStream", "Appended", "ConcurrencyConflict", "NewRecord"]

_H_EXPECT_SUBJ_SEQ = "Nats-Expected-Last-Subject-Sequence"
_H_EXPECT_SUBJ = "Nats-Expected-Last-Subject-Sequence-Subject"
_H_MSG_ID = "Nats-Msg-Id"
_WRONG_LAST_SEQUENCE = 10071
_DUPLICATE_IN_BATCH = 10201
_MAX_BATCH = 1000


class ConcurrencyConflict(Exception):
    """The aggregate moved on since the writer's view; ``actual`` is its last sequence."""

    def __init__(self, aggregate_id: str, expected: int, actual: int | None) -> None:
        super().__init__(
            f"aggregate {aggregate_id} is no longer at sequence {expected}"
            + (f" (it is at {actual})" if actual is not None else "")
        )
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual


@dataclass(slots=True)
class NewRecord:
    """A message to append: subject tail after ``<root>.<id>.``, body, extra headers."""

    tail: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Appended:
    seqs: list[int]

    @property
    def last(self) -> int:
        return self.seqs[-1]


class _ApiError(msgspec.Struct):
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


class AggregateStream:
    """Append to and read aggregates under one subject root of one stream."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        root: str,
        request_timeout: float = 5.0,
        write_deadline: float = 30.0,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.root = root
        self._timeout = request_timeout
        self._deadline = write_deadline
        self.reader = DirectGetter(nc, stream, timeout=request_timeout)

    async def open(self) -> None:
        await self.reader.open()

    async def close(self) -> None:
        await self.reader.close()

    def subject(self, aggregate_id: str, tail: str) -> str:
        return f"{self.root}.{aggregate_id}.{tail}"

    async def append(
        self,
        aggregate_id: str,
        records: Sequence[NewRecord],
        *,
        expected_seq: int,
    ) -> Appended:
        """Append ``records`` if the aggregate's last message is still ``expected_seq``.

        Raises :class:`ConcurrencyConflict` when another writer got there first. A write
        whose acknowledgement was lost is recognised by its msg id and not repeated.
        """
        if not records:
            return Appended([])
        if len(records) > _MAX_BATCH:
            raise WriteTooLargeError(f"an append may hold at most {_MAX_BATCH} messages")
        write_id = uuid.uuid4().hex
        first = records[0]
        messages = []
        for i, record in enumerate(records):
            headers = dict(record.headers)
            if i == 0:
                headers[_H_EXPECT_SUBJ_SEQ] = str(expected_seq)
                headers[_H_EXPECT_SUBJ] = f"{self.root}.{aggregate_id}.>"
                headers[_H_MSG_ID] = write_id
            messages.append((self.subject(aggregate_id, record.tail), record.data, headers))
        deadline = time.monotonic() + self._deadline
        while True:
            try:
                ack = await self._publish(messages)
            except (NatsTimeoutError, NoRespondersError, ConnectionClosedError, OSError) as exc:
                landed = await self._landed(aggregate_id, first.tail, write_id, len(messages))
                if landed is not None:
                    return landed
                if time.monotonic() > deadline:
                    raise StoreUnavailableError(
                        f"could not append to {aggregate_id} on stream {self.stream!r} "
                        f"within {self._deadline:.0f} s ({type(exc).__name__})"
                    ) from exc
                await asyncio.sleep(0.05)
                continue
            except NatsError as exc:
                raise StoreUnavailableError(f"append to {aggregate_id} failed: {exc}") from exc
            if ack.error is None:
                return Appended(list(range(ack.seq - len(messages) + 1, ack.seq + 1)))
            if ack.error.err_code in (_WRONG_LAST_SEQUENCE, _DUPLICATE_IN_BATCH):
                landed = await self._landed(aggregate_id, first.tail, write_id, len(messages))
                if landed is not None:
                    return landed
                actual = _actual_sequence(ack.error.description)
                raise ConcurrencyConflict(aggregate_id, expected_seq, actual)
            raise StoreUnavailableError(
                f"stream {self.stream!r} refused an append to {aggregate_id}: "
                f"{ack.error.description} (error {ack.error.err_code})"
            )

    async def _publish(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> _PubAck:
        nc = self.nc
        if len(messages) == 1:
            subject, data, headers = messages[0]
            reply = await nc.request(subject, data, timeout=self._timeout, headers=headers)
            return _decode_ack(reply.data)
        batch_id = uuid.uuid4().hex
        for i, (subject, data, headers) in enumerate(messages[:-1], start=1):
            headers["Nats-Batch-Id"] = batch_id
            headers["Nats-Batch-Sequence"] = str(i)
            await nc.publish(subject, data, headers=headers)
        subject, data, headers = messages[-1]
        headers.update(
            {
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(len(messages)),
                "Nats-Batch-Commit": "1",
            }
        )
        reply = await nc.request(subject, data, timeout=self._timeout, headers=headers)
        return _decode_ack(reply.data)

    async def _landed(
        self, aggregate_id: str, tail: str, write_id: str, count: int
    ) -> Appended | None:
        try:
            record = await self.reader.last(self.subject(aggregate_id, tail))
        except StoreUnavailableError:
            return None
        if record is None or record.headers.get(_H_MSG_ID) != write_id:
            return None
        return Appended(list(range(record.seq, record.seq + count)))

    async def read(self, aggregate_id: str, *, after_seq: int = 0) -> list[Record]:
        """The aggregate's messages after ``after_seq``, in order."""
        return await self.reader.scan(f"{self.root}.{aggregate_id}.>", start_seq=after_seq + 1)

    async def last(self, aggregate_id: str) -> Record | None:
        return await self.reader.last(f"{self.root}.{aggregate_id}.>")


def _actual_sequence(description: str) -> int | None:
    # "wrong last sequence: 16001"
    try:
        return int(description.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
