"""The orchestrator: a process application over the Workflow aggregate.

It follows ``JA_REQUESTS`` (requests, cancels, signals) and ``JA_STEPS`` (step results)
through durable pull consumers shared by every replica. For each message it loads the
workflow, asks the pure ``decide`` what to record, appends those events one by one with
an aggregate-wide concurrency check, and only then acknowledges the message.

Exactly once: every event carries its cause (``Ja-Causation``: the upstream stream and
sequence) in the same message, and the workflow's state knows which inputs it folded
(a step completes once, a request starts once), so a redelivered message decides
nothing new. A concurrency conflict (another replica appended first) is resolved by
catching up and deciding again; a crash between two events of one decision is completed
by the redelivery, because ``decide`` derives the rest from the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind

from jetagent import telemetry
from jetagent.config import Settings
from jetagent.consume import Puller
from jetagent.contract import validate_request
from jetagent.errors import JetagentError
from jetagent.events import (
    CancelRequested,
    RequestRejected,
    SignalSent,
    StepScheduled,
    WorkflowEvent,
    decode_step_result,
    group_for_messages,
)
from jetagent.journal import Journal, Loaded
from jetagent.models import ModelCatalog
from jetagent.payloads import PayloadStore
from jetagent.provision import provision
from jetagent.registry import ToolRegistry
from jetagent.store import AggregateStream, ConcurrencyConflict, StoreUnavailableError
from jetagent.tokens import openai_tokenizer
from jetagent.workflow import (
    Begin,
    Cancel,
    DecideContext,
    FoldResult,
    Input,
    Signal,
    Tick,
    WorkflowState,
    decide,
)

__all__ = ["Orchestrator"]

log = logging.getLogger("jetagent.orchestrator")

_MAX_CONFLICT_RETRIES = 50
_MAX_ATTEMPTS = 5
"""Deliveries of an input that fails unexpectedly before it is dead-lettered."""


def _now() -> datetime:
    return datetime.now(UTC)


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
        self._deadlines: list[tuple[datetime, str]] = []
        self._slots = asyncio.Semaphore(settings.orchestrator_concurrency)
        self.processed = 0
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
        await requests.start()
        await steps.start()
        log.info(
            "orchestrator ready (streams %s, %s)",
            self.names.requests_stream,
            self.names.steps_stream,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._serve(requests, self._on_request, stop))
                tasks.create_task(self._serve(steps, self._on_step_result, stop))
                tasks.create_task(self._deadline_ticker(stop))
                await stop.wait()
                await requests.stop()
                await steps.stop()
        finally:
            await self.registry.stop()
            await self.aggregates.close()

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
        try:
            kind = msg.subject.split(".", 2)[1]
            with telemetry.span(
                f"jetagent orchestrate {kind}", parent=msg.headers, kind=SpanKind.CONSUMER
            ):
                await handle(msg)
            await msg.ack()
            self.processed += 1
        except (StoreUnavailableError, NatsError) as exc:
            log.warning("will retry %s: %s", msg.subject, exc)
            with contextlib.suppress(NatsError):
                await msg.nak(delay=1.0)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Unreadable: no retry can help.
            log.exception("unreadable message %s goes to the dead-letter queue", msg.subject)
            await self._dead_letter(msg, "orchestrator")
        except Exception:
            # A bug, or a dependency in a bad state: retried a few times with backoff
            # (maybe another replica, or a restart, gets past it), then dead-lettered.
            deliveries = msg.metadata.num_delivered
            if deliveries < _MAX_ATTEMPTS:
                log.exception(
                    "failed to process %s (attempt %d); retrying", msg.subject, deliveries
                )
                with contextlib.suppress(NatsError):
                    await msg.nak(delay=min(2.0**deliveries, 30.0))
            else:
                log.exception("failed to process %s; it goes to the dead-letter queue", msg.subject)
                await self._dead_letter(msg, "orchestrator")
        finally:
            self._slots.release()
            await puller.done()

    async def _dead_letter(self, msg: Msg, source: str) -> None:
        import traceback

        meta = msg.metadata
        body = {
            "source": source,
            "subject": msg.subject,
            "stream": meta.stream,
            "stream_seq": meta.sequence.stream,
            "deliveries": meta.num_delivered,
            "error": traceback.format_exc(limit=3),
        }
        with contextlib.suppress(NatsError):
            await self.js.publish(self.names.dlq(source), msgspec.json.encode(body))
            await msg.term()

    # ------------------------------------------------------------------ inputs

    async def _on_request(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        kind = tokens[1]
        at = _now()
        if kind == "request":
            await self._on_workflow_request(msg, tokens[2] if len(tokens) > 2 else None, at)
        elif kind == "cancel":
            cancel = msgspec.json.decode(msg.data, type=CancelRequested)
            await self.process(
                cancel.workflow_id, Cancel(at=at, reason=cancel.reason, by=cancel.by), msg
            )
        elif kind == "signal":
            signal = msgspec.json.decode(msg.data, type=SignalSent)
            await self.process(
                signal.workflow_id,
                Signal(name=signal.name, payload=signal.payload, by=signal.by, at=at),
                msg,
            )

    async def _on_workflow_request(self, msg: Msg, tenant: str | None, at: datetime) -> None:
        headers = msg.headers or {}
        msg_id = headers.get("Nats-Msg-Id")
        request, problems = validate_request(
            msg.data,
            subject_tenant=tenant,
            tenants=self.settings.tenant_set,
            tools=set(self.registry.tools),
            models=set(self.catalog.models),
            max_bytes=self.settings.max_request_bytes,
            default_tenant=self.settings.default_tenant,
        )
        if request is not None and msg_id and msg_id != request.request_id:
            problems = [f"Nats-Msg-Id {msg_id!r} differs from request_id {request.request_id!r}"]
            request = None
        if request is None:
            await self._reject(msg, msg_id, tenant, problems, at)
            return
        deadline = request.capability_limits.deadline_s
        deadline_at = at + timedelta(seconds=deadline) if deadline else None
        begin = Begin(
            workflow_id=request.request_id,
            tenant=request.tenant,
            request=request.model_dump(mode="json"),
            at=at,
            deadline_at=deadline_at,
        )
        await self.process(request.request_id, begin, msg)

    async def _reject(
        self, msg: Msg, msg_id: str | None, tenant: str | None, problems: list[str], at: datetime
    ) -> None:
        # The sender follows <prefix>.wf.<request_id>.>: use the request's id when it can
        # be read, else the Nats-Msg-Id, else the stream sequence.
        workflow_id = _readable_request_id(msg.data) or _safe_token(msg_id)
        if workflow_id is None:
            workflow_id = f"seq-{msg.metadata.sequence.stream}"
        event = RequestRejected(
            workflow_id=workflow_id, at=at, reasons=problems, tenant=tenant, size=len(msg.data)
        )
        log.info("rejected request %s: %s", workflow_id, "; ".join(problems))
        async with self._locks[workflow_id]:
            # Expected sequence 0: if the id already names a workflow (or an earlier
            # rejection), the append is refused and the rejection is not recorded again.
            with contextlib.suppress(ConcurrencyConflict):
                await self.journal.append(
                    workflow_id, Loaded(WorkflowState(), 0), [event], self._causation(msg)
                )

    async def _on_step_result(self, msg: Msg) -> None:
        result = decode_step_result(msg.data)
        command = FoldResult(result=result, result_seq=msg.metadata.sequence.stream, at=_now())
        await self.process(result.workflow_id, command, msg)

    def _causation(self, msg: Msg | None) -> dict[str, str]:
        if msg is None:
            return {}
        meta = msg.metadata
        # The events continue this decision's trace: workers' spans become its children.
        return telemetry.inject(
            {"Ja-Causation": f"{meta.stream}:{meta.sequence.stream}"}, parent=msg.headers
        )

    # ---------------------------------------------------------------- deciding

    async def process(self, workflow_id: str, command: Input, msg: Msg | None = None) -> None:
        """Decide on ``command`` and record the events, retrying on conflicts."""
        headers = self._causation(msg)
        async with self._locks[workflow_id]:
            if isinstance(command, Begin) and not self.journal.is_cached(workflow_id):
                # A new request names a new workflow: no read before its first append.
                # If it exists after all (a redelivery), the append's check says so.
                loaded = Loaded(WorkflowState(), 0)
            else:
                loaded = await self.journal.load(workflow_id)
            for _ in range(_MAX_CONFLICT_RETRIES):
                try:
                    await self._decide_and_append(workflow_id, loaded, command, headers)
                    break
                except ConcurrencyConflict:
                    await self.journal.catch_up(workflow_id, loaded)
            else:
                raise JetagentError(f"workflow {workflow_id}: too many concurrent writers")
            self._track_deadline(workflow_id, loaded)
            if loaded.state.status.is_final:
                self._locks.pop(workflow_id, None)

    async def _decide_and_append(
        self, workflow_id: str, loaded: Loaded, command: Input, headers: dict[str, str]
    ) -> None:
        events = decide(loaded.state, command, self.context())
        if not events:
            # "Nothing to do" from a cached state may only mean the cache is behind
            # (another replica scheduled the step this result is for): look, then decide
            # again. Appends need no such look: their concurrency check catches staleness.
            seq = loaded.seq
            await self.journal.catch_up(workflow_id, loaded)
            if loaded.seq != seq:
                events = decide(loaded.state, command, self.context())
        # One message per group: a usual step's StepCompleted + next StepScheduled is one
        # write (one acknowledged round trip), each group still checked against the last.
        for group in group_for_messages(events):
            checked = [await self._claim_check(e) for e in group]
            await self.journal.append(workflow_id, loaded, checked, headers)

    async def _claim_check(self, event: WorkflowEvent) -> WorkflowEvent:
        if isinstance(event, StepScheduled):
            shrunk = await self.payloads.shrink(event.input)
            if shrunk is not event.input:
                return msgspec.structs.replace(event, input=shrunk)
        return event

    def _track_deadline(self, workflow_id: str, loaded: Loaded) -> None:
        state = loaded.state
        if state.deadline_at is not None and not state.status.is_final:
            heapq.heappush(self._deadlines, (state.deadline_at, workflow_id))

    async def _deadline_ticker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            now = _now()
            due = []
            while self._deadlines and self._deadlines[0][0] <= now:
                due.append(heapq.heappop(self._deadlines)[1])
            for workflow_id in set(due):
                try:
                    await self.process(workflow_id, Tick(at=now))
                except Exception:
                    log.exception("deadline check of %s failed", workflow_id)


def _readable_request_id(data: bytes) -> str | None:
    try:
        raw: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(raw, dict):
        return _safe_token(raw.get("request_id"))
    return None


def _safe_token(value: object) -> str | None:
    from re import fullmatch

    if isinstance(value, str) and fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        return value
    return None
