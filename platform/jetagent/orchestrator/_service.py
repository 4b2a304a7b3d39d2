"""The orchestrator: a process application over the Workflow aggregate.

It follows ``JA_REQUESTS`` (requests, cancels, signals), ``JA_STEPS`` (step results) and
``JA_TIMERS`` (deadlines and other durable timers, see ``jetagent.orchestrator.timers``) through
durable pull consumers shared by every replica. It turns each message into an input
(``jetagent.orchestrator.inputs``, the translation replay runs too), loads the workflow,
asks the pure ``decide`` what to record, appends those events with an aggregate-wide
concurrency check, and only then acknowledges the message.

Exactly once: every event carries its cause (``Ja-Causation``: the upstream stream and
sequence) in the same message, and the workflow's state knows which inputs it folded
(a step completes once, a request starts once), so a redelivered message decides
nothing new. A concurrency conflict (another replica appended first) is resolved by
catching up and deciding again; a crash between two events of one decision is completed
by the redelivery, because ``decide`` derives the rest from the state.

Reads that decide are consistent (docs/ARCHITECTURE.md §5.8): a result carries the
workflows stream's sequence of the step it answers (``Ja-Scheduled-Seq``), and the
workflow is read at least up to it before the result is judged; a refused append names
the workflow's true last sequence, and the catch-up reads up to that; and before a
negative decision — a result that matches no scheduled step, an input with nothing to
decide — the workflow is read up to the head its stream's *leader* reports, since a
replica that is behind answers "nothing more" too. Acks, naks and terms are confirmed by
the server and sent again until they are (:class:`~jetagent.jetstream.Settler`), so
none is lost while a consumer elects a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind

from jetagent import correlation, telemetry
from jetagent.config import Settings
from jetagent.contract import Status
from jetagent.dead_letter import DeadLetterKind, dead_letter_of, publish_dead_letter
from jetagent.decoding import PoisonMessage, UntrustedResult
from jetagent.errors import JetagentError
from jetagent.events import StepScheduled, WorkflowEvent, group_for_messages
from jetagent.jetstream import (
    AggregateStream,
    ConcurrencyConflict,
    JetStreamUnavailableError,
    Settler,
)
from jetagent.jetstream.consume import Puller
from jetagent.jetstream.headers import Header
from jetagent.jetstream.provision import provision
from jetagent.logs import seconds
from jetagent.models import ModelCatalog
from jetagent.orchestrator._metrics import OrchestratorMetrics
from jetagent.orchestrator.inputs import (
    Addressed,
    Admission,
    Message,
    Rejection,
    inputs_of,
    named_tools,
)
from jetagent.orchestrator.journal import Journal, Loaded
from jetagent.orchestrator.timers import Timers
from jetagent.payloads import PayloadStore
from jetagent.result_check import result_problem
from jetagent.subjects import family
from jetagent.tokens import openai_tokenizer
from jetagent.worker.registry import ToolRegistry
from jetagent.workflow import (
    Begin,
    DecideContext,
    FoldResult,
    Input,
    WorkflowState,
    decide,
)

if TYPE_CHECKING:
    from jetagent.events import StepResult

__all__ = ["Orchestrator"]

log = logging.getLogger("jetagent.orchestrator")

_MAX_CONFLICT_RETRIES = 50
_MAX_ATTEMPTS = 5
"""Deliveries of an input that fails unexpectedly before it is dead-lettered."""


def _now() -> datetime:
    return datetime.now(UTC)


def _scheduled_seq(message: Message) -> int:
    """The ``Ja-Scheduled-Seq`` a result carries (0: none, or not a sequence). Anyone
    allowed to write results can write any number here: it only says how far to read
    before judging, and the leader's answer bounds that read."""
    value = message.headers.get(Header.JA_SCHEDULED_SEQ, "")
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return 0


