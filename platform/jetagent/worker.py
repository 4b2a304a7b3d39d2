"""The worker runtime: run capability handlers on their own durable consumers.

A capability is a typed async handler registered by name::

    @capability("tools")
    async def run_tool(step: StepContext) -> StepOutput: ...

For each capability the runtime keeps one durable pull consumer (``cap-<name>``) on the
capability's ``StepScheduled`` subjects, shared by every replica, and runs up to
``concurrency`` steps at once. While a step runs it sends in-progress acks; a
``TransientError`` is retried with ``nak(delay)`` (after ``retry_after``, or a backoff);
a ``RateLimitedError`` is waited out inside the same delivery, so it never counts as a
failed attempt; a ``PermanentError``, or the last allowed delivery failing, produces a
failed ``StepResult`` and a ``JA_DLQ`` entry. ``StepResult`` is write-once per step
(expected last subject sequence 0): a redelivered step whose result exists is simply
acknowledged. SIGTERM stops fetching and lets running steps finish (``shutdown_grace_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind

from jetagent import telemetry
from jetagent.config import Names, Settings
from jetagent.consume import Puller
from jetagent.errors import CapabilityError, PermanentError, RateLimitedError, TransientError
from jetagent.events import (
    CallRecord,
    RoutingDecision,
    Spend,
    StepError,
    StepResult,
    StepScheduled,
    decode_events,
    encode,
)
from jetagent.payloads import PayloadStore
from jetagent.provision import consumer_config, ensure_consumer, provision
from jetagent.registry import RegisteredTool, ToolRegistry
from jetagent.store import DirectGetter

__all__ = [
    "CapabilitySpec",
    "Handler",
    "StepContext",
    "StepOutput",
    "Worker",
    "capability",
]

log = logging.getLogger("jetagent.worker")

_MAX_RATE_LIMIT_WAIT_S = 120.0
_WRONG_LAST_SEQUENCE = 10071


class StepOutput(msgspec.Struct, kw_only=True):
    """What a handler returns: the output, and the provider calls it made."""

    output: dict[str, Any] = msgspec.field(default_factory=dict)
    calls: list[CallRecord] = msgspec.field(default_factory=list)
    routing: list[RoutingDecision] = msgspec.field(default_factory=list)


@dataclass(kw_only=True)
class StepContext:
    """One step, as a handler sees it."""

    workflow_id: str
    step_id: str
    capability: str
    tool: str | None
    attempt: int
    iteration: int
    tenant: str
    input: dict[str, Any]
    reservation: Spend
    deadline_at: datetime | None
    deliveries: int
    js: JetStreamContext
    """JetStream, for capabilities that keep data in KV or the object store."""
    payloads: PayloadStore
    names: Names
    _msg: Msg | None = field(default=None, repr=False)

    async def kv(self, bucket: str) -> KeyValue:
        """A platform KV bucket by its short name (``MEMORY`` → ``JA_MEMORY``)."""
        return await self.js.key_value(self.names.bucket(bucket))

    async def heartbeat(self) -> None:
        """Tell JetStream the step is still running (the runtime also does this itself)."""
        if self._msg is not None:
            with contextlib.suppress(NatsError):
                await self._msg.in_progress()


Handler = Callable[[StepContext], Awaitable[StepOutput | dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class CapabilitySpec:
    """A registered capability: its name, handler, concurrency and the tools it serves."""

    name: str
    handler: Handler
    concurrency: int | None = None
    tools: Sequence[RegisteredTool] = ()
    subjects: Sequence[str] | None = None
    """Override the consumer's filter subjects (a pool serving some tools only)."""
    consumer: str | None = None
    report: Callable[[], dict[str, Any]] | None = None
    """Status to publish every few seconds (circuit breakers), for the metrics."""
    close: Callable[[], Awaitable[None]] | None = None
    """Release what the handler holds (HTTP pools, process pools) when the worker stops;
    specs sharing one resource may share one ``close`` (it is called once)."""


def capability(
    name: str, *, concurrency: int | None = None, tools: Sequence[RegisteredTool] = ()
) -> Callable[[Handler], CapabilitySpec]:
    """Declare an async handler as the capability ``name``."""

    def wrap(handler: Handler) -> CapabilitySpec:
        return CapabilitySpec(name=name, handler=handler, concurrency=concurrency, tools=tools)

    return wrap


def _now() -> datetime:
    return datetime.now(UTC)


