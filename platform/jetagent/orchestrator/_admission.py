"""The orchestrator's side of tenant concurrency quotas: admit, hold, refuse, wake, reclaim.

:class:`Admissions` puts a tenant's slots (``jetagent.orchestrator.quotas``) in step with the
workflows' record. A new request takes a slot before its ``Started`` is decided (whose
time is then now, after the slot was taken), is held (``Held``) behind older held requests,
or is refused. A workflow that ends frees its slot after its final event is recorded; the
oldest held workflows are promoted in the same write and woken through ``JA_TIMERS``. A
held workflow rechecks every ``quota_recheck_s`` on a durable timer, in case its wake-up
was lost in a crash.

The slots trust the record: when a tenant looks full, the workflows holding its slots are
looked up (at most once per ``quota_recheck_s`` per tenant and process). A slot whose
workflow has ended, or never started long after its request (a crash between "counted"
and "started" whose request was then refused), is freed; one whose workflow is still
held is woken. docs/ARCHITECTURE.md §9.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from datetime import UTC, datetime, timedelta

import msgspec

from jetagent.config import Settings
from jetagent.events import (
    Cancelled,
    Finalized,
    Held,
    QuotaUse,
    RequestRejected,
    Terminated,
    decode_events,
)
from jetagent.jetstream import AggregateStream
from jetagent.orchestrator.quotas import Granted, Refused, Slots, Waiting
from jetagent.orchestrator.rates import TokenBuckets
from jetagent.orchestrator.timers import ADMIT, RATE, Timers
from jetagent.workflow import Admit, Begin, Hold, Input, WorkflowState

__all__ = ["Admissions", "Refusal", "StartNow"]

log = logging.getLogger("jetagent.quotas")

NEVER_STARTED_AFTER = timedelta(seconds=120)
"""A slot whose workflow has recorded nothing this long after taking it is freed: the
request consumer redelivers within its ack wait (30 s), so its request was refused."""
_FINAL = (Finalized, Terminated, Cancelled, RequestRejected)


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused by its tenant's quota."""

    quota: QuotaUse
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class StartNow:
    """The request holds a slot: start it, at a time after the slot was taken (so that
    its run, from ``Started`` to its end, lies within the slot's)."""


def _now() -> datetime:
    return datetime.now(UTC)


