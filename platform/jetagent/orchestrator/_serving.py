"""How the orchestrator takes its inputs: consumers, turns across tenants, acks, retries.

:class:`Serving` runs a handler for each message of a durable consumer, at most
``orchestrator_concurrency`` at once across the orchestrator's consumers, and turns the
handler's outcome into an ack, a ``nak(delay)`` (the store is unavailable: retried until
it answers; an unexpected failure: a few times, then a dead letter) or a dead letter (a
poison message). Requests and step results are taken in turns across tenants
(:class:`~jetagent.jetstream.fair.FairFeed`), with at most an eighth of the concurrency for
a tenant alone and ``orchestrator_tenant_share`` each while other tenants have inputs too
(:class:`~jetagent.jetstream.fair.Shares`), so one tenant's burst neither holds another
tenant's inputs back nor crowds the process they are handled in (docs/ARCHITECTURE.md §9).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from opentelemetry.trace import SpanKind

from jetagent import correlation, telemetry
from jetagent.config import Settings
from jetagent.dead_letter import DeadLetterKind, dead_letter_of, publish_dead_letter
from jetagent.decoding import PoisonMessage
from jetagent.jetstream import Header, JetStreamUnavailableError, Settler
from jetagent.jetstream.consume import Puller
from jetagent.jetstream.fair import FairFeed, Shares
from jetagent.jetstream.provision import consumer_config
from jetagent.logs import seconds
from jetagent.orchestrator._metrics import OrchestratorMetrics
from jetagent.subjects import Names, RequestSubject, family, parse

__all__ = ["Serving"]

log = logging.getLogger("jetagent.orchestrator")

_MAX_ATTEMPTS = 5
"""Deliveries of an input that fails unexpectedly before it is dead-lettered."""

_PRESENT_FOR_S = 0.5
"""How long a tenant counts as present after its last input was handled: long enough for
a short step's result to come back (it then finds the others still at their share),
short enough that a tenant gone leaves the whole concurrency to the one left."""


class Serving:
    """The orchestrator's consumers and what becomes of each message they deliver."""

    settings: Settings
    names: Names
    nc: NATS
    js: JetStreamContext
    settler: Settler
    metrics: OrchestratorMetrics
    processed: int
    _slots: asyncio.Semaphore
    _shares: Shares | None = None

    def shares(self) -> Shares:
        """The tenants' shares of this orchestrator, one for all its fair feeds: a tenant
        present in one (a request) is served quickly in the others (its results)."""
        if self._shares is None:
            self._shares = Shares(
                alone=self.settings.orchestrator_concurrency // 8,
                shared=self.settings.orchestrator_tenant_share,
                linger_s=_PRESENT_FOR_S,
            )
        return self._shares

    async def _serve(
        self, puller: Puller, handle: Callable[[Msg], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        async with asyncio.TaskGroup() as tasks:
            async for msg in puller.messages():
                await self._slots.acquire()
                tasks.create_task(self._handle(msg, handle, puller))
                if stop.is_set():
                    break

    async def _serve_fairly(
        self,
        puller: Puller,
        handle: Callable[[Msg], Awaitable[None]],
        stop: asyncio.Event,
        *,
        consumer: str,
    ) -> None:
        """Inputs in turns across tenants, not in stream order, a few at once of each
        while several tenants have inputs: one tenant's burst does not hold another
        tenant's requests or results back (jetstream/fair.py, docs/ARCHITECTURE.md §9)."""
        prefix = self.names.prefix

        def tenant(msg: Msg) -> str:
            where = parse(msg.subject, prefix=prefix)
            if isinstance(where, RequestSubject):
                return where.tenant
            return (msg.headers or {}).get(Header.JA_TENANT, "")

        ack_wait = consumer_config(self.settings, consumer)["ack_wait"] / 1e9
        shares = self.shares()
        async with (
            asyncio.TaskGroup() as tasks,
            FairFeed(puller, key=tenant, heartbeat_s=ack_wait / 3, shares=shares) as feed,
        ):
            while not stop.is_set():
                await self._slots.acquire()
                msg = await feed.next()
                if msg is None:
                    self._slots.release()
                    break
                tasks.create_task(self._handle(msg, handle, puller, feed))

    async def _handle(
        self,
        msg: Msg,
        handle: Callable[[Msg], Awaitable[None]],
        puller: Puller,
        feed: FairFeed | None = None,
    ) -> None:
        measured = self.metrics.input(msg.subject)
        # A scope for the ids the handling learns (workflow, tenant, step): on every log
        # line about this message, the retry lines below included (jetagent.correlation).
        with correlation.correlate():
            try:
                kind = family(msg.subject)
                with telemetry.span(
                    f"jetagent orchestrate {kind}", parent=msg.headers, kind=SpanKind.CONSUMER
                ):
                    await handle(msg)
                await self.settler.ack(msg)
                self.processed += 1
            except PoisonMessage as exc:
                # Permanent (unreadable, an impossible id, an untrusted result): answered
                # once with a dead letter, never retried.
                log.warning("%s message %s set aside: %s", exc.kind, msg.subject, exc.reason)
                measured.outcome = "dead_lettered"
                await self._dead_letter(msg, exc.kind, exc.reason, workflow_id=exc.workflow_id)
            except (JetStreamUnavailableError, NatsError) as exc:
                # Retried until the store answers (the consumers have no delivery limit: a
                # dropped step result or due timer would leave its workflow waiting
                # forever); every second at first, then less often through a long outage.
                deliveries = msg.metadata.num_delivered
                delay = min(2.0 ** max(deliveries - 10, 0), 30.0)
                log.warning(
                    "will retry %s in %s s (delivery %d): %s",
                    msg.subject,
                    seconds(delay),
                    deliveries,
                    exc,
                )
                measured.outcome = "retried"
                await self.settler.nak(msg, delay=delay)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                # Unreadable: no retry can help.
                log.exception("unreadable message %s goes to the dead-letter queue", msg.subject)
                measured.outcome = "dead_lettered"
                await self._dead_letter(msg, "poison", f"unreadable: {exc}")
            except Exception:
                # A bug, or a dependency in a bad state: retried a few times with backoff
                # (maybe another replica, or a restart, gets past it), then dead-lettered.
                deliveries = msg.metadata.num_delivered
                if deliveries < _MAX_ATTEMPTS:
                    delay = min(2.0**deliveries, 30.0)
                    measured.outcome = "retried"
                    log.exception(
                        "failed to process %s (delivery %d of %d); retrying in %s s",
                        msg.subject,
                        deliveries,
                        _MAX_ATTEMPTS,
                        seconds(delay),
                    )
                    await self.settler.nak(msg, delay=delay)
                else:
                    measured.outcome = "dead_lettered"
                    log.exception(
                        "failed to process %s; it goes to the dead-letter queue", msg.subject
                    )
                    await self._dead_letter(msg, "failed", "processing failed after retries")
            finally:
                measured.done()
                self._slots.release()
                if feed is not None:
                    feed.release(msg)
                await puller.done()

    async def _dead_letter(
        self, msg: Msg, kind: DeadLetterKind, reason: str, *, workflow_id: str | None = None
    ) -> None:
        error = traceback.format_exc(limit=3) if kind == "failed" else ""
        letter = dead_letter_of(
            msg,
            source="orchestrator",
            kind=kind,
            reason=reason,
            workflow_id=workflow_id,
            error=error,
        )
        if await publish_dead_letter(self.nc, self.names, letter):
            await self.settler.term(msg)
