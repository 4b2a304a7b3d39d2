"""The orchestrator: a process application over the Workflow aggregate.

It follows ``JA_REQUESTS`` (requests, cancels, signals), ``JA_STEPS`` (step results) and
``JA_TIMERS`` (deadlines and other durable timers, see ``jetagent.orchestrator.timers``) through
durable pull consumers shared by every replica. It turns each message into an input
(``jetagent.orchestrator.inputs``, the translation replay runs too), loads the workflow,
asks the pure ``decide`` what to record, appends those events with an aggregate-wide
concurrency check, and only then acknowledges the message.

Tenant quotas (``jetagent.orchestrator._admission`` for concurrency, ``rates`` for tokens per
minute) are measured here, around the pure decisions, and what they measured goes into the
decision's input, so the record says why a request was held or a step waited. (A little
over 400 lines: the decision loop with the quota hooks it calls; how inputs are consumed
is ``_serving``, the quotas themselves ``_admission``, ``quotas`` and ``rates``.)

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
import dataclasses
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from jetagent import correlation, telemetry
from jetagent.config import Settings
from jetagent.contract import Status
from jetagent.decoding import UntrustedResult
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
from jetagent.models import ModelCatalog
from jetagent.orchestrator._admission import Admissions, Refusal, StartNow
from jetagent.orchestrator._metrics import OrchestratorMetrics
from jetagent.orchestrator._serving import Serving
from jetagent.orchestrator.inputs import (
    Addressed,
    Admission,
    Message,
    Rejection,
    inputs_of,
    named_tools,
)
from jetagent.orchestrator.journal import Journal, Loaded
from jetagent.orchestrator.quotas import Slots
from jetagent.orchestrator.rates import TokenBuckets, tokens_of, under_rate
from jetagent.orchestrator.timers import Timers
from jetagent.payloads import PayloadStore
from jetagent.result_check import result_problem
from jetagent.tokens import openai_tokenizer
from jetagent.worker.registry import ToolRegistry
from jetagent.workflow import (
    Admit,
    Begin,
    DecideContext,
    FoldResult,
    Hold,
    Input,
    RateLimited,
    WorkflowState,
    decide,
)

if TYPE_CHECKING:
    from jetagent.events import StepResult

__all__ = ["Orchestrator"]

log = logging.getLogger("jetagent.orchestrator")

_MAX_CONFLICT_RETRIES = 50


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


class Orchestrator(Serving):
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
        self.tokens = TokenBuckets(self.js, self.names)
        self.admissions = Admissions(
            settings, Slots(self.js, self.names), self.tokens, self.timers, self.aggregates
        )
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
            # A window beyond the inputs in progress, taken round robin across tenants.
            max_in_flight=self.settings.orchestrator_concurrency + self.settings.request_lookahead,
        )
        steps = Puller(
            self.nc,
            stream=self.names.steps_stream,
            consumer="orchestrator-steps",
            max_in_flight=self.settings.orchestrator_concurrency + self.settings.request_lookahead,
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
                tasks.create_task(
                    self._serve_fairly(
                        requests, self._on_request, stop, consumer="orchestrator-requests"
                    )
                )
                tasks.create_task(
                    self._serve_fairly(steps, self._on_input, stop, consumer="orchestrator-steps")
                )
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
            case Addressed(workflow_id, Begin() as begin):
                await self._begin(workflow_id, begin, message)
            case Addressed(workflow_id, Admit() as admit):
                await self._admit(workflow_id, admit, message)
            case Addressed(workflow_id, command):
                await self.process(workflow_id, command, message)

    # The requests consumer's handler by its own name: tests hold requests back with it.
    _on_request = _on_input

    async def _begin(self, workflow_id: str, begin: Begin, message: Message) -> None:
        """A valid request: started, held or refused by its tenant's quota."""
        admitted = await self.admissions.begin(begin)
        match admitted:
            case Refusal(quota, reason):
                refusal = Rejection(
                    workflow_id=workflow_id,
                    tenant=begin.tenant,
                    reasons=[f"{reason}; try again later"],
                    size=len(message.data),
                    at=_now(),
                    quota=quota,
                )
                await self._reject(message, refusal)
            case Hold():
                await self.process(workflow_id, dataclasses.replace(begin, hold=admitted), message)
            case StartNow():
                # Its slot is taken: translated again now, as replay translates it at its
                # Started's time (one translation, docs/ARCHITECTURE.md §4).
                prefix = self.names.prefix
                made = inputs_of(message, prefix=prefix, at=_now(), admission=self.admission)
                match made:
                    case Rejection():
                        await self._reject(message, made)  # its slot is reclaimed later
                    case Addressed(_, Begin() as now):
                        await self.process(workflow_id, now, message)
            case None:
                await self.process(workflow_id, begin, message)

    async def _admit(self, workflow_id: str, admit: Admit, message: Message) -> None:
        """A held workflow woken (a slot was freed for it) or rechecking: start it if it
        holds a slot, else look again later."""
        loaded = await self.journal.load(workflow_id)
        if loaded.state.held is None:
            await self.journal.catch_up(workflow_id, loaded)  # the cache may be behind
        if loaded.seq == 0:
            # Promoted in the instant between its hold being counted and recorded (or
            # its orchestrator died in between, and its request comes again): soon.
            self.journal.forget(workflow_id)
            raise JetStreamUnavailableError(f"{workflow_id} was woken before its hold was recorded")
        state = loaded.state
        if state.held is None or state.status is not Status.QUEUED:
            if state.status.is_final:
                await self.admissions.end(state.tenant, workflow_id)  # a stale place
            return
        if await self.admissions.claim(state.tenant, workflow_id):
            await self.process(workflow_id, Admit(at=_now()), message)
        else:
            await self.admissions.recheck_later(workflow_id)

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
            before, was = loaded.state.status, loaded.state
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
            await self.admissions.follow(workflow_id, command, was, loaded.state)
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
        before = loaded.state
        tenant = before.tenant or (command.tenant if isinstance(command, Begin) else "")
        events, charged = await self._rate(tenant, before, command, events)
        recorded: list[WorkflowEvent] = []
        try:
            # One message per group: a usual step's StepCompleted + next StepScheduled is
            # one write (one acknowledged round trip), each group checked against the last.
            for group in group_for_messages(events):
                checked = [await self._claim_check(e) for e in group]
                await self.journal.append(workflow_id, loaded, checked, headers)
                recorded += group
        except ConcurrencyConflict:
            # Tokens taken for steps another replica's decision replaces are given back.
            unused = charged - sum(tokens_of(before, recorded))
            if charged and unused:
                per_minute = self.settings.quotas_of(tenant).tokens_per_minute
                await self.tokens.give_back(tenant, unused, per_minute=per_minute)
            raise
        self.metrics.decided(command, len(events))

    async def _rate(
        self, tenant: str, state: WorkflowState, command: Input, events: list[WorkflowEvent]
    ) -> tuple[list[WorkflowEvent], int]:
        """The decision under its tenant's tokens per minute (``rates.under_rate``)."""
        per_minute = self.settings.quotas_of(tenant).tokens_per_minute
        if not per_minute:
            return events, 0

        def throttled(limited: RateLimited) -> list[WorkflowEvent]:
            return decide(state, command, self.context(), rate=limited)

        return await under_rate(self.tokens, tenant, state, events, per_minute, throttled)

    async def _claim_check(self, event: WorkflowEvent) -> WorkflowEvent:
        if isinstance(event, StepScheduled):
            shrunk = await self.payloads.shrink(event.input)
            if shrunk is not event.input:
                return msgspec.structs.replace(event, input=shrunk)
        return event
