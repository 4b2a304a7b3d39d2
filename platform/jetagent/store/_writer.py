"""How the store writes an application's records — events, snapshots, tracking records —
as one atomic write, with the checks that make each of them exclusive on the server.

**Versions.** Every event carries "no event with this version yet": an expected last
subject sequence 0 on ``<root>.<kind>.<originator>.<version>.>``, so a version is unique
with no read before the write (docs/ARCHITECTURE.md, "JetStream facts", option 1).

**Tracking.** A tracking record says that a notification of an upstream application
was processed. Its ids only grow per upstream, and a record that is not after the
newest one must be refused *by the server*, whichever process or connection recorded
the newest. The record rides on the write's last event (whose last subject token names
the upstream and whose ``Ja-Tracking-Id`` header holds the id) or, with no events, on a
marker message. A message has room for one subject check and each event's holds its
version, so the store proves "nothing newer for this upstream" in one of two ways:

- *by upstream*: a marker ``<root>.t._._._.<upstream>`` heads the write, expecting the
  last message on ``<root>.*.*.*.*.<upstream>`` to be the newest tracking record the
  store read. A tracking record alone is just the marker; with events the write becomes
  an atomic batch (so it holds at most 999 events). Only a competitor for the same
  upstream can fail this check.
- *by position*, for a write of one event: the event alone, with
  ``Nats-Expected-Last-Sequence`` — nothing at all was written to the stream since a
  position that the store's knowledge of the upstream covers (its newest record was read
  after the stream was there, or written by this store since). One event with tracking
  is what a process application writes most, and on a file-backed stream an atomic
  batch costs milliseconds where one message costs a fraction of one. When another
  writer moved the stream on, the same write is made by upstream instead.

Either way the store decides "this notification is after the newest" only on knowledge
the server checks as it stores the write; a stale view fails the check, is refreshed,
and the decision is made again. The newest tracking record is read from the stream's
*leader*: on a replicated stream a follower that is behind could miss a record written
before the known position, which the position check would not catch
(docs/ARCHITECTURE.md §5.8; nats-server 2.15 ignores a direct get's ``min_last_seq``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from eventsourcing.persistence import StoredEvent, Tracking
from nats.aio.client import Client as NATS

from jetagent.jetstream import (
    Appended,
    ConcurrencyConflict,
    DirectGetter,
    Header,
    Message,
    stream_last_seq,
    write,
)
from jetagent.store._errors import StoreConflictError, StoreUnavailableError
from jetagent.store._settings import StoreSettings
from jetagent.store._subjects import TRACKING_HEADER, SubjectLayout

__all__ = ["Writer"]


@dataclass(slots=True)
class _Newest:
    """An upstream's newest tracking record, as this store last knew it."""

    notification_id: int | None
    seq: int
    """Its stream sequence (``0``: the upstream has none)."""


