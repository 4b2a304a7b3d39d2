"""The worker runtime's plumbing around one delivery: heartbeats while a step runs, the
write-once step result (retried through a server restart), the dead letter, and what a
failed step's provider calls were billed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from jetagent import telemetry
from jetagent.errors import CapabilityError, RateLimitedError, TransientError
from jetagent.events import (
    CallRecord,
    RoutingDecision,
    StepError,
    StepResult,
    StepScheduled,
    encode,
)
from jetagent.jetstream.headers import ErrorCode, Header
from jetagent.worker.calls import CALLS_RECORDED

__all__ = ["Heartbeat", "billed", "error_of", "publish_result", "routing_of", "what"]

_RESULT_PUBLISH_S = 30.0
"""How long a finished step keeps trying to record its result (a server restart, a
cluster election) before its message is left to be redelivered."""


async def publish_result(
    nc: NATS, subject: str, result: StepResult, *, parent: dict[str, str] | None = None
) -> None:
    """Record the result (write-once), retrying through a server restart or an
    election, so a finished step is not run again. A retry of a write that landed meets
    the write-once check (10071), which means the same as success here."""
    headers = telemetry.inject(
        {
            # Write-once by subject alone; no Nats-Msg-Id: anyone may set any id, and a
            # forged message with this result's id would have it dropped as a duplicate.
            Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
            Header.JA_EVENT: "StepResult",
            Header.JA_WORKFLOW: result.workflow_id,
        },
        parent=parent,
    )
    body = encode(result)
    deadline = time.monotonic() + _RESULT_PUBLISH_S
    pause = 0.05
    while True:
        try:
            reply = await nc.request(subject, body, timeout=2.0, headers=headers)
            ack = msgspec.json.decode(reply.data)
            break
        except (NatsError, TimeoutError, msgspec.DecodeError) as exc:
            if time.monotonic() + pause > deadline:
                raise TransientError(f"could not record the step result: {exc}") from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
    error = ack.get("error") if isinstance(ack, dict) else None
    if error and error.get("err_code") != ErrorCode.WRONG_LAST_SEQUENCE:
        raise TransientError(f"could not record the step result: {error.get('description')}")
    # 10071: a result for this step exists already (this run's earlier try landed,
    # or another replica finished it).


def what(event: StepScheduled) -> str:
    """The step in log lines: its tool or model."""
    if event.tool:
        return f"tool {event.tool}"
    models = event.input.get("models") if isinstance(event.input, dict) else None
    if isinstance(models, list) and models:
        return f"model {models[0]}"
    return event.capability


def error_of(exc: BaseException, *, retryable: bool, why: str = "") -> StepError:
    message = str(exc) if not why else f"{exc} (not retried: {why})"
    return StepError(type=type(exc).__name__, message=message, retryable=retryable)


def billed(exc: CapabilityError) -> list[CallRecord]:
    """What a failed step's provider calls were billed: the attempts the error carries,
    or else its usage, so the cost of a failure is recorded too; nothing when the
    handler reported those calls as they completed (``CALLS_RECORDED``)."""
    if exc.details.get(CALLS_RECORDED) is True:
        return []
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


def routing_of(exc: BaseException) -> list[RoutingDecision]:
    """The routing decisions a failed step's error carries (``details["decisions"]``, or
    its cause's when the worker wrapped it), so a failed step's routing shows why each
    model was tried and why the retries ended."""
    for error in (exc, exc.__cause__):
        if not isinstance(error, CapabilityError):
            continue
        decisions = error.details.get("decisions")
        if isinstance(decisions, list) and decisions:
            routing = []
            for decision in decisions:
                with contextlib.suppress(msgspec.ValidationError, TypeError):
                    routing.append(msgspec.convert(decision, RoutingDecision, strict=False))
            return routing
    return []


class Heartbeat:
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
