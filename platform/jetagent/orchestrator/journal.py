"""The Workflow aggregate's journal: load (cache, snapshot, events) and append events.

A step's cost does not grow with the stream: a cached workflow is appended to with no
read at all (the cache knows the sequence its last event got); a workflow not in the
cache is rebuilt from its newest snapshot plus the events after it.

A message under a workflow's subjects that is not one of its events (junk from a rogue
publisher) is skipped — its sequence still counts for the concurrency check — and
recorded once as a dead letter, so it can never wedge the workflow.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetagent.dead_letter import dead_letter, publish_dead_letter
from jetagent.events import (
    StepScheduled,
    WorkflowEvent,
    decode_events,
    encode_events,
    event_type,
    subject_tail,
)
from jetagent.jetstream import AggregateStream, NewRecord, Record
from jetagent.jetstream.headers import Header
from jetagent.subjects import Names
from jetagent.workflow import WorkflowState, evolve

__all__ = ["Journal", "Loaded"]

log = logging.getLogger("jetagent.journal")


@dataclass(slots=True)
class Loaded:
    """A workflow's state and the stream sequence of its last event (0: none yet)."""

    state: WorkflowState
    seq: int
    snapshot_version: int = 0


class _Snapshot(msgspec.Struct):
    seq: int
    state: WorkflowState


_snapshot_decoder = msgspec.json.Decoder(_Snapshot)
_snapshot_encoder = msgspec.json.Encoder(decimal_format="string")


class Journal:
    """Reads and appends Workflow events; caches states; snapshots long workflows."""

    def __init__(
        self,
        js: JetStreamContext,
        aggregates: AggregateStream,
        names: Names,
        *,
        cache_size: int,
        snapshot_every: int,
    ) -> None:
        self._js = js
        self.aggregates = aggregates
        self._names = names
        self._cache: OrderedDict[str, Loaded] = OrderedDict()
        self._cache_size = cache_size
        self._snapshot_every = snapshot_every
        self._snapshots: KeyValue | None = None
        self._poisoned: set[int] = set()
        self.poisoned = 0
        """Junk messages skipped (each counted once per process)."""

    async def _bucket(self) -> KeyValue:
        if self._snapshots is None:
            self._snapshots = await self._js.key_value(self._names.bucket("SNAPSHOTS"))
        return self._snapshots

    def is_cached(self, workflow_id: str) -> bool:
        return workflow_id in self._cache

    def cached(self) -> list[Loaded]:
        return list(self._cache.values())

    async def load(self, workflow_id: str, *, need: int = 0) -> Loaded:
        """The workflow's state: cached, or rebuilt from its snapshot and events; with
        ``need`` (a sequence known to be the workflow's), read at least up to it."""
        loaded = self._cache.get(workflow_id)
        if loaded is not None:
            self._cache.move_to_end(workflow_id)
            if loaded.seq < need:
                await self.catch_up(workflow_id, loaded, need=need)
            return loaded
        loaded = await self._load_snapshot(workflow_id) or Loaded(WorkflowState(), 0)
        await self.catch_up(workflow_id, loaded, need=need)
        self._remember(workflow_id, loaded)
        return loaded

    def forget(self, workflow_id: str) -> None:
        self._cache.pop(workflow_id, None)

    def _remember(self, workflow_id: str, loaded: Loaded) -> None:
        self._cache[workflow_id] = loaded
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _load_snapshot(self, workflow_id: str) -> Loaded | None:
        try:
            entry = await (await self._bucket()).get(workflow_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        try:
            snapshot = _snapshot_decoder.decode(entry.value)
        except msgspec.ValidationError:
            log.warning("ignoring an unreadable snapshot of %s", workflow_id)
            return None
        return Loaded(snapshot.state, snapshot.seq, snapshot.state.version)

    async def catch_up(self, workflow_id: str, loaded: Loaded, *, need: int = 0) -> None:
        """Fold the events written after ``loaded.seq`` (by another replica, say); with
        ``need``, at least up to that sequence (docs/ARCHITECTURE.md §5.8: any replica
        may answer, and one that is behind answers with less)."""
        records = await self.aggregates.read(workflow_id, after_seq=loaded.seq, need=need)
        for record in records:
            for event in await self._events_of(workflow_id, record):
                loaded.state = evolve(loaded.state, event)
            loaded.seq = record.seq

    async def catch_up_to_head(self, workflow_id: str, loaded: Loaded) -> None:
        """Fold every event the stream's leader knows of: what a negative decision
        ("nothing to do", "no such step") must rest on, since a replica's empty answer
        proves nothing (about a millisecond more than :meth:`catch_up`)."""
        head = await self.aggregates.head(workflow_id)
        if head > loaded.seq:
            await self.catch_up(workflow_id, loaded, need=head)

    async def _events_of(self, workflow_id: str, record: Record) -> list[WorkflowEvent]:
        try:
            events = decode_events(record.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = f"not events of this workflow: {exc}"
        else:
            if all(e.workflow_id == workflow_id for e in events):
                return events
            reason = "events of another workflow under this workflow's subject"
        if record.seq not in self._poisoned:
            self._poisoned.add(record.seq)
            self.poisoned += 1
            log.warning("skipping %s (seq %d): %s", record.subject, record.seq, reason)
            letter = dead_letter(
                source="orchestrator",
                kind="poison",
                reason=reason,
                subject=record.subject,
                stream=self._names.workflows_stream,
                stream_seq=record.seq,
                workflow_id=workflow_id,
            )
            await publish_dead_letter(self.aggregates.nc, self._names, letter)
        return []

    async def append(
        self,
        workflow_id: str,
        loaded: Loaded,
        events: list[WorkflowEvent],
        headers: dict[str, str],
    ) -> None:
        """Append events as one message if the workflow is still at ``loaded.seq``.

        Raises ``ConcurrencyConflict`` when another writer appended first.
        """
        last = events[-1]
        record = NewRecord(
            tail=subject_tail(last),
            data=encode_events(events),
            headers={
                Header.JA_EVENT: ",".join(event_type(type(e)) for e in events),
                Header.JA_WORKFLOW: workflow_id,
                **headers,
            },
        )
        if isinstance(last, StepScheduled):
            # Workers take steps round robin across tenants (jetstream/fair.py) by it.
            record.headers[Header.JA_TENANT] = last.tenant
        appended = await self.aggregates.append(workflow_id, [record], expected_seq=loaded.seq)
        for event in events:
            loaded.state = evolve(loaded.state, event)
        loaded.seq = appended.last
        self._remember(workflow_id, loaded)
        if loaded.state.version - loaded.snapshot_version >= self._snapshot_every:
            await self.snapshot(workflow_id, loaded)

    async def snapshot(self, workflow_id: str, loaded: Loaded) -> None:
        data = _snapshot_encoder.encode(_Snapshot(seq=loaded.seq, state=loaded.state))
        try:
            await (await self._bucket()).put(workflow_id, data)
            loaded.snapshot_version = loaded.state.version
        except Exception as exc:  # a snapshot is an optimisation: never fail a step for it
            log.warning("snapshot of %s failed: %s", workflow_id, exc)
