"""Aggregates as subject trees: ``<root>.<aggregate_id>.<tail...>``, appended with a CAS chain.

This is the store's async primitive for services that choose their own subjects (the
workflow engine names events ``ja.wf.<id>.StepScheduled.tools`` so that workers filter
server-side). It knows nothing of what the events mean.

Every append carries ``Nats-Expected-Last-Subject-Sequence: <n>`` with
``Nats-Expected-Last-Subject-Sequence-Subject: <root>.<id>.>`` — the aggregate's last
message must still be the one the writer folded (docs/ARCHITECTURE.md §5.1, option 2). ``n = 0``
creates the aggregate: a second "first" write can never succeed, whatever the dedup
window. One message is one write, so an append needs no atomic batch (on an R1 file
stream a batch costs ~2 ms of server-side staging); several messages are sent as one
atomic batch only when asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from jetagent.errors import JetagentError
from jetagent.jetstream._direct import DirectGetter, Record
from jetagent.jetstream._errors import StoreUnavailableError, WriteTooLargeError
from jetagent.jetstream._writes import (
    DUPLICATE_IN_BATCH,
    MSG_ID,
    WRONG_LAST_SEQUENCE,
    Message,
    actual_sequence,
    write,
)

__all__ = ["AggregateStream", "Appended", "ConcurrencyConflict", "NewRecord"]

_H_EXPECT_SUBJ_SEQ = "Nats-Expected-Last-Subject-Sequence"
_H_EXPECT_SUBJ = "Nats-Expected-Last-Subject-Sequence-Subject"
_MAX_BATCH = 1000


class ConcurrencyConflict(JetagentError):
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
                headers[MSG_ID] = write_id
            messages.append(Message(self.subject(aggregate_id, record.tail), record.data, headers))

        async def landed() -> Appended | None:
            return await self._landed(aggregate_id, first.tail, write_id, len(messages))

        outcome = await write(
            self.nc,
            messages,
            timeout=self._timeout,
            deadline_s=self._deadline,
            landed=landed,
            what=f"append to {aggregate_id} on stream {self.stream!r}",
        )
        if isinstance(outcome, Appended):
            return outcome
        if outcome.error is None:
            return Appended(list(range(outcome.seq - len(messages) + 1, outcome.seq + 1)))
        if outcome.error.err_code in (WRONG_LAST_SEQUENCE, DUPLICATE_IN_BATCH):
            # A retry of a write that did land is refused like a conflict: look first.
            found = await landed()
            if found is not None:
                return found
            actual = actual_sequence(outcome.error.description)
            raise ConcurrencyConflict(aggregate_id, expected_seq, actual)
        raise StoreUnavailableError(
            f"stream {self.stream!r} refused an append to {aggregate_id}: "
            f"{outcome.error.description} (error {outcome.error.err_code})"
        )

    async def _landed(
        self, aggregate_id: str, tail: str, write_id: str, count: int
    ) -> Appended | None:
        try:
            record = await self.reader.last(self.subject(aggregate_id, tail))
        except StoreUnavailableError:
            return None
        if record is None or record.headers.get(MSG_ID) != write_id:
            return None
        return Appended(list(range(record.seq, record.seq + count)))

    async def read(self, aggregate_id: str, *, after_seq: int = 0) -> list[Record]:
        """The aggregate's messages after ``after_seq``, in order."""
        return await self.reader.scan(f"{self.root}.{aggregate_id}.>", start_seq=after_seq + 1)

    async def last(self, aggregate_id: str) -> Record | None:
        return await self.reader.last(f"{self.root}.{aggregate_id}.>")