class Admissions:
    """Tenant concurrency quotas for one orchestrator replica."""

    def __init__(
        self,
        settings: Settings,
        slots: Slots,
        tokens: TokenBuckets,
        timers: Timers,
        aggregates: AggregateStream,
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.tokens = tokens
        self.timers = timers
        self.aggregates = aggregates
        self.recheck = timedelta(seconds=settings.quota_recheck_s)

    async def follow(
        self, workflow_id: str, command: Input, was: WorkflowState, now: WorkflowState
    ) -> None:
        """Keep the tenant's slots and the quota timers in step with a decision on
        ``command`` (before its input is acknowledged: a crash in between is repaired by
        the redelivery)."""
        if now.held is not None and was.held is None:
            await self.timers.arm(workflow_id, ADMIT, now.held.at + self.recheck)
        if was.held is not None and now.held is None:
            await self.timers.disarm(workflow_id, ADMIT)  # started or ended: no recheck
        if now.paused_until is not None and now.paused_until != was.paused_until:
            await self.timers.arm(workflow_id, RATE, now.paused_until)  # throttled
        ended = now.status.is_final and not was.status.is_final
        if ended or (now.status.is_final and isinstance(command, Begin | Admit)):
            await self.end(now.tenant, workflow_id)

    def limit(self, tenant: str) -> int:
        """The tenant's max_workflows (0: no limit)."""
        return self.settings.quotas_of(tenant).max_workflows

    async def begin(self, begin: Begin) -> StartNow | Hold | Refusal | None:
        """What a new request's tenant quotas say: start it now, hold it, refuse it, or
        nothing (no quota applies: decide it as it is)."""
        tenant = begin.tenant
        quotas = self.settings.quotas_of(tenant)
        if quotas.over_quota == "reject" and quotas.tokens_per_minute:
            per_minute = quotas.tokens_per_minute
            level = await self.tokens.level(tenant, per_minute=per_minute)
            if level <= 0:
                # Its tokens for this minute are spent (its bucket is empty or in debt).
                in_use = math.ceil(per_minute - level)
                use = QuotaUse(quota="tokens_per_minute", limit=per_minute, in_use=in_use)
                return Refusal(quota=use, reason=use.describe(tenant))
        if not quotas.max_workflows:
            return None
        limit, mode = quotas.max_workflows, quotas.over_quota
        outcome, promoted = await self.slots.admit(
            tenant, begin.workflow_id, limit=limit, mode=mode
        )
        await self._wake(promoted)
        # Full: first make sure every slot is really in use (the record decides).
        full = not isinstance(outcome, Granted)
        if full and self._due_to_reconcile(tenant) and await self.reconcile(tenant):
            outcome, promoted = await self.slots.admit(
                tenant, begin.workflow_id, limit=limit, mode=mode
            )
            await self._wake(promoted)
        match outcome:
            case Granted():
                return StartNow()
            case Waiting(position, quota):
                what = quota.describe(tenant)
                log.info("holding %s: %s (position %d)", begin.workflow_id, what, position)
                return Hold(quota=quota, position=position)
            case Refused(quota, reason):
                log.info("refusing %s: %s", begin.workflow_id, reason)
                return Refusal(quota=quota, reason=reason)

    async def claim(self, tenant: str, workflow_id: str) -> bool:
        """Whether a held workflow holds a slot now (promoting the oldest held first)."""
        limit = self.limit(tenant)
        if not limit:
            return True  # the quota was lifted: start it
        granted, promoted = await self.slots.claim(tenant, workflow_id, limit=limit)
        await self._wake(promoted)
        if not granted and self._due_to_reconcile(tenant) and await self.reconcile(tenant):
            granted, promoted = await self.slots.claim(tenant, workflow_id, limit=limit)
            await self._wake(promoted)
        return granted

    async def end(self, tenant: str, workflow_id: str) -> None:
        """The workflow ended (its final event is recorded): free its slot or its place."""
        limit = self.limit(tenant)
        if not limit or not tenant:
            return
        await self._wake(await self.slots.release(tenant, workflow_id, limit=limit))

    async def recheck_later(self, workflow_id: str) -> None:
        """A held workflow found no slot: look again after ``quota_recheck_s``."""
        await self.timers.arm(workflow_id, ADMIT, _now() + self.recheck)

    async def reconcile(self, tenant: str) -> bool:
        """Free the slots the record shows are not in use, wake held workflows that hold a
        slot; True if anything was freed."""
        slots = await self.slots.read(tenant)
        now = _now()
        ended: list[tuple[str, datetime | None]] = []
        never: list[tuple[str, datetime | None]] = []
        for workflow_id, taken_at in list(slots.running.items()):
            record = await self.aggregates.last(workflow_id)
            if record is None:
                if now - taken_at > NEVER_STARTED_AFTER:
                    never.append((workflow_id, taken_at))
                continue
            try:
                last = decode_events(record.data)[-1]
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # junk under its subjects: the journal deals with it
            if isinstance(last, _FINAL):
                # Usually its end is being released right now; a crash may have lost that.
                ended.append((workflow_id, taken_at))
            elif isinstance(last, Held):
                # It got a slot but its start was never recorded (its wake-up was lost).
                await self.timers.wake(workflow_id, ADMIT)
        if never:
            log.warning(
                "tenant %s: freeing %d slot(s) of requests that never started: %s",
                tenant,
                len(never),
                ", ".join(w for w, _ in never),
            )
        if not ended and not never:
            return False
        await self._wake(await self.slots.drop(tenant, ended + never, limit=self.limit(tenant)))
        return True

    def _due_to_reconcile(self, tenant: str) -> bool:
        every = self.settings.quota_recheck_s
        return self.slots.due_to_reconcile(tenant, time.monotonic(), every)

    async def _wake(self, promoted: list[str]) -> None:
        for workflow_id in promoted:
            await self.timers.wake(workflow_id, ADMIT)
