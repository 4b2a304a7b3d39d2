"""The event store on one JetStream stream, as async methods (the store's core).

The synchronous eventsourcing recorders in ``_recorders`` call these methods on a private
event-loop thread; jetagent's async services call them directly.

Writes:

- a write of one message (one event, or a tracking record alone) is a plain publish:
  a single message is stored or not, so it needs no batch;
- a write of several messages is one JetStream atomic batch (all or nothing);
- every event carries "no event with this version yet" as an expected-last-subject-
  sequence check on ``<root>.<kind>.<originator>.<version>.>``;
- a write with a tracking record also carries ``Nats-Expected-Last-Sequence`` (nothing
  else was written since the stream position this store last saw), which makes the
  store's knowledge of the newest tracking id exact, so "tracking ids only grow" is
  checked without a read; the tracking upstream is the last subject token;
- the first message carries ``Nats-Msg-Id`` = a write id, so a write whose
  acknowledgement was lost is recognised as landed (docs/ARCHITECTURE.md §5.2: the concurrency
  check runs before dedup, so a blind retry would report a false conflict).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from eventsourcing.persistence import Notification, StoredEvent, Tracking
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy

from jetagent.jetstream._direct import DirectGetter, Record
from jetagent.jetstream._errors import StoreConflictError, StoreUnavailableError, WriteTooLargeError
from jetagent.jetstream._streams import ensure_stream, load_definition
from jetagent.jetstream._writes import (
    DUPLICATE_IN_BATCH,
    MSG_ID,
    WRONG_LAST_SEQUENCE,
    Message,
    write,
)
from jetagent.store._subjects import SubjectLayout

__all__ = ["AsyncStore", "StoreSettings"]

EVENTS = "e"
SNAPSHOTS = "s"
MAX_BATCH = 1000  # nats-server's default limit on messages in one atomic batch
TRACKING_HEADER = "Ja-Tracking-Id"
_H_EXPECT_SUBJ_SEQ = "Nats-Expected-Last-Subject-Sequence"
_H_EXPECT_SUBJ = "Nats-Expected-Last-Subject-Sequence-Subject"
_H_EXPECT_SEQ = "Nats-Expected-Last-Sequence"


@dataclass(frozen=True, kw_only=True)
class StoreSettings:
    """Where and how one application's records are stored."""

    stream: str
    """The JetStream stream holding the application's records."""
    root: str
    """Subject prefix of the records (see ``_subjects``)."""
    replicas: int = 1
    """Stream replicas when the store creates the stream (3 in a cluster)."""
    create_stream: bool = True
    """Create the stream on first use when it is missing."""
    request_timeout: float = 5.0
    """Seconds to wait for one acknowledgement or read."""
    write_deadline: float = 30.0
    """Seconds a write keeps retrying through server restarts and leader elections."""

    def stream_config(self) -> dict[str, Any]:
        config = load_definition("eventstore")
        config.update(name=self.stream, subjects=[f"{self.root}.>"], num_replicas=self.replicas)
        return config


