"""Tenant tokens per minute: a token bucket per tenant in ``JA_QUOTAS``, changed by compare-and-set.

What is counted is what the budgets count (``jetagent.workflow``): a step's reservation
(its ``max_tokens`` and prompt, the most it may spend) when it is scheduled, settled by its
actual usage when its result is folded. The bucket of a tenant (key ``tokens.<tenant>``)
holds up to a minute's worth of tokens and refills continuously at ``tokens_per_minute /
60`` per second; a decision that would schedule steps takes their reservations from it,
and a settlement gives back what a step reserved but did not spend (or takes what it
spent beyond). Steps whose reservations the bucket cannot cover wait (``Throttled``, then a
durable timer) until it can; a step reserving more than a whole minute's worth runs when
the bucket is full and leaves it in debt. docs/ARCHITECTURE.md §9.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetagent.events import QuotaUse, StepCompleted, StepFailed, StepScheduled, WorkflowEvent
from jetagent.jetstream import JetStreamUnavailableError
from jetagent.orchestrator.quotas import put_at_revision
from jetagent.subjects import Names
from jetagent.workflow import RateLimited, WorkflowState

__all__ = ["Charge", "TokenBucket", "TokenBuckets", "tokens_of", "under_rate"]

log = logging.getLogger("jetagent.quotas")

_MAX_CONFLICTS = 200


class TokenBucket(msgspec.Struct, kw_only=True):
    """Tokens available at ``at`` (negative: a debt)."""

    level: float
    at: datetime

    def now(self, capacity: int, at: datetime) -> float:
        """The level at ``at``, refilled at ``capacity`` per minute up to ``capacity``."""
        elapsed = max((at - self.at).total_seconds(), 0.0)
        return min(float(capacity), self.level + elapsed * capacity / 60.0)


@dataclass(frozen=True, slots=True)
class Charge:
    """What the bucket answered: taken, or the wait until it could be, and the use."""

    taken: bool
    quota: QuotaUse
    wait: timedelta = timedelta(0)


_decoder = msgspec.json.Decoder(TokenBucket)


def tokens_of(state: WorkflowState, events: list[WorkflowEvent]) -> tuple[int, int]:
    """``(reserve, settle)`` of a decision on ``state``: the tokens its new steps reserve,
    and what its settled steps spent beyond their reservations (negative: less)."""
    reserve = settle = 0
    for event in events:
        if isinstance(event, StepScheduled):
            reserve += event.reservation.tokens
        elif isinstance(event, StepCompleted | StepFailed):
            view = state.steps.get(event.step_id)
            settle += event.settlement.tokens - (view.reservation.tokens if view else 0)
    return reserve, settle


class TokenBuckets:
    """The tenants' token buckets (every change is a compare-and-set on the tenant's key)."""

    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self._js = js
        self._names = names
        self._kv: KeyValue | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @staticmethod
    def key(tenant: str) -> str:
        """The key of a tenant's bucket."""
        return f"tokens.{tenant}"

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._names.bucket("QUOTAS"))
        return self._kv

    async def charge(
        self, tenant: str, *, reserve: int, settle: int = 0, per_minute: int
    ) -> Charge:
        """Take ``settle`` (what settled steps spent beyond their reservations; negative:
        gives back) and, if the bucket covers them, ``reserve`` tokens."""
        return await self._change(tenant, per_minute, reserve, settle)

    async def give_back(self, tenant: str, tokens: int, *, per_minute: int) -> None:
        """Undo a charge whose steps were not recorded after all."""
        await self._change(tenant, per_minute, 0, -tokens)

    async def level(self, tenant: str, *, per_minute: int) -> float:
        """Tokens available now."""
        bucket, _ = await self._get(tenant, per_minute)
        return bucket.now(per_minute, datetime.now(UTC))

    async def _change(self, tenant: str, capacity: int, reserve: int, settle: int) -> Charge:
        if not (reserve or settle):
            level = await self.level(tenant, per_minute=capacity)
            in_use = max(math.ceil(capacity - level), 0)
            return Charge(True, QuotaUse(quota="tokens_per_minute", limit=capacity, in_use=in_use))
        async with self._locks[tenant]:
            for _ in range(_MAX_CONFLICTS):
                bucket, revision = await self._get(tenant, capacity)
                now = datetime.now(UTC)
                level = bucket.now(capacity, now) - settle
                # One bigger than the whole bucket goes when the bucket is full (in debt after).
                need = min(reserve, capacity)
                taken = level >= need
                if taken:
                    level -= reserve
                data = msgspec.json.encode(TokenBucket(level=level, at=now))
                if await self._put(tenant, data, revision):
                    in_use = max(math.ceil(capacity - level), 0)
                    quota = QuotaUse(quota="tokens_per_minute", limit=capacity, in_use=in_use)
                    wait = timedelta(0)
                    if not taken:
                        wait = timedelta(seconds=max((need - level) * 60.0 / capacity, 0.001))
                    return Charge(taken=taken, quota=quota, wait=wait)
            raise JetStreamUnavailableError(
                f"the token bucket of {tenant!r} keeps changing under us"
            )

    async def _get(self, tenant: str, capacity: int) -> tuple[TokenBucket, int]:
        kv = await self._bucket()
        try:
            entry = await kv.get(self.key(tenant))
        except (KeyNotFoundError, NotFoundError):
            return TokenBucket(level=float(capacity), at=datetime.now(UTC)), 0
        except NatsError as exc:
            raise JetStreamUnavailableError(f"cannot read the tokens of {tenant!r}: {exc}") from exc
        try:
            return _decoder.decode(entry.value or b""), entry.revision or 0
        except (msgspec.DecodeError, msgspec.ValidationError):
            return TokenBucket(level=float(capacity), at=datetime.now(UTC)), entry.revision or 0

    async def _put(self, tenant: str, data: bytes, revision: int) -> bool:
        kv = await self._bucket()
        return await put_at_revision(kv, self.key(tenant), data, revision, f"tokens of {tenant!r}")


async def under_rate(
    buckets: TokenBuckets,
    tenant: str,
    state: WorkflowState,
    events: list[WorkflowEvent],
    per_minute: int,
    throttled: Callable[[RateLimited], list[WorkflowEvent]],
) -> tuple[list[WorkflowEvent], int]:
    """A decision on ``state`` under ``tenant``'s tokens per minute: its steps'
    reservations (and its settlements) taken from the tenant's bucket, or the decision
    again with its steps throttled (``throttled``, the pure decision with the limit); and
    the tokens taken, to give back if the decision is not recorded after all."""
    reserve, settle = tokens_of(state, events)
    if not (reserve or settle):
        return events, 0
    charge = await buckets.charge(tenant, reserve=reserve, settle=settle, per_minute=per_minute)
    if charge.taken:
        return events, reserve + settle
    until = datetime.now(UTC) + charge.wait
    log.info(
        "throttling %s until %s: %s",
        events[0].workflow_id,
        until.isoformat(timespec="milliseconds"),
        charge.quota.describe(tenant),
    )
    return throttled(RateLimited(quota=charge.quota, needed=reserve, until=until)), settle
