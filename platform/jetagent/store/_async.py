"""The event store on one JetStream stream, as async methods (the store's core).

The synchronous eventsourcing recorders in ``_recorders`` call these methods on a private
event-loop thread; asyncio code calls them directly. Writes are ``_writer``'s (events,
snapshots and tracking records, and the checks that make them exclusive); reads are
here: one aggregate by batched direct get, the notification log by pages of direct get,
live notifications from an ordered consumer. Every method raises only the store's errors
(``_errors``), translated from the JetStream primitives' at this boundary.

On a replicated stream any replica answers a direct get, and one that is behind answers
with less (docs/ARCHITECTURE.md §5.8). ``select_events`` reads an aggregate at least up
to the last event this store wrote for it (read-your-writes in a process); events another
process wrote a moment ago may be missing from it, and a decision on that view fails its
write's version check (the store's writes are all checked by the server) instead of
overwriting anything. The newest tracking record, which decides where a follower
resumes, is read from the stream's leader.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

from eventsourcing.persistence import Notification, StoredEvent, Tracking
from nats.aio.client import Client as NATS

from jetagent.jetstream import DirectGetter, Record, ensure_stream, follow
from jetagent.store._errors import translated
from jetagent.store._settings import StoreSettings
from jetagent.store._subjects import TRACKING_HEADER, SubjectLayout
from jetagent.store._writer import Writer

__all__ = ["EVENTS", "SNAPSHOTS", "AsyncStore"]

EVENTS = "e"
SNAPSHOTS = "s"
_WRITTEN_KEPT = 10_000
"""Aggregates whose last written sequence a store remembers (read-your-writes)."""


class AsyncStore:
    """An application's records on one stream: aggregate events, snapshots, tracking."""

    def __init__(self, nc: NATS, settings: StoreSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.layout = SubjectLayout(settings.root)
        self._reader = DirectGetter(nc, settings.stream, timeout=settings.request_timeout)
        self._writer = Writer(nc, settings, self.layout, self._reader)
        self._written: OrderedDict[tuple[str, str], int] = OrderedDict()
        """(kind, originator) → the sequence of the last record this store wrote for it."""
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def open(self) -> None:
        """Make sure the stream exists and fits; idempotent."""
        if self._opened:
            return
        async with self._open_lock:
            if self._opened:
                return
            with translated:
                await ensure_stream(
                    self.nc,
                    self.settings.stream_config(),
                    create=self.settings.create_stream,
                    timeout=self.settings.request_timeout,
                )
                await self._reader.open()
            self._opened = True

    async def close(self) -> None:
        """Stop reading; the connection stays the caller's."""
        await self._reader.close()
        self._opened = False

    # ----------------------------------------------------------------- writes

    async def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        tracking: Tracking | None = None,
        kind: str = EVENTS,
    ) -> list[int]:
        """Write events (and a tracking record) atomically; return their sequences."""
        if not stored_events and tracking is None:
            return []
        await self.open()
        with translated:
            if tracking is None:
                seqs = await self._writer.insert(stored_events, kind)
            else:
                seqs = await self._writer.insert_tracked(stored_events, tracking, kind)
        for event, seq in zip(stored_events, seqs, strict=False):
            key = (kind, str(event.originator_id))
            self._written[key] = max(seq, self._written.get(key, 0))
            self._written.move_to_end(key)
        while len(self._written) > _WRITTEN_KEPT:
            self._written.popitem(last=False)
        return seqs

    async def insert_tracking(self, tracking: Tracking) -> None:
        """Record that ``tracking``'s notification was processed (no events)."""
        await self.insert_events((), tracking=tracking)

    # ------------------------------------------------------------------ reads

    async def select_events(
        self,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
        kind: str = EVENTS,
    ) -> list[StoredEvent]:
        """One aggregate's records, by version."""
        await self.open()
        layout = self.layout
        subject_filter = layout.originator_filter(kind, originator_id)
        written = self._written.get((kind, str(originator_id)), 0)
        with translated:
            if desc and limit == 1 and lte is None and gt is None:
                record = await self._reader.last(subject_filter, need=written)
                return [] if record is None else [self._stored_event(record, originator_id)]
            start = 1
            if gt is not None:
                # Skip what precedes version gt (e.g. the events a snapshot covers).
                anchor = await self._reader.last(layout.version_filter(kind, originator_id, gt))
                if anchor is not None:
                    start = anchor.seq + 1
            records = await self._reader.scan(subject_filter, start_seq=start, need=written)
        events = [self._stored_event(r, originator_id) for r in records]
        if gt is not None:
            events = [e for e in events if e.originator_version > gt]
        if lte is not None:
            events = [e for e in events if e.originator_version <= lte]
        events.sort(key=_version, reverse=desc)
        return events if limit is None else events[:limit]

    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        """Events in stream order: notification ids are stream sequences."""
        await self.open()
        if start is None:
            first = 1
        else:
            first = start if inclusive_of_start else start + 1
        first = max(first, 1)
        if limit <= 0 or (stop is not None and stop < first):
            return []
        layout = self.layout
        wanted = set(topics)
        if len(wanted) == 1:
            subject_filter = layout.topic_filter(EVENTS, next(iter(wanted)))
        else:
            subject_filter = layout.kind_filter(EVENTS)
        out: list[Notification] = []
        seq = first
        while len(out) < limit:
            page = min(max(limit - len(out), 16), 1000)
            with translated:
                records = await self._reader.scan(
                    subject_filter, start_seq=seq, page=page, until=lambda r: True
                )
            if not records:
                break
            for record in records:
                if stop is not None and record.seq > stop:
                    return out
                notification = self._notification(record)
                if wanted and notification.topic not in wanted:
                    continue
                out.append(notification)
                if len(out) == limit:
                    return out
            seq = records[-1].seq + 1
            if len(records) < page:
                break
        return out

    async def max_notification_id(self) -> int | None:
        """The newest notification id (the stream sequence of the newest event)."""
        await self.open()
        with translated:
            record = await self._reader.last(self.layout.kind_filter(EVENTS))
        return None if record is None else record.seq

    async def max_tracking_id(self, application_name: str) -> int | None:
        """The newest tracking id recorded for an upstream application (from the stream's
        leader: where a follower resumes must not come from a replica that is behind)."""
        await self.open()
        with translated:
            record = await self._reader.leader_last(self.layout.tracking_filter(application_name))
        if record is None:
            return None
        return int(record.headers[TRACKING_HEADER])

    async def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> AsyncIterator[Notification]:
        """Events after ``gt``, then new ones as they are written (an ordered consumer)."""
        await self.open()
        wanted = set(topics)
        records = follow(
            self.nc, self.settings.stream, self.layout.kind_filter(EVENTS), after_seq=gt or 0
        )
        try:
            with translated:
                async for record in records:
                    notification = self._notification(record)
                    if wanted and notification.topic not in wanted:
                        continue
                    yield notification
        finally:
            await records.aclose()

    def _stored_event(self, record: Record, originator_id: uuid.UUID | str) -> StoredEvent:
        _, _, version, topic = self.layout.parse(record.subject)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=version,
            topic=topic,
            state=record.data,
        )

    def _notification(self, record: Record) -> Notification:
        _, originator_id, version, topic = self.layout.parse(record.subject)
        return Notification(
            id=record.seq,
            originator_id=originator_id,
            originator_version=version,
            topic=topic,
            state=record.data,
        )


def _version(event: StoredEvent) -> int:
    return event.originator_version