class AsyncStore:
    """An application's records on one stream: aggregate events, snapshots, tracking."""

    def __init__(self, nc: NATS, settings: StoreSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.layout = SubjectLayout(settings.root)
        self._reader = DirectGetter(nc, settings.stream, timeout=settings.request_timeout)
        self._opened = False
        self._open_lock = asyncio.Lock()
        # Tracked writes are serialised: they compare-and-set the stream position.
        self._tracked_write = asyncio.Lock()
        self._last_seq: int | None = None
        self._max_tracking: dict[str, int | None] = {}

    async def open(self) -> None:
        """Make sure the stream exists and fits; idempotent."""
        if self._opened:
            return
        async with self._open_lock:
            if self._opened:
                return
            await ensure_stream(
                self.nc,
                self.settings.stream_config(),
                create=self.settings.create_stream,
                timeout=self.settings.request_timeout,
            )
            await self._reader.open()
            self._opened = True

    async def close(self) -> None:
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
        self._check_unique(stored_events)
        messages = self._messages(stored_events, tracking, kind)
        if len(messages) > MAX_BATCH:
            raise WriteTooLargeError(
                f"one atomic write may hold at most {MAX_BATCH} messages; this one has "
                f"{len(messages)} (split the work into smaller aggregates or commands, or "
                "raise the server's jetstream.limits.batch.max_size)"
            )
        if tracking is None:
            seqs = await self._write(messages, stored_events, tracking, kind)
        else:
            async with self._tracked_write:
                seqs = await self._write_tracked(messages, stored_events, tracking, kind)
        return seqs[: len(stored_events)]

    def _check_unique(self, stored_events: Sequence[StoredEvent]) -> None:
        seen = set()
        for event in stored_events:
            key = (str(event.originator_id), event.originator_version)
            if key in seen:
                raise StoreConflictError(
                    f"the write holds version {event.originator_version} of "
                    f"{event.originator_id} twice"
                )
            seen.add(key)

    def _messages(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking | None, kind: str
    ) -> list[Message]:
        layout = self.layout
        messages = []
        last = len(stored_events) - 1
        for i, event in enumerate(stored_events):
            upstream = tracking.application_name if tracking and i == last else None
            headers = {
                _H_EXPECT_SUBJ_SEQ: "0",
                _H_EXPECT_SUBJ: layout.version_filter(
                    kind, event.originator_id, event.originator_version
                ),
            }
            if upstream is not None and tracking is not None:
                headers[TRACKING_HEADER] = str(tracking.notification_id)
            subject = layout.record(
                kind, event.originator_id, event.originator_version, event.topic, upstream
            )
            messages.append(Message(subject, event.state, headers))
        if tracking is not None and not stored_events:
            messages.append(
                Message(
                    layout.tracking_marker(tracking.application_name),
                    b"",
                    {TRACKING_HEADER: str(tracking.notification_id)},
                )
            )
        messages[0].headers[MSG_ID] = uuid.uuid4().hex
        return messages

    async def _write_tracked(
        self,
        messages: list[Message],
        stored_events: Sequence[StoredEvent],
        tracking: Tracking,
        kind: str,
    ) -> list[int]:
        upstream = tracking.application_name
        deadline = time.monotonic() + self.settings.write_deadline
        while True:
            current = await self._cached_max_tracking(upstream)
            if current is not None and tracking.notification_id <= current:
                raise StoreConflictError(
                    f"tracking record {upstream}:{tracking.notification_id} is not after "
                    f"the newest one recorded ({current})"
                )
            if self._last_seq is None:
                self._last_seq = await self._stream_last_seq()
            messages[0].headers[_H_EXPECT_SEQ] = str(self._last_seq)
            try:
                seqs = await self._write(messages, stored_events, tracking, kind)
            except _StalePosition:
                # Someone else wrote: refresh what this store knows, then decide again.
                self._last_seq = None
                self._max_tracking.pop(upstream, None)
                if time.monotonic() > deadline:
                    raise StoreUnavailableError(
                        "a tracked write kept losing the race for the stream position"
                    ) from None
                continue
            self._max_tracking[upstream] = tracking.notification_id
            return seqs

    async def _cached_max_tracking(self, upstream: str) -> int | None:
        if upstream not in self._max_tracking:
            self._max_tracking[upstream] = await self.max_tracking_id(upstream)
        return self._max_tracking[upstream]

    async def _write(
        self,
        messages: list[Message],
        stored_events: Sequence[StoredEvent],
        tracking: Tracking | None,
        kind: str,
    ) -> list[int]:
        async def landed() -> list[int] | None:
            return await self._landed(messages)

        outcome = await write(
            self.nc,
            messages,
            timeout=self.settings.request_timeout,
            deadline_s=self.settings.write_deadline,
            landed=landed,
            what=f"write to stream {self.settings.stream!r}",
        )
        if isinstance(outcome, list):
            return outcome
        if outcome.error is None:
            self._note_seq(outcome.seq)
            return list(range(outcome.seq - len(messages) + 1, outcome.seq + 1))
        if outcome.error.err_code in (WRONG_LAST_SEQUENCE, DUPLICATE_IN_BATCH):
            # A retry of a write that did land (its ack was lost, or the client resent
            # it after reconnecting) is refused like a conflict: look first.
            found = await landed()
            if found is not None:
                return found
            await self._raise_conflict(stored_events, tracking, kind)
        raise StoreConflictError(
            f"stream {self.settings.stream!r} refused the write: "
            f"{outcome.error.description} (error {outcome.error.err_code})"
        )

    def _note_seq(self, seq: int) -> None:
        if self._last_seq is None or seq > self._last_seq:
            self._last_seq = seq

    async def _landed(self, messages: list[Message]) -> list[int] | None:
        """Sequences of this write if it is in the stream (its first message's msg id)."""
        first = messages[0]
        try:
            record = await self._reader.last(first.subject)
        except StoreUnavailableError:
            return None
        if record is None or record.headers.get(MSG_ID) != first.headers[MSG_ID]:
            return None
        self._note_seq(record.seq + len(messages) - 1)
        return list(range(record.seq, record.seq + len(messages)))

    async def _raise_conflict(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking | None, kind: str
    ) -> None:
        for event in stored_events:
            existing = await self._reader.last(
                self.layout.version_filter(kind, event.originator_id, event.originator_version)
            )
            if existing is not None:
                raise StoreConflictError(
                    f"version {event.originator_version} of {event.originator_id} "
                    "is already recorded"
                )
        if tracking is not None:
            raise _StalePosition
        raise StoreConflictError("the write conflicted with another write")

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
        if desc and limit == 1 and lte is None and gt is None:
            record = await self._reader.last(subject_filter)
            return [] if record is None else [self._stored_event(record, originator_id)]
        start = 1
        if gt is not None:
            # Skip what precedes version gt (e.g. the events a snapshot covers).
            anchor = await self._reader.last(layout.version_filter(kind, originator_id, gt))
            if anchor is not None:
                start = anchor.seq + 1
        records = await self._reader.scan(subject_filter, start_seq=start)
        events = [self._stored_event(r, originator_id) for r in records]
        if gt is not None:
            events = [e for e in events if e.originator_version > gt]
        if lte is not None:
            events = [e for e in events if e.originator_version <= lte]
        events.sort(key=_version, reverse=desc)
        return events if limit is None else events[:limit]

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
        await self.open()
        record = await self._reader.last(self.layout.kind_filter(EVENTS))
        return None if record is None else record.seq

    async def max_tracking_id(self, application_name: str) -> int | None:
        """The newest tracking id recorded for an upstream application."""
        await self.open()
        record = await self._reader.last(self.layout.tracking_filter(application_name))
        if record is None:
            return None
        return int(record.headers[TRACKING_HEADER])

    async def insert_tracking(self, tracking: Tracking) -> None:
        await self.insert_events((), tracking=tracking)

    async def _stream_last_seq(self) -> int:
        try:
            reply = await self.nc.request(
                f"$JS.API.STREAM.INFO.{self.settings.stream}",
                b"",
                timeout=self.settings.request_timeout,
            )
        except NatsError as exc:
            raise StoreUnavailableError(f"cannot read the stream's position: {exc}") from exc
        info = msgspec.json.decode(reply.data, type=_StreamInfo)
        return info.state.last_seq

    async def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> AsyncIterator[Notification]:
        """Events after ``gt``, then new ones as they are written (an ordered consumer)."""
        await self.open()
        wanted = set(topics)
        js = self.nc.jetstream()
        sub = await js.subscribe(
            self.layout.kind_filter(EVENTS),
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=(gt or 0) + 1,
            ),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=None)
                notification = self._notification(
                    Record(
                        seq=msg.metadata.sequence.stream,
                        subject=msg.subject,
                        data=msg.data,
                        headers=msg.headers or {},
                    )
                )
                if wanted and notification.topic not in wanted:
                    continue
                yield notification
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()


class _StalePosition(Exception):
    """A tracked write's stream-position check failed without a real conflict."""


class _StreamState(msgspec.Struct):
    last_seq: int = 0


class _StreamInfo(msgspec.Struct):
    state: _StreamState = msgspec.field(default_factory=_StreamState)


def _version(event: StoredEvent) -> int:
    return event.originator_version
