"""Tenant concurrency quotas: the slots of each tenant, in a KV bucket, changed by compare-and-set.

A tenant's slots are one key of ``JA_QUOTAS`` (``slots.<tenant>``): the workflows that hold
a slot (with when they took it) and the ids of held requests in arrival order. Every
orchestrator replica changes it only with a compare-and-set on the key's revision, so two
replicas can never both take the last slot, and the count survives restarts. The bucket
is read from its stream leader (no direct gets), so a read that decides is never stale
(docs/ARCHITECTURE.md §9).

The key changes in step with the workflow's own events: a slot is taken before ``Started``
is recorded (a crash in between: the request is redelivered and finds its slot taken), and
freed after the final event is recorded (a crash in between: the slot is reclaimed by
``Admissions.reconcile`` in ``jetagent.orchestrator._admission``, which trusts the record
over the key). Freeing a slot promotes the oldest held requests in the same write; each
promoted workflow is then woken durably (``jetagent.orchestrator.timers``), and a held
workflow's periodic recheck repairs a wake-up lost in a crash.

Changes of one tenant in one process are batched: callers queue a change, and one of them
at a time writes every change queued so far in one compare-and-set while the others wait
for their result, so a burst of one tenant costs a few writes, not one per request.
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import msgspec
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetagent.config import OverQuota
from jetagent.events import QuotaUse
from jetagent.jetstream import JetStreamUnavailableError
from jetagent.subjects import Names

__all__ = [
    "MAX_HELD",
    "Granted",
    "Outcome",
    "Refused",
    "Slots",
    "TenantSlots",
    "Waiting",
    "put_at_revision",
]

MAX_HELD = 10_000
"""Held requests per tenant at most; a request beyond them is rejected (the queue's key
must stay well under the server's largest message)."""
_MAX_CONFLICTS = 200

T = TypeVar("T")


class TenantSlots(msgspec.Struct, kw_only=True):
    """One tenant's key: who holds a slot, who waits for one."""

    running: dict[str, datetime] = msgspec.field(default_factory=dict)
    """Workflow id → when it took its slot."""
    held: list[str] = msgspec.field(default_factory=list)
    """Held workflow ids, oldest first."""


@dataclass(frozen=True, slots=True)
class Granted:
    """The workflow holds a slot: start it."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """The workflow is held: ``position`` in its tenant's queue (1: next)."""

    position: int
    quota: QuotaUse


@dataclass(frozen=True, slots=True)
class Refused:
    """Over the quota, and not held (``over_quota=reject``, or the queue is full)."""

    quota: QuotaUse
    reason: str


Outcome = Granted | Waiting | Refused


@dataclass
class _Change:
    apply: Callable[[TenantSlots, list[str]], object]
    """Changes the slots in place; promotes into the list it is given."""
    done: asyncio.Future[tuple[object, list[str]]]


@dataclass
class _Tenant:
    queued: list[_Change] = field(default_factory=list)
    flushing: asyncio.Future[None] | None = None
    """Set while one caller writes the queued changes; done when it has finished."""
    reconciled: float = -1e9


def _use(slots: TenantSlots, limit: int) -> QuotaUse:
    return QuotaUse(quota="max_workflows", limit=limit, in_use=len(slots.running))


def _now() -> datetime:
    return datetime.now(UTC)


_decoder = msgspec.json.Decoder(TenantSlots)


class Slots:
    """The tenants' slots in ``JA_QUOTAS`` (one replica's view; every change is a CAS)."""

    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self._js = js
        self._names = names
        self._kv: KeyValue | None = None
        self._tenants: dict[str, _Tenant] = {}

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._names.bucket("QUOTAS"))
        return self._kv

    @staticmethod
    def key(tenant: str) -> str:
        """The key of a tenant's slots."""
        return f"slots.{tenant}"

    async def read(self, tenant: str) -> TenantSlots:
        """A tenant's slots as they are now (from the bucket's leader)."""
        slots, _ = await self._get(tenant)
        return slots

    # ------------------------------------------------------------------ changes

    async def admit(
        self, tenant: str, workflow_id: str, *, limit: int, mode: OverQuota
    ) -> tuple[Outcome, list[str]]:
        """Take a slot for a new request, or hold it, or refuse it; and the held workflows
        this write promoted (to be woken). Idempotent per workflow: a redelivered request
        finds its slot or its place again."""

        def change(slots: TenantSlots, promoted: list[str]) -> Outcome:
            if workflow_id in slots.running:
                return Granted()
            if workflow_id in slots.held:
                return Waiting(slots.held.index(workflow_id) + 1, _use(slots, limit))
            if len(slots.running) < limit and not slots.held:
                slots.running[workflow_id] = _now()
                return Granted()
            use = _use(slots, limit)
            if mode == "reject":
                return Refused(use, use.describe(tenant))
            if len(slots.held) >= MAX_HELD:
                return Refused(
                    use, f"{use.describe(tenant)}, and {MAX_HELD} requests are held already"
                )
            slots.held.append(workflow_id)
            _promote(slots, limit, promoted)
            if workflow_id in slots.running:
                promoted.remove(workflow_id)  # a slot was free after all: start it now
                return Granted()
            return Waiting(len(slots.held), use)

        return await self._change(tenant, change)

    async def claim(self, tenant: str, workflow_id: str, *, limit: int) -> tuple[bool, list[str]]:
        """Whether a held workflow (woken, or rechecking) holds a slot now, promoting the
        oldest held ones into free slots first; and the others this write promoted. A held
        workflow missing from the key (the key was lost) queues again."""

        def change(slots: TenantSlots, promoted: list[str]) -> bool:
            if workflow_id not in slots.running and workflow_id not in slots.held:
                slots.held.append(workflow_id)
            _promote(slots, limit, promoted)
            if workflow_id in promoted:
                promoted.remove(workflow_id)
            return workflow_id in slots.running

        return await self._change(tenant, change)

    async def release(self, tenant: str, workflow_id: str, *, limit: int) -> list[str]:
        """Free the workflow's slot (or its place in the queue); the held workflows promoted
        into the freed slots, oldest first."""

        def change(slots: TenantSlots, promoted: list[str]) -> None:
            slots.running.pop(workflow_id, None)
            if workflow_id in slots.held:
                slots.held.remove(workflow_id)
            _promote(slots, limit, promoted)

        _, promoted = await self._change(tenant, change)
        return promoted

    async def drop(
        self, tenant: str, stale: Iterable[tuple[str, datetime | None]], *, limit: int
    ) -> list[str]:
        """Remove slots (``(id, taken_at)``: only if still taken then) and held ids (``(id,
        None)``) that the record shows are not in use; the held workflows promoted."""
        stale = list(stale)

        def change(slots: TenantSlots, promoted: list[str]) -> None:
            for workflow_id, taken_at in stale:
                if taken_at is None:
                    if workflow_id in slots.held:
                        slots.held.remove(workflow_id)
                elif slots.running.get(workflow_id) == taken_at:
                    del slots.running[workflow_id]
            _promote(slots, limit, promoted)

        _, promoted = await self._change(tenant, change)
        return promoted

    def due_to_reconcile(self, tenant: str, now: float, every: float) -> bool:
        """Whether this process last reconciled ``tenant`` more than ``every`` s ago (and
        note that it does so now)."""
        entry = self._tenants.setdefault(tenant, _Tenant())
        if now - entry.reconciled < every:
            return False
        entry.reconciled = now
        return True

    # ------------------------------------------------------------------ the write

    async def _change(
        self, tenant: str, apply: Callable[[TenantSlots, list[str]], T]
    ) -> tuple[T, list[str]]:
        entry = self._tenants.setdefault(tenant, _Tenant())
        mine = _Change(apply=apply, done=asyncio.get_running_loop().create_future())
        entry.queued.append(mine)
        while not mine.done.done():
            if entry.flushing is not None:
                # Another caller is writing: this change goes in its next write (or,
                # if it stops, this caller writes).
                either: list[asyncio.Future[Any]] = [mine.done, entry.flushing]
                await asyncio.wait(either, return_when=FIRST_COMPLETED)
            else:
                await self._flush(tenant, entry)
        return cast(tuple[T, list[str]], mine.done.result())

    async def _flush(self, tenant: str, entry: _Tenant) -> None:
        """Write the queued changes, in as few writes as they arrive in."""
        entry.flushing = asyncio.get_running_loop().create_future()
        try:
            while entry.queued:
                batch, entry.queued = entry.queued, []
                try:
                    await self._write(tenant, batch)
                except BaseException as exc:
                    failure = exc
                    if not isinstance(exc, Exception):  # cancelled: the others learn why
                        failure = JetStreamUnavailableError("a quota write was interrupted")
                    for change in batch:
                        if not change.done.done():
                            change.done.set_exception(failure)
                    if failure is not exc:
                        raise
        finally:
            entry.flushing.set_result(None)
            entry.flushing = None

    async def _write(self, tenant: str, batch: list[_Change]) -> None:
        """Apply every queued change to the key in one compare-and-set (again on a
        conflict: the changes are functions of the slots, so they apply to the newer)."""
        for _ in range(_MAX_CONFLICTS):
            slots, revision = await self._get(tenant)
            before = msgspec.json.encode(slots)
            results: list[tuple[object, list[str]]] = []
            for change in batch:
                promoted: list[str] = []
                results.append((change.apply(slots, promoted), promoted))
            after = msgspec.json.encode(slots)
            if after != before and not await self._put(tenant, after, revision):
                continue  # another replica wrote first: apply to what it wrote
            for change, result in zip(batch, results, strict=True):
                if not change.done.done():
                    change.done.set_result(result)
            return
        raise JetStreamUnavailableError(f"the slots of tenant {tenant!r} keep changing under us")

    async def _get(self, tenant: str) -> tuple[TenantSlots, int]:
        kv = await self._bucket()
        try:
            entry = await kv.get(self.key(tenant))
        except (KeyNotFoundError, NotFoundError):
            return TenantSlots(), 0
        except NatsError as exc:
            raise JetStreamUnavailableError(f"cannot read the slots of {tenant!r}: {exc}") from exc
        if not entry.value:
            return TenantSlots(), entry.revision or 0
        try:
            return _decoder.decode(entry.value), entry.revision or 0
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Unreadable (written by hand?): start over; reconciling against the record
            # puts the running workflows back as they end.
            return TenantSlots(), entry.revision or 0

    async def _put(self, tenant: str, data: bytes, revision: int) -> bool:
        """Write if the key is still at ``revision``; False when another writer was first."""
        kv = await self._bucket()
        return await put_at_revision(kv, self.key(tenant), data, revision, f"slots of {tenant!r}")


async def put_at_revision(kv: KeyValue, key: str, data: bytes, revision: int, what: str) -> bool:
    """Write ``key`` if it is still at ``revision`` (0: if it does not exist yet): a
    compare-and-set; False when another writer was first. ``what`` names it in errors."""
    try:
        if revision:
            await kv.update(key, data, last=revision)
        else:
            await kv.create(key, data)
    except KeyWrongLastSequenceError:
        return False
    except NatsError as exc:
        if "wrong last sequence" in str(exc):  # the same refusal, not always typed as such
            return False
        raise JetStreamUnavailableError(f"cannot write the {what}: {exc}") from exc
    return True


def _promote(slots: TenantSlots, limit: int, promoted: list[str]) -> None:
    """Move the oldest held workflows into free slots."""
    now = None
    while slots.held and len(slots.running) < limit:
        workflow_id = slots.held.pop(0)
        now = now or _now()
        slots.running[workflow_id] = now
        promoted.append(workflow_id)
