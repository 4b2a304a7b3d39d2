"""The ``reasoning`` and ``summarize`` capabilities: one model call per step.

Both go through :class:`ModelGateway` (routing, circuit breakers, hedging), with the
offline deterministic provider serving ``provider = "offline"`` models. Every provider
call the gateway made — the winner, failed and cancelled attempts — becomes a
``CallRecord`` of the step's result, the one place its usage and cost are recorded. Each
is reported with ``StepContext.record_call`` the moment it settles (the gateway's
``on_call``), so a worker that dies later in the step (in a rate-limit wait, a failover)
loses none: the run that writes the result carries them (README "Delivery, retries and
recovery"). The offline deterministic provider is local, instant and free; its one call
is only in the result.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from capabilities.reasoning._streaming import StreamGate
from capabilities.reasoning.gateway import ModelGateway
from capabilities.reasoning.offline import OfflineProvider, compact_rounds
from capabilities.reasoning.records import Attempt, GatewayResult
from jetagent import CapabilitySpec, StepContext, StepOutput, telemetry
from jetagent.errors import CapabilityError
from jetagent.events import CallRecord, RoutingDecision
from jetagent.llm import Completion, Message, ToolSpec
from jetagent.models import ModelCatalog, ModelConfig
from jetagent.plugins import CapabilityContext
from jetagent.worker.calls import CALLS_RECORDED

__all__ = ["reasoning_capabilities"]

COMPACT_PROMPT = (
    "Summarise the conversation above so far for your own later use: the results of every "
    "tool call and every fact you will still need. Be complete and terse."
)
SUMMARY_PROMPT = (
    "Summarise the conversation above for the user in a few sentences: what was asked, "
    "what was done, and the final answer."
)


def _trace_calls(result: GatewayResult, max_tokens: int) -> None:
    """One GenAI span per provider call of the step (children of the step's span)."""
    ended = datetime.now(UTC)
    for attempt in result.attempts:
        telemetry.model_call_span(
            provider=attempt.provider,
            request_model=attempt.model,
            response_model=result.completion.model if attempt.winner else None,
            input_tokens=attempt.usage.input_tokens if attempt.usage else None,
            output_tokens=attempt.usage.output_tokens if attempt.usage else None,
            max_tokens=attempt.max_tokens or max_tokens,
            outcome=attempt.outcome,
            started=ended - timedelta(seconds=attempt.latency_s),
            ended=ended,
            error=attempt.error,
        )


_OFFLINE = OfflineProvider()


async def _offline_call(
    model: ModelConfig, messages: list[Message], tools: list[ToolSpec], max_tokens: int
) -> tuple[Completion, list[CallRecord], list[RoutingDecision]]:
    started = datetime.now(UTC)
    completion = await _OFFLINE.complete(model, messages, tools=tools, max_tokens=max_tokens)
    ended = datetime.now(UTC)
    telemetry.model_call_span(
        provider=completion.provider,
        request_model=model.name,
        response_model=completion.model,
        input_tokens=completion.usage.input_tokens,
        output_tokens=completion.usage.output_tokens,
        max_tokens=max_tokens,
        outcome="ok",
        started=started,
        ended=ended,
    )
    call = CallRecord(
        model=model.name,
        provider=completion.provider,
        outcome="ok",
        usage=completion.usage,
        cost_usd=model.cost(completion.usage),
        latency_s=(ended - started).total_seconds(),
    )
    return completion, [call], [RoutingDecision(model=model.name, reason="preferred")]


def _call_record(attempt: Attempt) -> CallRecord:
    return CallRecord(
        model=attempt.model,
        provider=attempt.provider,
        outcome=attempt.outcome,
        usage=attempt.usage,
        cost_usd=None if attempt.cost_usd is None else Decimal(attempt.cost_usd),
        latency_s=attempt.latency_s,
        error=attempt.error,
    )


class _StepCalls:
    """The provider calls of one step's gateway call, reported as each settles.

    The records given to ``StepContext.record_call`` are the very objects put in the
    step's output, which is how the worker counts each call once."""

    def __init__(self, step: StepContext) -> None:
        self._step = step
        self._records: list[tuple[Attempt, CallRecord]] = []

    async def __call__(self, attempt: Attempt) -> None:
        record = _call_record(attempt)
        self._records.append((attempt, record))
        await self._step.record_call(record)

    def of(self, result: GatewayResult) -> tuple[list[CallRecord], list[RoutingDecision]]:
        """The result's calls (as reported) and routing decisions."""
        calls = [self._record(attempt) for attempt in result.attempts]
        routing = [RoutingDecision(model=d.model, reason=d.reason) for d in result.decisions]
        return calls, routing

    def mark(self, error: CapabilityError) -> None:
        """Say on a failed call's error that its attempts were reported already, so the
        worker does not count them again from ``details["attempts"]``."""
        attempts = error.details.get("attempts")
        if isinstance(attempts, list) and len(attempts) == len(self._records):
            error.details[CALLS_RECORDED] = True

    def _record(self, attempt: Attempt) -> CallRecord:
        for reported, record in self._records:
            if reported is attempt:
                return record
        return _call_record(attempt)  # not reported (no hook ran): the result has it


def _all_offline(catalog: ModelCatalog, models: list[str]) -> bool:
    return all(catalog.get(m).provider == "offline" for m in models if m in catalog)


def _left(step: StepContext) -> float | None:
    """Seconds left of the workflow's deadline (a wall-clock instant set by the
    orchestrator, so only the wall clock can measure it)."""
    if step.deadline_at is None:
        return None
    return (step.deadline_at - datetime.now(UTC)).total_seconds()


def _origin(step: StepContext) -> str:
    return f"workflow {step.workflow_id} step {step.step_id}"


def _budget(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def reasoning_capabilities(
    catalog: ModelCatalog, gateway: ModelGateway | None = None
) -> tuple[CapabilitySpec, CapabilitySpec, ModelGateway]:
    """The reasoning and summarize capabilities, sharing one gateway."""
    gw = gateway or ModelGateway(catalog, providers={"offline": OfflineProvider()})

    async def reason(step: StepContext) -> StepOutput:
        data = step.input
        messages = [msgspec.convert(m, Message) for m in data["messages"]]
        tools = [msgspec.convert(t, ToolSpec) for t in data.get("tools") or []]
        max_tokens = int(data["max_tokens"])
        if _all_offline(catalog, data["models"]):
            # The offline provider is local and instant: no breaker, hedge or failover can help,
            # so it is called directly (its call is recorded the same way).
            completion, calls, routing = await _offline_call(
                catalog.get(data["models"][0]), messages, tools, max_tokens
            )
            # Its answer is instant: streamed as one piece, so watchers see the same shape.
            live = step.tokens()
            await live.delta(completion.text, model=completion.model)
            await live.done()
        else:
            # Text streams live on core NATS while the call runs (README "Streaming
            # tokens"); the record below is built from the Completion alone.
            gate = StreamGate(step.tokens(), replaces=step.deliveries > 1)
            reported = _StepCalls(step)
            try:
                result = await gw.call(
                    models=data["models"],
                    messages=messages,
                    tools=tools,
                    max_tokens=max_tokens,
                    remaining_tokens=data.get("remaining_tokens"),
                    remaining_usd=_budget(data.get("remaining_usd")),
                    deadline_s=_left(step),
                    origin=_origin(step),
                    stream=gate,
                    on_call=reported,
                )
            except CapabilityError as exc:
                reported.mark(exc)
                raise
            finally:
                await gate.finish()
            completion = result.completion
            _trace_calls(result, max_tokens)
            calls, routing = reported.of(result)
        return StepOutput(
            output={
                "text": completion.text,
                "tool_calls": [msgspec.to_builtins(c) for c in completion.tool_calls],
                "model": completion.model,
                "provider": completion.provider,
                "finish_reason": completion.finish_reason,
            },
            calls=calls,
            routing=routing,
        )

    async def summarize(step: StepContext) -> StepOutput:
        data = step.input
        messages = [msgspec.convert(m, Message) for m in data["messages"]]
        models = list(data["models"])
        offline = _all_offline(catalog, models)
        if data.get("mode") == "compact":
            return await compact(step, data, messages, models, offline=offline)
        if offline:
            # The offline deterministic provider is no language model: it summarises by
            # extraction.
            final = next((m.content for m in reversed(messages) if m.role == "assistant"), "")
            request = next((m.content for m in messages if m.role == "user"), "")
            text = f"Asked: {request.strip()[:300]} Answer: {final.strip()}"
            return StepOutput(output={"text": text, "model": "offline-extractive"})
        completion, calls, routing = await ask(step, data, messages, models, SUMMARY_PROMPT)
        return StepOutput(
            output={"text": completion.text, "model": completion.model},
            calls=calls,
            routing=routing,
        )

    async def compact(
        step: StepContext,
        data: dict[str, Any],
        messages: list[Message],
        models: list[str],
        *,
        offline: bool,
    ) -> StepOutput:
        """Summarise older turns so the conversation fits the context window."""
        extra = {"mode": "compact", "covers": data.get("covers", len(messages))}
        if offline:
            return StepOutput(output={"text": compact_rounds(messages), **extra})
        completion, calls, routing = await ask(step, data, messages, models, COMPACT_PROMPT)
        return StepOutput(output={"text": completion.text, **extra}, calls=calls, routing=routing)

    async def ask(
        step: StepContext,
        data: dict[str, Any],
        messages: list[Message],
        models: list[str],
        prompt: str,
    ) -> tuple[Completion, list[CallRecord], list[RoutingDecision]]:
        """One tool-less call with ``prompt`` appended: a summary or a compaction."""
        reported = _StepCalls(step)
        try:
            result = await gw.call(
                models=models,
                messages=[*messages, Message(role="user", content=prompt)],
                tools=[],
                max_tokens=int(data["max_tokens"]),
                remaining_tokens=None,
                remaining_usd=None,
                deadline_s=_left(step),
                origin=_origin(step),
                on_call=reported,
            )
        except CapabilityError as exc:
            reported.mark(exc)
            raise
        calls, routing = reported.of(result)
        return result.completion, calls, routing

    def report() -> dict[str, Any]:
        return {"circuits": [msgspec.to_builtins(b) for b in gw.breaker_states()]}

    return (
        CapabilitySpec(name="reasoning", handler=reason, report=report, close=gw.aclose),
        CapabilitySpec(name="summarize", handler=summarize, close=gw.aclose),
        gw,
    )


def reasoning_and_summarize(context: CapabilityContext) -> list[CapabilitySpec]:
    """The ``reasoning`` and ``summarize`` capabilities of ``context``'s catalog, sharing one
    gateway: what their ``jetagent.capabilities`` entry points name (pyproject.toml)."""
    reasoning, summarize, _ = reasoning_capabilities(context.catalog)
    return [reasoning, summarize]
