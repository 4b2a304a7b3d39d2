"""The worker runtime: run capability handlers on their own durable consumers.

A capability is a typed async handler registered by name::

    @capability("tools")
    async def run_tool(step: StepContext) -> StepOutput: ...

For each capability the runtime keeps one durable pull consumer (``cap-<name>``) on the
capability's ``StepScheduled`` subjects, shared by every replica, and runs up to
``concurrency`` steps at once. The consumer's ack wait is ``step_ack_wait_s`` and it has
no ``backoff`` (which would replace the ack wait); while a step runs the runtime sends
in-progress acks at a quarter of the ack wait, so a step whose worker lives is never
given to another worker, and one whose worker died runs again after the ack wait.

Retries come from a :class:`~jetagent.worker.retry.RetryPolicy` (count, time, the workflow's
deadline): a ``TransientError`` is retried with an explicit ``nak(delay)``; a
``RateLimitedError`` is waited out inside the same run a bounded number of times; a
``PermanentError``, or an exhausted retry budget, produces a failed ``StepResult`` and a
``JA_DLQ`` entry. The server redelivers without limit and the runtime counts: a
delivery past ``step_max_deliver`` (the runs before it all died) is finished as failed
without running the handler, so dead-lettering needs no advisory and no worker present
at the moment deliveries run out. Every provider call a handler reports with
:meth:`StepContext.record_call` is journaled as it completes (:mod:`jetagent.worker.calls`),
so the result of a step that ran more than once carries every run's calls.

``StepResult`` is write-once per step (expected last subject sequence 0): a redelivered
step whose result exists is simply acknowledged. SIGTERM stops fetching and lets
running steps finish (``shutdown_grace_s``).
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
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind

from jetagent import telemetry
from jetagent.config import Settings
from jetagent.dead_letter import DeadLetterKind, dead_letter_of, publish_dead_letter
from jetagent.errors import CapabilityError, PermanentError, RateLimitedError, TransientError
from jetagent.events import (
    CallRecord,
    StepError,
    StepResult,
    StepScheduled,
    decode_events,
)
from jetagent.jetstream import DirectGetter
from jetagent.jetstream.consume import Puller
from jetagent.jetstream.provision import consumer_config, ensure_consumer, provision
from jetagent.payloads import PayloadStore
from jetagent.worker import CapabilitySpec, Handler, StepContext, StepOutput, capability
from jetagent.worker._delivery import Heartbeat, billed, error_of, publish_result, routing_of, what
from jetagent.worker.calls import CallJournal
from jetagent.worker.registry import ToolRegistry
from jetagent.worker.retry import RetryPolicy

__all__ = [
    "CapabilitySpec",
    "Handler",
    "StepContext",
    "StepOutput",
    "Worker",
    "capability",
]

log = logging.getLogger("jetagent.worker")


def _now() -> datetime:
    return datetime.now(UTC)


_RUNNING: dict[tuple[str, str, str], asyncio.Future[None]] = {}
"""The steps this process is running, by (prefix, workflow id, step id); shared by every
worker of the process (replicas in one process, as in tests and ``jetagent up``)."""


class RateLimitRetriesExhausted(PermanentError):
    """A step's rate limits were waited out as often, or as long, as its bounds allow."""


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
        self.retry = RetryPolicy.from_settings(settings)
        # A tool's own retry budget (its registration) replaces the global one for its steps.
        self._tool_retry = {
            (spec.name, registered.spec.name): self.retry.for_tool(registered)
            for spec in self.specs
            for registered in spec.tools
        }
        self._results = DirectGetter(nc, self.names.steps_stream, timeout=5.0)
        self._calls = DirectGetter(nc, self.names.calls_stream, timeout=5.0)
        self.journal = CallJournal(self.js, self._calls, self.names, worker=self.worker_id)
        self.completed = 0

    def _consumer_name(self, spec: CapabilitySpec) -> str:
        return spec.consumer or f"cap-{spec.name}"

    def consumer_config(self, spec: CapabilitySpec) -> dict[str, Any]:
        """The durable consumer of ``spec``: the settings' ack wait, no backoff (it would
        replace the ack wait), and no server-side delivery limit (the runtime counts
        deliveries itself and finishes the last one, see :meth:`_exhausted`)."""
        config = consumer_config(self.settings, "capability", capability=spec.name)
        config["durable_name"] = self._consumer_name(spec)
        subjects = spec.subjects or self.names.step_scheduled(spec.name)
        config["filter_subjects"] = [self.names.fill(s) for s in subjects]
        config["ack_wait"] = int(self.settings.step_ack_wait_s * 1e9)
        config["max_deliver"] = -1
        config.pop("backoff", None)
        return config

    async def setup(self) -> None:
        """Provision, create or update the consumers and announce the tools (idempotent;
        a consumer provisioned with a ``backoff`` by an older release loses it here)."""
        await provision(self.nc, self.settings, consumers=False)
        registry = ToolRegistry(self.js, self.names)
        for spec in self.specs:
            await ensure_consumer(self.nc, self.consumer_config(spec))
            for tool in spec.tools:
                await registry.publish(tool)
        await self._results.open()
        await self._calls.open()

    async def run(self, stop: asyncio.Event) -> None:
        await self.setup()
        async with asyncio.TaskGroup() as tasks:
            for spec in self.specs:
                tasks.create_task(self._serve(spec, stop))
            if any(spec.report for spec in self.specs):
                tasks.create_task(self._report(stop))
        await self._results.close()
        await self._calls.close()
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
            await self._dead_letter(
                spec.name, msg, f"undecodable StepScheduled: {exc}", kind="poison"
            )
            await msg.term()
            return
        if not isinstance(event, StepScheduled):
            await msg.term()
            return
        deliveries = msg.metadata.num_delivered
        result_subject = self.names.step_result(event.capability, event.workflow_id, event.step_id)
        interval = max(self.settings.step_ack_wait_s / 4, 0.1)
        step_key = (self.names.prefix, event.workflow_id, event.step_id)
        earlier_run = _RUNNING.get(step_key)
        if earlier_run is not None:
            # Redelivered while this process still runs the step: a server down for longer
            # than the ack wait has lost the in-progress acks and hands it out again on
            # restart. The run that lives answers for it; this delivery waits for it.
            waiting = Heartbeat(msg, interval)
            try:
                await asyncio.shield(earlier_run)
            finally:
                waiting.stop()
            if await self._results.last(result_subject) is not None:
                await msg.ack()
                self.completed += 1
            # Else that run ended with a nak or term, which answered this message too
            # (acks are by stream sequence): nothing more to do with it here.
            return
        if deliveries > 1 and await self._results.last(result_subject) is not None:
            await msg.ack()  # done before a crash or a lost ack: nothing to do again
            return
        # In-progress acks well inside the ack wait, from the start of the run until its
        # result is recorded; the first only after a quarter of the ack wait (most steps
        # end long before, and need no timer task of their own).
        heartbeat = Heartbeat(msg, interval)
        result: StepResult | None
        this_run = asyncio.get_running_loop().create_future()
        _RUNNING[step_key] = this_run
        try:
            retry = self._retry_of(spec, event)
            if deliveries > retry.max_runs:
                result = await self._exhausted(spec, event, msg, deliveries)
            else:
                result = await self._execute(spec, event, msg, deliveries, _now(), retry)
            if result is None:
                return  # nak'd for a retry
            await self._publish_result(result_subject, result, parent=msg.headers)
        finally:
            heartbeat.stop()
            _RUNNING.pop(step_key, None)
            this_run.set_result(None)
        await msg.ack()
        self.completed += 1

    def _retry_of(self, spec: CapabilitySpec, event: StepScheduled) -> RetryPolicy:
        """The retry budget of a step: its tool's own, else the global one."""
        if event.tool is None:
            return self.retry
        return self._tool_retry.get((spec.name, event.tool), self.retry)

    async def _exhausted(
        self, spec: CapabilitySpec, event: StepScheduled, msg: Msg, deliveries: int
    ) -> StepResult:
        """A delivery past the last allowed run: every run before it died (or timed out)
        without a result. The step fails here, without running the handler again."""
        runs = deliveries - 1
        error = StepError(
            type="MaxDeliveriesExceeded",
            message=(
                f"the step ran {runs} times without completing (the workers running it "
                "stopped, or were lost, before it ended)"
            ),
            retryable=True,
        )
        log.warning("step %s/%s: %s", event.workflow_id, event.step_id, error.message)
        await self._dead_letter(spec.name, msg, error.message, workflow_id=event.workflow_id)
        earlier = await self.journal.earlier(event.workflow_id, event.step_id, deliveries)
        result = self._result(event, _now(), deliveries, ok=False, error=error)
        return msgspec.structs.replace(
            result, calls=earlier.calls, interrupted_runs=earlier.interrupted
        )

    async def _execute(
        self,
        spec: CapabilitySpec,
        event: StepScheduled,
        msg: Msg,
        deliveries: int,
        started: datetime,
        policy: RetryPolicy,
    ) -> StepResult | None:
        calls: list[CallRecord] = []
        ctx = StepContext(
            workflow_id=event.workflow_id,
            step_id=event.step_id,
            capability=event.capability,
            tool=event.tool,
            attempt=event.attempt,
            iteration=event.iteration,
            tenant=event.tenant,
            input=event.input,
            reservation=event.reservation,
            deadline_at=event.deadline_at,
            deliveries=deliveries,
            js=self.js,
            payloads=self.payloads,
            names=self.names,
            _msg=msg,
            _journal=self.journal,
        )
        try:
            # Walk the input for claim checks only when the message holds one.
            if b'"$ref"' in msg.data or b"ja-ref:" in msg.data:
                ctx.input = await self.payloads.expand(event.input)
            out = await self._call_handler(spec, ctx, event, calls, policy)
            output = out if isinstance(out, StepOutput) else StepOutput(output=out)
            output.output = await self._shrink(output.output)
            result = self._result(event, started, deliveries, ok=True, output=output)
        except TransientError as exc:
            calls.extend(billed(exc))
            retry = policy.next(
                run=deliveries,
                now=_now(),
                scheduled_at=event.at,
                deadline_at=event.deadline_at,
                retry_after=exc.retry_after,
            )
            if retry.delay_s is not None:
                log.info(
                    "step %s/%s (%s): %s; run %d again in %.1f s",
                    event.workflow_id,
                    event.step_id,
                    what(event),
                    exc,
                    deliveries + 1,
                    retry.delay_s,
                )
                await self._retry_later(ctx, calls, msg, retry.delay_s, str(exc))
                return None
            await self._dead_letter(
                spec.name, msg, f"{type(exc).__name__}: {exc}", workflow_id=event.workflow_id
            )
            failed = error_of(exc, retryable=True, why=retry.reason)
            result = self._result(event, started, deliveries, ok=False, error=failed)
            result = msgspec.structs.replace(result, routing=routing_of(exc))
        except RateLimitRetriesExhausted as exc:
            # A retry bound ended the step, as for a transient error's runs: dead-lettered.
            await self._dead_letter(spec.name, msg, str(exc), workflow_id=event.workflow_id)
            result = self._result(
                event, started, deliveries, ok=False, error=error_of(exc, retryable=True)
            )
            result = msgspec.structs.replace(result, routing=routing_of(exc))
        except CapabilityError as exc:  # PermanentError, or a bad input or output
            calls.extend(billed(exc))
            result = self._result(
                event, started, deliveries, ok=False, error=error_of(exc, retryable=False)
            )
            result = msgspec.structs.replace(result, routing=routing_of(exc))
        except Exception as exc:
            # A bug in a handler: retried like a transient error, then failed for good.
            log.exception("capability %s raised on step %s", spec.name, event.step_id)
            retry = policy.next(
                run=deliveries, now=_now(), scheduled_at=event.at, deadline_at=event.deadline_at
            )
            if retry.delay_s is not None:
                await self._retry_later(ctx, calls, msg, retry.delay_s, repr(exc))
                return None
            await self._dead_letter(
                spec.name, msg, traceback.format_exc(limit=5), workflow_id=event.workflow_id
            )
            failed = error_of(exc, retryable=False, why=retry.reason)
            result = self._result(event, started, deliveries, ok=False, error=failed)
        return await self._with_every_call(result, ctx, calls)

    async def _call_handler(
        self,
        spec: CapabilitySpec,
        ctx: StepContext,
        event: StepScheduled,
        calls: list[CallRecord],
        policy: RetryPolicy,
    ) -> StepOutput | dict[str, Any]:
        """Run the handler; rate limits are waited out within this run, a bounded number
        of times and never past the step's retry budget or the workflow's deadline."""
        waits = 0
        while True:
            try:
                return await spec.handler(ctx)
            except RateLimitedError as exc:
                charged = billed(exc)
                calls.extend(charged)
                for call in charged:
                    await ctx.record_call(call)
                retry = policy.next(
                    run=1,  # waits within a run are not failed runs
                    now=_now(),
                    scheduled_at=event.at,
                    deadline_at=event.deadline_at,
                    retry_after=exc.retry_after or policy.delay(waits + 1),
                )
                waits += 1
                if retry.delay_s is None or waits > self.settings.step_rate_limit_retries:
                    why = retry.reason or (
                        f"rate limited {waits} times "
                        f"(at most {self.settings.step_rate_limit_retries} waits)"
                    )
                    raise RateLimitRetriesExhausted(f"{exc}; not retried: {why}") from exc
                log.info(
                    "step %s/%s (%s) rate limited; retrying in %.1f s (wait %d of %d)",
                    event.workflow_id,
                    event.step_id,
                    what(event),
                    retry.delay_s,
                    waits,
                    self.settings.step_rate_limit_retries,
                )
                await asyncio.sleep(retry.delay_s)

    async def _retry_later(
        self, ctx: StepContext, calls: list[CallRecord], msg: Msg, delay: float, why: str
    ) -> None:
        """End this run without a result: journal what it was billed, then nak."""
        unrecorded = [c for c in calls if not any(c is r for r in ctx._recorded)]
        await self.journal.end(
            ctx.workflow_id, ctx.step_id, ctx.deliveries, reason=why, calls=unrecorded
        )
        await msg.nak(delay=delay)

    async def _with_every_call(
        self, result: StepResult, ctx: StepContext, calls: list[CallRecord]
    ) -> StepResult:
        """The result with every provider call of the step: the earlier runs' (from the
        journal), the ones reported with ``record_call``, and the ones the handler
        returned or its error carried (each object once)."""
        mine = [*ctx._recorded]
        for call in [*calls, *result.calls]:
            if not any(call is c for c in mine):
                mine.append(call)
        if ctx.deliveries == 1:
            return msgspec.structs.replace(result, calls=mine)
        earlier = await self.journal.earlier(ctx.workflow_id, ctx.step_id, ctx.deliveries)
        return msgspec.structs.replace(
            result, calls=[*earlier.calls, *mine], interrupted_runs=earlier.interrupted
        )

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
            calls=list(output.calls) if output else [],
            routing=output.routing if output else [],
            started_at=started,
            finished_at=_now(),
            worker=self.worker_id,
            deliveries=deliveries,
        )

    async def _publish_result(
        self, subject: str, result: StepResult, *, parent: dict[str, str] | None = None
    ) -> None:
        await publish_result(self.nc, subject, result, parent=parent)

    async def _dead_letter(
        self,
        source: str,
        msg: Msg,
        error: str,
        *,
        kind: DeadLetterKind = "failed",
        workflow_id: str | None = None,
    ) -> None:
        reason = error.strip().splitlines()[-1] if error.strip() else "failed"
        letter = dead_letter_of(
            msg, source=source, kind=kind, reason=reason, error=error, workflow_id=workflow_id
        )
        await publish_dead_letter(self.js, self.names, letter)