class Orchestrator:
    """One orchestrator replica. ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self, nc: NATS, settings: Settings, *, catalog: ModelCatalog | None = None
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.names = settings.names
        self.catalog = catalog or ModelCatalog.load(settings.models)
        self.js = nc.jetstream()
        self.aggregates = AggregateStream(
            nc, stream=self.names.workflows_stream, root=self.names.workflow_root
        )
        self.journal = Journal(
            self.js,
            self.aggregates,
            self.names,
            cache_size=settings.cache_size,
            snapshot_every=settings.snapshot_every,
        )
        self.payloads = PayloadStore(
            self.js,
            bucket=self.names.bucket("PAYLOADS"),
            threshold=settings.payload_threshold_bytes,
        )
        self.registry = ToolRegistry(self.js, self.names)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.timers = Timers(self.js, self.names, nc=nc)
        self.settler = Settler(nc)
        self._slots = asyncio.Semaphore(settings.orchestrator_concurrency)
        self.processed = 0
        self.metrics = OrchestratorMetrics()
        """This replica's own metrics (``jetagent orchestrator`` serves them on /metrics)."""
        self._context: DecideContext | None = None
        self._context_version = -1
        # Loaded once, outside the pure decisions (it may read a file or the network).
        uses_openai = any(m.provider == "openai" for m in self.catalog.models.values())
        self._tokenizer = openai_tokenizer() if uses_openai else None

    def context(self) -> DecideContext:
        """The decisions' static configuration; rebuilt only when the tools change."""
        if self._context is None or self._context_version != self.registry.version:
            self._context_version = self.registry.version
            self._context = DecideContext(
                models=self.catalog.models,
                tools=dict(self.registry.tools),
                max_step_attempts=self.settings.max_step_attempts,
                openai_tokenizer=self._tokenizer,
            )
        return self._context

    async def run(self, stop: asyncio.Event) -> None:
        await provision(self.nc, self.settings)
        await self.aggregates.open()
        await self.settler.start()
        await self.registry.start()
        requests = Puller(
            self.nc,
            stream=self.names.requests_stream,
            consumer="orchestrator-requests",
            max_in_flight=self.settings.orchestrator_concurrency,
        )
        steps = Puller(
            self.nc,
            stream=self.names.steps_stream,
            consumer="orchestrator-steps",
            max_in_flight=self.settings.orchestrator_concurrency,
        )
        timers = Puller(
            self.nc,
            stream=self.names.timers_stream,
            consumer="orchestrator-timers",
            max_in_flight=self.settings.orchestrator_concurrency,
        )
        await requests.start()
        await steps.start()
        await timers.start()
        log.info(
            "orchestrator ready (streams %s, %s)",
            self.names.requests_stream,
            self.names.steps_stream,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._serve(requests, self._on_request, stop))
                tasks.create_task(self._serve(steps, self._on_input, stop))
                tasks.create_task(self._serve(timers, self._on_input, stop))
                tasks.create_task(self.metrics.follow_consumers(self.js, self._consumers(), stop))
                await stop.wait()
                await requests.stop()
                await steps.stop()
                await timers.stop()
        finally:
            await self.settler.close(timeout=5.0)
            await self.registry.stop()
            await self.aggregates.close()

    def _consumers(self) -> list[tuple[str, str]]:
        names = self.names
        return [
            (names.requests_stream, "orchestrator-requests"),
            (names.steps_stream, "orchestrator-steps"),
            (names.timers_stream, "orchestrator-timers"),
        ]

    async def _serve(
        self, puller: Puller, handle: Callable[[Msg], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        async with asyncio.TaskGroup() as tasks:
            async for msg in puller.messages():
                await self._slots.acquire()
                tasks.create_task(self._handle(msg, handle, puller))
                if stop.is_set():
                    break

    async def _handle(
        self, msg: Msg, handle: Callable[[Msg], Awaitable[None]], puller: Puller
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
                # Permanent (unreadable, an impossible id, an untrusted result): answered once
                # with a dead letter, never retried.
                log.warning("%s message %s set aside: %s", exc.kind, msg.subject, exc.reason)
                measured.outcome = "dead_lettered"
                await self._dead_letter(msg, exc.kind, exc.reason, workflow_id=exc.workflow_id)
            except (JetStreamUnavailableError, NatsError) as exc:
                # Retried until the store answers (the consumers have no delivery limit: a
                # dropped step result or due timer would leave its workflow waiting forever);
                # every second at first, then less often through a long outage.
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
                await puller.done()

    async def _dead_letter(
        self, msg: Msg, kind: DeadLetterKind, reason: str, *, workflow_id: str | None = None
    ) -> None:
        import traceback

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

    # ------------------------------------------------------------------ inputs

    def admission(self) -> Admission:
        """What requests are checked against now (the registry's tools change)."""
        return Admission(
            models=set(self.catalog.models),
            tools=set(self.registry.tools),
            tenants=self.settings.tenant_set,
            unserved=self.registry.unserved(),
            max_request_bytes=self.settings.max_request_bytes,
            default_tenant=self.settings.default_tenant,
            early_input_wait=timedelta(seconds=self.settings.early_input_wait_s),
        )

    async def _on_input(self, msg: Msg) -> None:
        """Translate a request, cancel, signal, step result or due timer (``inputs_of``,
        which replay runs too) and decide on it."""
        message = Message.delivered(msg)
        at = _now()
        prefix = self.names.prefix
        made = inputs_of(message, prefix=prefix, at=at, admission=self.admission)
        if isinstance(made, Rejection) and self.settings.tool_wait_s > 0:
            # Start order need not matter: a tool whose worker is still starting is
            # waited for, within JETAGENT_TOOL_WAIT_S, before the request is refused.
            named = named_tools(message.data)
            if named and await self._wait_for_tools(msg, named):
                made = inputs_of(message, prefix=prefix, at=at, admission=self.admission)
        match made:
            case Rejection():
                await self._reject(message, made)
            case Addressed(workflow_id, FoldResult() as fold):
                await self.process(
                    workflow_id, fold, message, trust=fold.result, need=_scheduled_seq(message)
                )
            case Addressed(workflow_id, command):
                await self.process(workflow_id, command, message)

    # The requests consumer's handler by its own name: tests hold requests back with it.
    _on_request = _on_input

    async def _wait_for_tools(self, msg: Msg, names: set[str]) -> bool:
        deadline = time.monotonic() + self.settings.tool_wait_s
        while (left := deadline - time.monotonic()) > 0:
            if await self.registry.wait_served(names, min(left, 10.0)):
                return True
            with contextlib.suppress(NatsError):
                await msg.in_progress()  # well inside the requests consumer's ack wait
        return False

    async def _reject(self, message: Message, rejection: Rejection) -> None:
        workflow_id, event = rejection.workflow_id, rejection.event()
        correlation.annotate(workflow_id=workflow_id, tenant=rejection.tenant)
        log.info("rejected request %s: %s", workflow_id, "; ".join(rejection.reasons))
        self.metrics.rejected()
        headers = self._causation(message)
        async with self._locks[workflow_id]:
            # Expected sequence 0: if the id already names a workflow (or an earlier
            # rejection), the append is refused and the rejection is not recorded again.
            with contextlib.suppress(ConcurrencyConflict):
                try:
                    await self.journal.append(
                        workflow_id, Loaded(WorkflowState(), 0), [event], headers
                    )
                except ConcurrencyConflict as conflict:
                    # Only cancels or signals kept for it so far: it still never started.
                    loaded = await self.journal.load(workflow_id, need=conflict.actual or 0)
                    if loaded.state.status is not Status.QUEUED:
                        raise
                    await self.journal.append(workflow_id, loaded, [event], headers)
            # A rejection is final: no lock to keep for it (anyone can send rejections).
            self._locks.pop(workflow_id, None)

    async def _check_trusted(
        self, workflow_id: str, loaded: Loaded, subject: str, result: StepResult
    ) -> None:
        """Raise ``UntrustedResult`` unless the result answers a step as it was scheduled."""
        prefix = self.names.prefix
        problem = result_problem(subject, result, loaded.state, prefix=prefix)
        if problem is not None:
            # The cache, or the replica that answered, may be behind (another replica
            # scheduled the step a moment ago): judge only on what the leader has.
            await self.journal.catch_up_to_head(workflow_id, loaded)
            problem = result_problem(subject, result, loaded.state, prefix=prefix)
        if problem is not None:
            if loaded.seq == 0:
                # No such workflow: keep no lock or cache entry for an id anyone can invent.
                self._locks.pop(workflow_id, None)
                self.journal.forget(workflow_id)
            raise UntrustedResult(f"untrusted step result: {problem}", workflow_id=workflow_id)

    def _causation(self, message: Message | None) -> dict[str, str]:
        if message is None:
            return {}
        # The events continue this decision's trace: workers' spans become its children.
        return telemetry.inject({Header.JA_CAUSATION: message.causation}, parent=message.headers)

    # ---------------------------------------------------------------- deciding

    async def process(
        self,
        workflow_id: str,
        command: Input,
        message: Message | None = None,
        *,
        trust: StepResult | None = None,
        need: int = 0,
    ) -> None:
        """Decide on ``command`` (translated from ``message``) and record the events,
        retrying on conflicts.

        ``trust``: a step result, checked against the workflow (and the message's
        subject) first. ``need``: a sequence of the workflow's that the decision must
        see (a result's ``Ja-Scheduled-Seq``).
        """
        correlation.annotate(workflow_id=workflow_id)
        if isinstance(command, Begin):
            correlation.annotate(tenant=command.tenant)
        elif isinstance(command, FoldResult):
            result = command.result
            correlation.annotate(
                step_id=result.step_id, capability=result.capability, tool=result.tool
            )
        headers = self._causation(message)
        async with self._locks[workflow_id]:
            if isinstance(command, Begin) and not self.journal.is_cached(workflow_id):
                # A new request names a new workflow: no read before its first append.
                # If it exists after all (a redelivery), the append's check says so.
                loaded = Loaded(WorkflowState(), 0)
            else:
                loaded = await self.journal.load(workflow_id, need=need)
                correlation.annotate(tenant=loaded.state.tenant or None)
            if trust is not None:
                subject = message.subject if message is not None else ""
                await self._check_trusted(workflow_id, loaded, subject, trust)
            before = loaded.state.status
            for _ in range(_MAX_CONFLICT_RETRIES):
                try:
                    await self._decide_and_append(workflow_id, loaded, command, headers)
                    break
                except ConcurrencyConflict as conflict:
                    self.metrics.conflict(command)
                    # The refusal names the workflow's true last sequence: read up to it.
                    if conflict.actual:
                        await self.journal.catch_up(workflow_id, loaded, need=conflict.actual)
                    else:
                        await self.journal.catch_up_to_head(workflow_id, loaded)
            else:
                raise JetagentError(f"workflow {workflow_id}: too many concurrent writers")
            await self.timers.follow(workflow_id, command, before, loaded.state)
            if loaded.state.status.is_final:
                self._locks.pop(workflow_id, None)

    async def _decide_and_append(
        self, workflow_id: str, loaded: Loaded, command: Input, headers: dict[str, str]
    ) -> None:
        events = decide(loaded.state, command, self.context())
        if not events:
            # "Nothing to do" from a cached state, or from a replica that is behind, may
            # only mean the state is behind (another replica scheduled the step this
            # result is for): read up to the leader's head, then decide again. The input
            # is acknowledged as done only on that. Appends need no such look: their
            # concurrency check catches staleness.
            seq = loaded.seq
            await self.journal.catch_up_to_head(workflow_id, loaded)
            if loaded.seq != seq:
                events = decide(loaded.state, command, self.context())
        # One message per group: a usual step's StepCompleted + next StepScheduled is one
        # write (one acknowledged round trip), each group still checked against the last.
        for group in group_for_messages(events):
            checked = [await self._claim_check(e) for e in group]
            await self.journal.append(workflow_id, loaded, checked, headers)
        self.metrics.decided(command, len(events))

    async def _claim_check(self, event: WorkflowEvent) -> WorkflowEvent:
        if isinstance(event, StepScheduled):
            shrunk = await self.payloads.shrink(event.input)
            if shrunk is not event.input:
                return msgspec.structs.replace(event, input=shrunk)
        return event