class Worker:
    """Serves one or more capabilities until stopped."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        specs: Sequence[CapabilitySpec],
        *,
        worker_id: str | None = None,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.names = settings.names
        self.specs = list(specs)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.js = nc.jetstream()
        self.payloads = PayloadStore(
            self.js,
            bucket=self.names.bucket("PAYLOADS"),
            threshold=settings.payload_threshold_bytes,
        )
        self._results = DirectGetter(nc, self.names.steps_stream, timeout=5.0)
        self._workflows = DirectGetter(nc, self.names.workflows_stream, timeout=5.0)
        self.completed = 0

    def _consumer_name(self, spec: CapabilitySpec) -> str:
        return spec.consumer or f"cap-{spec.name}"

    async def setup(self) -> None:
        """Provision, create the consumers and announce the tools (idempotent)."""
        await provision(self.nc, self.settings, consumers=False)
        registry = ToolRegistry(self.js, self.names)
        for spec in self.specs:
            config = consumer_config(self.settings, "capability", capability=spec.name)
            config["durable_name"] = self._consumer_name(spec)
            subjects = spec.subjects or self.names.step_scheduled(spec.name)
            config["filter_subjects"] = [s.replace("{p}", self.names.prefix) for s in subjects]
            config["ack_wait"] = int(self.settings.step_ack_wait_s * 1e9)
            config["max_deliver"] = self.settings.step_max_deliver
            backoff = config.get("backoff") or []
            config["backoff"] = backoff[: self.settings.step_max_deliver - 1]
            await ensure_consumer(self.nc, config)
            for tool in spec.tools:
                await registry.publish(tool)
        await self._results.open()
        await self._workflows.open()

    async def run(self, stop: asyncio.Event) -> None:
        await self.setup()
        async with asyncio.TaskGroup() as tasks:
            for spec in self.specs:
                tasks.create_task(self._serve(spec, stop))
            if any(spec.report for spec in self.specs):
                tasks.create_task(self._report(stop))
        await self._results.close()
        await self._workflows.close()
        for close in dict.fromkeys(s.close for s in self.specs if s.close):
            try:
                await close()
            except Exception:  # one resource failing to close must not keep the others
                log.exception("closing a capability's resources failed")

    async def _serve(self, spec: CapabilitySpec, stop: asyncio.Event) -> None:
        concurrency = spec.concurrency or self.settings.worker_concurrency
        consumer = self._consumer_name(spec)
        puller = Puller(
            self.nc,
            stream=self.names.workflows_stream,
            consumer=consumer,
            max_in_flight=concurrency,
        )
        await puller.start()

        async def on_advisory(msg: Msg) -> None:
            await self._on_max_deliveries(msg, spec)

        advisory = await self.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.names.workflows_stream}.{consumer}",
            cb=on_advisory,
        )
        log.info(
            "worker %s serving %s (consumer %s, concurrency %d)",
            self.worker_id,
            spec.name,
            consumer,
            concurrency,
        )
        running: set[asyncio.Task[None]] = set()

        async def pull() -> None:
            async for msg in puller.messages():
                task = asyncio.create_task(self._run_step(spec, msg, puller))
                running.add(task)
                task.add_done_callback(running.discard)

        pulling = asyncio.create_task(pull())
        try:
            await stop.wait()
        finally:
            await puller.stop()
            pulling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pulling
            with contextlib.suppress(NatsError):
                await advisory.unsubscribe()
            if running:
                log.info(
                    "waiting up to %.0f s for %d running %s steps",
                    self.settings.shutdown_grace_s,
                    len(running),
                    spec.name,
                )
                _, late = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
                for task in late:
                    task.cancel()  # its message is nak'd and redelivered elsewhere
                if late:
                    await asyncio.wait(late)

    async def _report(self, stop: asyncio.Event) -> None:
        """Publish each capability's status (breaker states) to the registry bucket."""
        registry = ToolRegistry(self.js, self.names)
        worker = re.sub(r"[^A-Za-z0-9_-]", "-", self.worker_id)
        while not stop.is_set():
            for spec in self.specs:
                if spec.report is None:
                    continue
                try:
                    status = {"at": time.time(), "worker": self.worker_id, **spec.report()}
                    kv = await registry.kv()
                    await kv.put(f"status.{spec.name}.{worker}", msgspec.json.encode(status))
                except Exception as exc:
                    log.warning("could not publish %s status: %s", spec.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=5.0)

    # -------------------------------------------------------------------- steps

    async def _run_step(self, spec: CapabilitySpec, msg: Msg, puller: Puller) -> None:
        try:
            with telemetry.span(
                f"jetagent step {spec.name}",
                parent=msg.headers,
                kind=SpanKind.CONSUMER,
                attributes={"jetagent.capability": spec.name},
            ):
                await self._step(spec, msg)
        except asyncio.CancelledError:
            with contextlib.suppress(NatsError):
                await msg.nak()
            raise
        except Exception:
            log.exception("step message %s could not be handled", msg.subject)
            with contextlib.suppress(NatsError):
                await msg.nak(delay=2.0)
        finally:
            await puller.done()

    async def _step(self, spec: CapabilitySpec, msg: Msg) -> None:
        try:
            # A StepScheduled ends its message (it may carry the decision's other events).
            event = decode_events(msg.data)[-1]
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
            await self._dead_letter(spec.name, msg, f"undecodable StepScheduled: {exc}")
            await msg.term()
            return
        if not isinstance(event, StepScheduled):
            await msg.term()
            return
        deliveries = msg.metadata.num_delivered
        result_subject = self.names.step_result(event.capability, event.workflow_id, event.step_id)
        if deliveries > 1 and await self._results.last(result_subject) is not None:
            await msg.ack()  # done before a crash or a lost ack: nothing to do again
            return
        started = _now()
        # In-progress acks only for steps that outlive a third of the ack wait: most steps
        # end long before, and need no timer task of their own.
        heartbeat = _Heartbeat(msg, max(self.settings.step_ack_wait_s / 3, 0.5))
        try:
            result = await self._execute(spec, event, msg, deliveries, started)
        finally:
            heartbeat.stop()
        if result is None:
            return  # nak'd for a retry
        await self._publish_result(result_subject, result, parent=msg.headers)
        await msg.ack()
        self.completed += 1

    async def _execute(
        self,
        spec: CapabilitySpec,
        event: StepScheduled,
        msg: Msg,
        deliveries: int,
        started: datetime,
    ) -> StepResult | None:
        calls: list[CallRecord] = []
        try:
            ctx = StepContext(
                workflow_id=event.workflow_id,
                step_id=event.step_id,
                capability=event.capability,
                tool=event.tool,
                attempt=event.attempt,
                iteration=event.iteration,
                tenant=event.tenant,
                # Walk the input for claim checks only when the message holds one.
                input=await self.payloads.expand(event.input)
                if b'"$ref"' in msg.data or b"ja-ref:" in msg.data
                else event.input,
                reservation=event.reservation,
                deadline_at=event.deadline_at,
                deliveries=deliveries,
                js=self.js,
                payloads=self.payloads,
                names=self.names,
                _msg=msg,
            )
            while True:
                try:
                    out = await spec.handler(ctx)
                    break
                except RateLimitedError as exc:
                    # Waited out within this delivery: not a failed attempt.
                    calls.extend(_billed(exc))
                    wait = min(exc.retry_after or 1.0, _MAX_RATE_LIMIT_WAIT_S)
                    log.info("step %s rate limited; retrying in %.1f s", event.step_id, wait)
                    await asyncio.sleep(wait)
            output = out if isinstance(out, StepOutput) else StepOutput(output=out)
            output.output = await self._shrink(output.output)
            return self._result(event, started, deliveries, ok=True, output=output, calls=calls)
        except TransientError as exc:
            calls.extend(_billed(exc))
            if deliveries < self.settings.step_max_deliver:
                delay = exc.retry_after or min(2.0**deliveries, 30.0)
                log.info("step %s: %s; retry in %.1f s", event.step_id, exc, delay)
                await msg.nak(delay=delay)
                return None
            await self._dead_letter(spec.name, msg, f"{type(exc).__name__}: {exc}")
            return self._failed(event, started, deliveries, exc, calls, retryable=True)
        except PermanentError as exc:
            calls.extend(_billed(exc))
            return self._failed(event, started, deliveries, exc, calls, retryable=False)
        except CapabilityError as exc:
            calls.extend(_billed(exc))
            return self._failed(event, started, deliveries, exc, calls, retryable=False)
        except Exception as exc:
            # A bug in a handler: retried like a transient error, then failed for good.
            log.exception("capability %s raised on step %s", spec.name, event.step_id)
            if deliveries < self.settings.step_max_deliver:
                await msg.nak(delay=min(2.0**deliveries, 30.0))
                return None
            await self._dead_letter(spec.name, msg, traceback.format_exc(limit=5))
            return self._failed(event, started, deliveries, exc, calls, retryable=False)

    async def _shrink(self, output: dict[str, Any]) -> dict[str, Any]:
        content = output.get("content")
        if isinstance(content, str) and len(content) > self.payloads.threshold:
            output = {**output, "content": await self.payloads.shrink_text(content)}
        return await self.payloads.shrink(output)

    def _result(
        self,
        event: StepScheduled,
        started: datetime,
        deliveries: int,
        *,
        ok: bool,
        output: StepOutput | None = None,
        error: StepError | None = None,
        calls: list[CallRecord] | None = None,
    ) -> StepResult:
        return StepResult(
            workflow_id=event.workflow_id,
            step_id=event.step_id,
            capability=event.capability,
            tool=event.tool,
            attempt=event.attempt,
            tenant=event.tenant,
            ok=ok,
            output=output.output if output else {},
            error=error,
            calls=[*(calls or []), *(output.calls if output else [])],
            routing=output.routing if output else [],
            started_at=started,
            finished_at=_now(),
            worker=self.worker_id,
            deliveries=deliveries,
        )

    def _failed(
        self,
        event: StepScheduled,
        started: datetime,
        deliveries: int,
        exc: BaseException,
        calls: list[CallRecord],
        *,
        retryable: bool,
    ) -> StepResult:
        error = StepError(type=type(exc).__name__, message=str(exc), retryable=retryable)
        return self._result(event, started, deliveries, ok=False, error=error, calls=calls)

    async def _publish_result(
        self, subject: str, result: StepResult, *, parent: dict[str, str] | None = None
    ) -> None:
        headers = telemetry.inject(
            {
                # Write-once by subject alone; no Nats-Msg-Id: anyone may set any id, and a
                # forged message with this result's id would have it dropped as a duplicate.
                "Nats-Expected-Last-Subject-Sequence": "0",
                "Ja-Event": "StepResult",
                "Ja-Workflow": result.workflow_id,
            },
            parent=parent,
        )
        reply = await self.nc.request(subject, encode(result), timeout=5.0, headers=headers)
        ack = msgspec.json.decode(reply.data)
        error = ack.get("error") if isinstance(ack, dict) else None
        if error and error.get("err_code") != _WRONG_LAST_SEQUENCE:
            raise TransientError(f"could not record the step result: {error.get('description')}")
        # 10071: a result for this step exists already (another replica finished it).

    async def _dead_letter(self, source: str, msg: Msg, error: str) -> None:
        meta = msg.metadata
        body = {
            "source": source,
            "subject": msg.subject,
            "stream": meta.stream,
            "stream_seq": meta.sequence.stream,
            "deliveries": meta.num_delivered,
            "error": error,
            "worker": self.worker_id,
        }
        with contextlib.suppress(NatsError):
            await self.js.publish(self.names.dlq(source), msgspec.json.encode(body))

    async def _on_max_deliveries(self, advisory: Msg, spec: CapabilitySpec) -> None:
        """A step was delivered ``max_deliver`` times without finishing (workers died)."""
        try:
            info = msgspec.json.decode(advisory.data)
            seq = int(info["stream_seq"])
            record = await self._workflows.scan(
                f"{self.names.workflow_root}.>", start_seq=seq, page=1, until=lambda r: True
            )
            if not record or record[0].seq != seq:
                return
            event = decode_events(record[0].data)[-1]
            if not isinstance(event, StepScheduled):
                return
            error = StepError(
                type="MaxDeliveriesExceeded",
                message=(
                    f"the step was delivered {info.get('deliveries')} times without "
                    "completing (the workers handling it stopped or timed out)"
                ),
                retryable=True,
            )
            result = self._result(
                event, _now(), int(info.get("deliveries", 0)), ok=False, error=error
            )
            await self._publish_result(
                self.names.step_result(event.capability, event.workflow_id, event.step_id), result
            )
            body = {"source": spec.name, "stream_seq": seq, "error": error.message}
            await self.js.publish(self.names.dlq(spec.name), msgspec.json.encode(body))
        except Exception:
            log.exception("handling a max-deliveries advisory failed")


