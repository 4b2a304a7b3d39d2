"""Aggregates as subject trees: ``<root>.<aggregate_id>.<tail...>``, appended with a CAS chain.

The platform's primitive for services that choose their own subjects (the workflow
engine names events ``ja.wf.<id>.StepScheduled.tools`` so that workers filter
server-side). It knows nothing of what the events mean, and writes through the one
write path (``_writes``).

Every append carries ``Nats-Expected-Last-Subject-Sequence: <n>`` with
``Nats-Expected-Last-Subject-Sequence-Subject: <root>.<id>.>`` — the aggregate's last
message must still be the one the writer folded (docs/ARCHITECTURE.md §5.1, option 2). ``n = 0``
creates the aggregate: a second "first" write can never succeed, whatever the dedup
window. One message is one write, so an append needs no atomic batch (on an R1 file
stream a batch costs ~2 ms of server-side staging); several messages are sent as one
atomic batch only when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from jetagent.jetstream._direct import DirectGetter, Record
from jetagent.jetstream._errors import ConcurrencyConflict
from jetagent.jetstream._writes import Appended, Message, write

__all__ = ["AggregateStream", "Appended", "NewRecord"]

_WRITE_TRY_S = 2.0


@dataclass(slots=True)
class NewRecord:
    """A message to append: subject tail after ``<root>.<id>.``, body, extra headers."""

    tail: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


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
        """Start reading (the direct-get inbox)."""
        await self.reader.open()

    async def close(self) -> None:
        """Stop reading."""
        await self.reader.close()

    def subject(self, aggregate_id: str, tail: str) -> str:
        """The subject of an aggregate's message: ``<root>.<aggregate_id>.<tail>``."""
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
        messages = [
            Message(self.subject(aggregate_id, r.tail), r.data, dict(r.headers)) for r in records
        ]
        if messages:
            # The check sees the stream before the write: it belongs on the first message.
            messages[0].expect_last(expected_seq, on=f"{self.root}.{aggregate_id}.>")
        try:
            return await write(
                self.nc,
                messages,
                reader=self.reader,
                # Short tries: a write sent on a connection that just died is never
                # answered, and the next try goes out on the new one.
                timeout=min(self._timeout, _WRITE_TRY_S),
                deadline_s=self._deadline,
                what=f"append to {aggregate_id} on stream {self.stream!r}",
            )
        except ConcurrencyConflict as exc:
            actual = exc.actual
            raise ConcurrencyConflict(
                f"aggregate {aggregate_id} is no longer at sequence {expected_seq}"
                + (f" (it is at {actual})" if actual is not None else ""),
                actual=actual,
                aggregate_id=aggregate_id,
                expected=expected_seq,
            ) from None

    async def read(self, aggregate_id: str, *, after_seq: int = 0, need: int = 0) -> list[Record]:
        """The aggregate's messages after ``after_seq``, in order; with ``need``, at least
        up to that sequence (a replica that is behind is not believed, §5.8)."""
        return await self.reader.scan(
            f"{self.root}.{aggregate_id}.>", start_seq=after_seq + 1, need=need
        )

    async def last(self, aggregate_id: str) -> Record | None:
        """The aggregate's newest message, if any, as a replica knows it."""
        return await self.reader.last(f"{self.root}.{aggregate_id}.>")

    async def head(self, aggregate_id: str) -> int:
        """The sequence of the aggregate's newest message as the stream's leader knows
        it (``0``: none): what a read must reach before it may conclude "nothing more"."""
        record = await self.reader.leader_last(f"{self.root}.{aggregate_id}.>")
        return 0 if record is None else record.seq