class Writer:
    """Writes one application's records to its stream (see the module docstring)."""

    def __init__(
        self, nc: NATS, settings: StoreSettings, layout: SubjectLayout, reader: DirectGetter
    ) -> None:
        self._nc = nc
        self._settings = settings
        self._layout = layout
        self._reader = reader
        # Tracked writes take turns: each rests on the knowledge below, which the one
        # before it may change.
        self._tracked = asyncio.Lock()
        self._position: int | None = None
        """A stream position that every entry of ``_newest`` covers (None: unknown)."""
        self._newest: dict[str, _Newest] = {}

    async def insert(self, stored_events: Sequence[StoredEvent], kind: str) -> list[int]:
        """Write events atomically; return their sequences."""
        _check_unique(stored_events)
        messages = self._events(stored_events, None, kind)
        appended = await self._write(messages, stored_events, kind)
        self._wrote(appended)
        return appended.seqs

    async def insert_tracked(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking, kind: str
    ) -> list[int]:
        """Write events and a tracking record atomically; return the events' sequences."""
        _check_unique(stored_events)
        upstream = tracking.application_name
        by_position = len(stored_events) == 1
        async with self._tracked:
            deadline = time.monotonic() + self._settings.write_deadline
            while True:
                if by_position and self._position is None:
                    # Knowledge read before this position may miss what came since: drop it.
                    self._newest.clear()
                    self._position = await stream_last_seq(
                        self._nc, self._settings.stream, timeout=self._settings.request_timeout
                    )
                newest = await self._newest_of(upstream)
                premise = self._position if by_position else None
                if premise is None:
                    # Not by position (or an untracked write made it unknown meanwhile).
                    by_position = False
                if newest.notification_id is not None and (
                    tracking.notification_id <= newest.notification_id
                ):
                    raise StoreConflictError(
                        f"tracking record {upstream}:{tracking.notification_id} is not after "
                        f"the newest one recorded ({newest.notification_id})"
                    )
                messages = self._events(stored_events, tracking, kind)
                if not by_position:
                    marker = Message(
                        self._layout.tracking_marker(upstream),
                        b"",
                        {TRACKING_HEADER: str(tracking.notification_id)},
                    )
                    on = self._layout.tracking_filter(upstream)
                    messages.insert(0, marker.expect_last(newest.seq, on=on))
                try:
                    appended = await self._write(
                        messages,
                        stored_events,
                        kind,
                        expected_last_seq=premise,
                    )
                except ConcurrencyConflict:
                    # No version was taken, so the premise failed: the stream moved on (by
                    # position), or another writer recorded this upstream (by upstream).
                    if by_position:
                        self._position = None
                        by_position = False
                    else:
                        self._newest.pop(upstream, None)
                    if time.monotonic() > deadline:
                        raise StoreUnavailableError(
                            f"a write with tracking record {upstream}:{tracking.notification_id} "
                            "kept losing the race to other writers"
                        ) from None
                    continue
                # The upstream's newest tracking record is now the write's last message.
                self._newest[upstream] = _Newest(tracking.notification_id, appended.last)
                if by_position:
                    self._position = appended.last
                else:
                    self._wrote(appended)
                return appended.seqs[len(messages) - len(stored_events) :]

    async def _newest_of(self, upstream: str) -> _Newest:
        newest = self._newest.get(upstream)
        if newest is None:
            # From the leader: a follower may be behind the known position, and this
            # knowledge must cover it (one read per upstream until the position moves).
            record = await self._reader.leader_last(self._layout.tracking_filter(upstream))
            if record is None:
                newest = _Newest(None, 0)
            else:
                newest = _Newest(int(record.headers[TRACKING_HEADER]), record.seq)
            self._newest[upstream] = newest
        return newest

    def _wrote(self, appended: Appended) -> None:
        """Keep the known position exact after a write that did not check it: only when
        the write follows it directly was nothing else written in between."""
        if self._position is not None and appended.seqs and appended.seqs[0] == self._position + 1:
            self._position = appended.last
        else:
            self._position = None

    def _events(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking | None, kind: str
    ) -> list[Message]:
        layout = self._layout
        messages = []
        last = len(stored_events) - 1
        for i, event in enumerate(stored_events):
            upstream = tracking.application_name if tracking is not None and i == last else None
            originator, version = event.originator_id, event.originator_version
            headers = {
                # No event with this version yet (see the module docstring).
                Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
                Header.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: layout.version_filter(
                    kind, originator, version
                ),
            }
            if upstream is not None and tracking is not None:
                headers[TRACKING_HEADER] = str(tracking.notification_id)
            subject = layout.record(kind, originator, version, event.topic, upstream)
            messages.append(Message(subject, event.state, headers))
        return messages

    async def _write(
        self,
        messages: list[Message],
        stored_events: Sequence[StoredEvent],
        kind: str,
        *,
        expected_last_seq: int | None = None,
    ) -> Appended:
        try:
            return await write(
                self._nc,
                messages,
                reader=self._reader,
                timeout=self._settings.request_timeout,
                deadline_s=self._settings.write_deadline,
                what=f"write to stream {self._settings.stream!r}",
                expected_last_seq=expected_last_seq,
            )
        except ConcurrencyConflict:
            await self._raise_if_taken(stored_events, kind)
            raise

    async def _raise_if_taken(self, stored_events: Sequence[StoredEvent], kind: str) -> None:
        """Raise :class:`StoreConflictError` if a version the write holds is recorded (a
        replica that is behind may not have it yet: its "no" is asked of the leader)."""
        for event in stored_events:
            version = self._layout.version_filter(
                kind, event.originator_id, event.originator_version
            )
            if await self._reader.confirmed_last(version) is not None:
                raise StoreConflictError(
                    f"version {event.originator_version} of {event.originator_id} "
                    "is already recorded"
                )


def _check_unique(stored_events: Sequence[StoredEvent]) -> None:
    seen = set()
    for event in stored_events:
        key = (str(event.originator_id), event.originator_version)
        if key in seen:
            raise StoreConflictError(
                f"the write holds version {event.originator_version} of {event.originator_id} twice"
            )
        seen.add(key)
