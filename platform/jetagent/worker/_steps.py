"""One delivery of a step: read it, run its handler, and apply the decision.
(A little over 400 lines: reading, running and applying share the delivery's run state; the
policy that maps outcomes to decisions is ``_policy``.)

A delivery is read (:class:`~jetagent.worker._policy.Discard` when it is no step),
answered without running when the step has its result already (recorded before a
crash or a lost ack, or by the run of this process it waited for), failed without
running when it is past the last allowed run, and otherwise run: the handler is called,
rate limits are waited out within the run, and the outcome becomes a
:data:`~jetagent.worker._policy.Decision` that :meth:`StepRunner.apply` carries out —
the one place that writes results and dead letters, acks, naks and terms.

While a step runs the runner sends in-progress acks at a quarter of the ack wait, from
the start of the run until its result is recorded, so a step whose worker lives is never
given to another worker. Every provider call a handler reports with
:meth:`StepContext.record_call` is journaled as it completes (:mod:`jetagent.worker.calls`),
so the result of a step that ran more than once carries every run's calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from opentelemetry import trace

from jetagent import correlation
from jetagent.config import Settings
from jetagent.errors import CapabilityError
from jetagent.events import CallRecord, StepResult, StepScheduled, decode_events
from jetagent.jetstream import Settler
from jetagent.logs import seconds
from jetagent.worker._context import CapabilitySpec, StepContext, StepOutput, StepServices
from jetagent.worker._delivery import Heartbeat
from jetagent.worker._metrics import WorkerMetrics
from jetagent.worker._policy import (
    Acknowledge,
    Complete,
    Decision,
    Discard,
    Fail,
    RunAgain,
    StepPolicy,
    WaitInRun,
)
from jetagent.worker._results import StepRecords
from jetagent.worker.calls import CallJournal
from jetagent.worker.retry import RetryPolicy

__all__ = ["StepRunner"]

log = logging.getLogger("jetagent.worker")


def _now() -> datetime:
    return datetime.now(UTC)


_RUNNING: dict[tuple[str, str, str], asyncio.Future[None]] = {}
"""The steps this process is running, by (prefix, workflow id, step id); shared by every
worker of the process (replicas in one process, as in tests and ``jetagent up``)."""


def what(event: StepScheduled) -> str:
    """The step in log lines: its tool or model."""
    if event.tool:
        return f"tool {event.tool}"
    models = event.input.get("models") if isinstance(event.input, dict) else None
    if isinstance(models, list) and models:
        return f"model {models[0]}"
    return event.capability


def _identify(event: StepScheduled, deliveries: int) -> None:
    """The step's ids on every log line and span of its handling (jetagent.correlation),
    and on its span what a trace viewer needs to tell its runs apart."""
    correlation.annotate(
        workflow_id=event.workflow_id, step_id=event.step_id, tool=event.tool, tenant=event.tenant
    )
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({"jetagent.attempt": event.attempt, "jetagent.delivery": deliveries})
        if event.tool:
            # The GenAI conventions' tool execution (an `execute_tool` span's attributes).
            span.set_attributes(
                {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": event.tool}
            )


@dataclass(kw_only=True)
class _Run:
    """One run of a step: what the decision is applied to."""

    spec: CapabilitySpec
    msg: Msg
    event: StepScheduled
    deliveries: int
    started: datetime
    result_subject: str
    heartbeat: Callable[[], Awaitable[None]]
    """Sends an in-progress ack now."""
    ctx: StepContext | None = None
    """What the handler saw (None when it did not run)."""
    recorded: list[CallRecord] = field(default_factory=list)
    """The calls reported with ``record_call`` (the context's own list)."""
    calls: list[CallRecord] = field(default_factory=list)
    """The calls the run was billed for that its errors carried."""


class StepRunner:
    """Runs the deliveries of one worker's steps."""

    def __init__(
        self,
        *,
        settings: Settings,
        services: StepServices,
        records: StepRecords,
        journal: CallJournal,
        settler: Settler,
        worker_id: str,
        retry_of: dict[tuple[str, str], RetryPolicy],
        retry: RetryPolicy,
        metrics: WorkerMetrics,
    ) -> None:
        self._settings = settings
        self._names = settings.names
        self._services = services
        self._records = records
        self._journal = journal
        self._settler = settler
        self._worker_id = worker_id
        self._retry = retry
        self._tool_retry = retry_of
        self._metrics = metrics
        self._policy = StepPolicy(rate_limit_waits=settings.step_rate_limit_retries)
        self.completed = 0
        """Deliveries answered with a result of this process (completed or failed)."""

    async def run(self, spec: CapabilitySpec, msg: Msg) -> None:
        """Handle one delivery of ``spec``'s consumer, to its ack, nak or term."""
        try:
            # A StepScheduled ends its message (it may carry the decision's other events).
            event = decode_events(msg.data)[-1]
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
            await self.apply(self._policy.unreadable(str(exc)), spec, msg)
            return
        if not isinstance(event, StepScheduled):
            await self.apply(self._policy.not_a_step(), spec, msg)
            return
        deliveries = msg.metadata.num_delivered
        _identify(event, deliveries)
        result_subject = self._names.step_result(event.capability, event.workflow_id, event.step_id)
        interval = max(self._settings.step_ack_wait_s / 4, 0.1)
        step_key = (self._names.prefix, event.workflow_id, event.step_id)
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
            if await self._records.recorded(result_subject):
                await self.apply(self._policy.recorded_already(answered_here=True), spec, msg)
            # Else that run ended with a nak or term, which answered this message too
            # (acks are by stream sequence): nothing more to do with it here.
            return
        if deliveries > 1 and await self._records.recorded(result_subject):
            # Done before a crash or a lost ack: nothing to do again.
            await self.apply(self._policy.recorded_already(), spec, msg)
            return
        # In-progress acks well inside the ack wait, from the start of the run until its
        # result is recorded; the first only after a quarter of the ack wait (most steps
        # end long before, and need no timer task of their own).
        heartbeat = Heartbeat(msg, interval)
        this_run = asyncio.get_running_loop().create_future()
        _RUNNING[step_key] = this_run
        try:
            run = _Run(
                spec=spec,
                msg=msg,
                event=event,
                deliveries=deliveries,
                started=_now(),
                result_subject=result_subject,
                heartbeat=heartbeat.send,
            )
            retry = self._retry_of(spec, event)
            decision: Decision
            if deliveries > retry.max_runs:
                decision = self._policy.exhausted(deliveries=deliveries)
                log.warning(
                    "step %s/%s: %s", event.workflow_id, event.step_id, decision.error.message
                )
            else:
                decision = await self._execute(run, retry)
            await self.apply(decision, spec, msg, run)
        finally:
            heartbeat.stop()
            _RUNNING.pop(step_key, None)
            this_run.set_result(None)

    def _retry_of(self, spec: CapabilitySpec, event: StepScheduled) -> RetryPolicy:
        """The retry budget of a step: its tool's own, else the global one."""
        if event.tool is None:
            return self._retry
        return self._tool_retry.get((spec.name, event.tool), self._retry)

    async def _execute(self, run: _Run, retry: RetryPolicy) -> Complete | RunAgain | Fail:
        """Run the handler until the policy decides (rate limits are waited out here)."""
        event = run.event
        ctx = run.ctx = StepContext(
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
            deliveries=run.deliveries,
            _services=self._services,
            _heartbeat=run.heartbeat,
            _recorded=run.recorded,
        )
        # Walk the input for claim checks only when the message holds one.
        expand = b'"$ref"' in run.msg.data or b"ja-ref:" in run.msg.data
        waits = 0
        while True:
            started = time.monotonic()
            try:
                if expand:
                    ctx.input = await ctx.payloads.expand(event.input)
                    expand = False
                out = await run.spec.handler(ctx)
                output = out if isinstance(out, StepOutput) else StepOutput(output=out)
                output.output = await self._shrink(output.output)
                self._metrics.handled(run.spec.name, "ok", started)
                return Complete(output)
            except Exception as exc:
                self._metrics.handled(run.spec.name, "error", started)
                if not isinstance(exc, CapabilityError):
                    log.error(
                        "capability %s raised on step %s",
                        run.spec.name,
                        event.step_id,
                        exc_info=exc,
                    )
                decision = self._policy.after_error(
                    exc, step=event, retry=retry, run=run.deliveries, waits=waits, now=_now()
                )
                self._metrics.after_error(run.spec.name, exc, decision)
            if not isinstance(decision, WaitInRun):
                return decision
            await self._report(ctx, run, decision.billed)
            waits = decision.waits
            log.info(
                "step %s/%s (%s) rate limited; retrying in %s s (wait %d of %d)",
                event.workflow_id,
                event.step_id,
                what(event),
                seconds(decision.delay_s),
                waits,
                self._settings.step_rate_limit_retries,
            )
            await asyncio.sleep(decision.delay_s)

    async def _report(self, ctx: StepContext, run: _Run, billed: list[CallRecord]) -> None:
        """Journal what a rate limit was billed as it happens, like every other call."""
        run.calls.extend(billed)
        for call in billed:
            await ctx.record_call(call)

    async def _shrink(self, output: dict[str, Any]) -> dict[str, Any]:
        payloads = self._services.payloads
        assert payloads is not None  # a worker's services always have a payload store
        content = output.get("content")
        if isinstance(content, str) and len(content) > payloads.threshold:
            output = {**output, "content": await payloads.shrink_text(content)}
        return await payloads.shrink(output)

    # ------------------------------------------------------------------ decisions

    async def apply(
        self, decision: Decision, spec: CapabilitySpec, msg: Msg, run: _Run | None = None
    ) -> None:
        """Carry out ``decision`` for a delivery of ``spec`` (``run``: the step's run, for a
        decision that records a result or ends a run): the one place that writes a step's
        result or dead letter and acks, naks or terms its message (confirmed by the
        server, and sent again until they are: :class:`~jetagent.jetstream.Settler`)."""
        match decision:
            case Discard(poison=poison):
                if poison is not None:
                    await self._records.dead_letter(
                        msg, source=spec.name, error=poison, kind="poison"
                    )
                await self._settler.term(msg)
            case Acknowledge(answered_here=answered_here):
                await self._settler.ack(msg)
                if answered_here:
                    self.completed += 1
            case RunAgain(delay_s=delay, why=why, billed=billed):
                assert run is not None, "only a run is run again"
                run.calls.extend(billed)
                event = run.event
                log.info(
                    "step %s/%s (%s): %s; run %d again in %s s",
                    event.workflow_id,
                    event.step_id,
                    what(event),
                    why,
                    run.deliveries + 1,
                    seconds(delay),
                )
                # End this run without a result: journal what it was billed, then nak.
                unrecorded = [c for c in run.calls if not any(c is r for r in run.recorded)]
                self._metrics.calls_of_run(spec.name, unrecorded)
                await self._journal.end(
                    event.workflow_id, event.step_id, run.deliveries, reason=why, calls=unrecorded
                )
                await self._settler.nak(msg, delay=delay)
            case Complete(output=output):
                assert run is not None, "only a run has a result"
                await self._record(run, self._result(run, ok=True, output=output))
            case Fail(billed=billed, dead_letter=text):
                assert run is not None, "only a run has a result"
                if decision.report_billed and run.ctx is not None:
                    await self._report(run.ctx, run, billed)
                else:
                    run.calls.extend(billed)
                if text is not None:
                    await self._records.dead_letter(
                        msg, source=spec.name, error=text, workflow_id=run.event.workflow_id
                    )
                await self._record(run, self._result(run, ok=False, error=decision))
        self._metrics.delivered(spec.name, decision)

    async def _record(self, run: _Run, result: StepResult) -> None:
        """Write the result with every call of the step, then ack."""
        result = await self._with_every_call(result, run)
        await self._records.record(
            run.result_subject,
            result,
            scheduled_seq=run.msg.metadata.sequence.stream,
            parent=run.msg.headers,
        )
        await self._settler.ack(run.msg)
        self.completed += 1

    async def _with_every_call(self, result: StepResult, run: _Run) -> StepResult:
        """The result with every provider call of the step: the earlier runs' (from the
        journal), the ones reported with ``record_call``, and the ones the handler
        returned or its error carried (each object once)."""
        mine = [*run.recorded]
        for call in [*run.calls, *result.calls]:
            if not any(call is c for c in mine):
                mine.append(call)
        # The ones not reported as they happened (returned, or carried by an error).
        self._metrics.calls_of_run(run.spec.name, mine[len(run.recorded) :])
        if run.deliveries == 1:
            return msgspec.structs.replace(result, calls=mine)
        earlier = await self._journal.earlier(
            run.event.workflow_id, run.event.step_id, run.deliveries
        )
        return msgspec.structs.replace(
            result, calls=[*earlier.calls, *mine], interrupted_runs=earlier.interrupted
        )

    def _result(
        self,
        run: _Run,
        *,
        ok: bool,
        output: StepOutput | None = None,
        error: Fail | None = None,
    ) -> StepResult:
        event = run.event
        return StepResult(
            workflow_id=event.workflow_id,
            step_id=event.step_id,
            capability=event.capability,
            tool=event.tool,
            attempt=event.attempt,
            tenant=event.tenant,
            ok=ok,
            output=output.output if output else {},
            error=error.error if error else None,
            calls=list(output.calls) if output else [],
            routing=output.routing if output else (error.routing if error else []),
            started_at=run.started,
            finished_at=_now(),
            worker=self._worker_id,
            deliveries=run.deliveries,
        )
