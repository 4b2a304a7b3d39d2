"""The call journal: every provider call of a step, written as it completes.

A step's usage is counted from its one ``StepResult``. A run that dies mid-step (its
worker was killed, its host lost) writes no result, yet the calls it made were paid
for; so each call is also appended to ``JA_CALLS`` the moment it completes
(``<prefix>.call.<workflow_id>.<step_id>.<delivery>``), and a run that ends with a
retry appends what it was billed and an end marker. The run that finally writes the
step's result reads the earlier runs' entries and puts their calls in the result, so
budgets and cost metrics count every call once; runs without an end marker are the
step's *interrupted runs* (counted by ``jetagent_step_repeated_runs_total``).

Nothing is read on a step's first delivery: the journal costs one publish per provider
call and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS

from jetagent.errors import JetagentError
from jetagent.events import CallRecord
from jetagent.jetstream import DirectGetter, Header, Message, publish
from jetagent.subjects import Names

__all__ = ["CALLS_RECORDED", "CallJournal", "EarlierRuns", "JournalEntry"]

log = logging.getLogger("jetagent.calls")

CALLS_RECORDED = "calls_recorded"
"""Key of a ``CapabilityError``'s ``details``: ``True`` when every call the error
describes (``details["attempts"]``, ``usage``) was already reported with
``StepContext.record_call``, so the worker does not count those calls a second time."""


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One call of one run, or the end of a run that will be retried."""

    delivery: int
    worker: str = ""
    call: CallRecord | None = None
    ended: str | None = None
    """Set on the last entry of a run that ended without a result (why it ended)."""


@dataclass(frozen=True, kw_only=True)
class EarlierRuns:
    """What the earlier runs of a step left in the journal."""

    calls: list[CallRecord]
    interrupted: int
    """Earlier runs that ended without a result or an end marker (their worker died)."""


_decoder = msgspec.json.Decoder(JournalEntry)
_encoder = msgspec.json.Encoder(decimal_format="string")


class CallJournal:
    """Appends to and reads the call journal of the steps one worker runs."""

    def __init__(self, nc: NATS, reader: DirectGetter, names: Names, *, worker: str) -> None:
        self._nc = nc
        self._reader = reader
        self._names = names
        self._worker = worker

    async def record(self, workflow_id: str, step_id: str, delivery: int, call: CallRecord) -> bool:
        """Append one completed call; False if the server could not be reached (the call
        is still in this run's result, if the run lives to write it)."""
        entry = JournalEntry(delivery=delivery, worker=self._worker, call=call)
        return await self._append(workflow_id, step_id, entry)

    async def end(
        self,
        workflow_id: str,
        step_id: str,
        delivery: int,
        *,
        reason: str,
        calls: list[CallRecord],
    ) -> None:
        """Close a run that will be retried: its not yet journaled calls, then a marker."""
        for call in calls:
            await self.record(workflow_id, step_id, delivery, call)
        entry = JournalEntry(delivery=delivery, worker=self._worker, ended=reason)
        await self._append(workflow_id, step_id, entry)

    async def _append(self, workflow_id: str, step_id: str, entry: JournalEntry) -> bool:
        subject = self._names.step_calls(workflow_id, step_id, entry.delivery)
        # Its own id: a try whose acknowledgement was lost is not journaled twice.
        message = Message(subject, _encoder.encode(entry), {Header.MSG_ID: uuid.uuid4().hex})
        try:
            await publish(self._nc, message, timeout=2.0, deadline_s=15.0, what="journal a call")
            return True
        except JetagentError as exc:
            log.warning("could not journal a call of step %s/%s: %s", workflow_id, step_id, exc)
            return False

    async def earlier(self, workflow_id: str, step_id: str, delivery: int) -> EarlierRuns:
        """The calls of runs before ``delivery``, and how many of them were interrupted
        (read up to the newest entry the stream's leader knows: a replica that is behind
        would leave calls uncounted, docs/ARCHITECTURE.md §5.8)."""
        subjects = self._names.step_calls(workflow_id, step_id, "*")
        newest = await self._reader.leader_last(subjects)
        if newest is None:
            return EarlierRuns(calls=[], interrupted=max(delivery - 1, 0))
        records = await self._reader.scan(subjects, need=newest.seq)
        calls: list[CallRecord] = []
        ended: set[int] = set()
        for record in records:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                entry = _decoder.decode(record.data)
                if entry.delivery >= delivery:
                    continue
                if entry.call is not None:
                    calls.append(entry.call)
                if entry.ended is not None:
                    ended.add(entry.delivery)
        return EarlierRuns(calls=calls, interrupted=max(delivery - 1 - len(ended), 0))