def _billed(exc: CapabilityError) -> list[CallRecord]:
    """What a failed step's provider calls were billed: the attempts the error carries,
    or else its usage, so the cost of a failure is recorded too."""
    attempts = exc.details.get("attempts")
    if isinstance(attempts, list) and attempts:
        records = []
        for attempt in attempts:
            with contextlib.suppress(msgspec.ValidationError, TypeError):
                records.append(msgspec.convert(attempt, CallRecord, strict=False))
        return records
    if exc.usage is None:
        return []
    cost = exc.details.get("cost_usd")
    return [
        CallRecord(
            model=str(exc.details.get("model", "unknown")),
            provider=str(exc.details.get("provider", "unknown")),
            outcome="rate_limited" if isinstance(exc, RateLimitedError) else "failed",
            usage=exc.usage,
            cost_usd=None if cost is None else Decimal(str(cost)),
            error=str(exc),
        )
    ]


class _Heartbeat:
    """Sends ``in_progress()`` every ``interval`` seconds until stopped (timer, no task)."""

    def __init__(self, msg: Msg, interval: float) -> None:
        self._msg = msg
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._sending: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._beat)

    def _beat(self) -> None:
        self._sending = self._loop.create_task(self._send())
        self._handle = self._loop.call_later(self._interval, self._beat)

    async def _send(self) -> None:
        with contextlib.suppress(NatsError):
            await self._msg.in_progress()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()
