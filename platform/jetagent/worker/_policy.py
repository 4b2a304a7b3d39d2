"""The step/ack policy: what becomes of a delivery, as a typed decision.

One place maps what happened to a step to what the runtime does with its message, in
the way FastStream's ``AckPolicy`` or temporal's ``ApplicationError(non_retryable=...,
next_retry_delay=...)`` do. What happened:

=====================================  ==============================================
the handler returned                    :class:`Complete` — a completed ``StepResult``
``RateLimitedError``                    :class:`WaitInRun` — wait, call it again in
                                        this run (a wait is not a failed run); once
                                        the waits run out, :class:`Fail` + dead letter
``TransientError(retry_after)``,        :class:`RunAgain` — ``nak(delay)`` within the
an unexpected exception                 retry budget; past it, :class:`Fail` + dead
                                        letter
``PermanentError`` (any other           :class:`Fail` — a failed ``StepResult``
``CapabilityError``)
a delivery past the last allowed run    :class:`Fail` + dead letter, without running
(every run before it died)              the handler
a message that is no step               :class:`Discard` — ``term`` (a dead letter
                                        first when it cannot even be read)
a step that has its result already      :class:`Acknowledge` — ``ack``, nothing runs
(a redelivery after a crash or a lost
ack)
=====================================  ==============================================

:class:`StepPolicy` decides; it does no I/O and reads no clock (``now`` is given), so
every branch is a plain function of its inputs. The runtime applies a decision in one
place (:meth:`jetagent.worker._steps.StepRunner.apply`). The retry budget itself (count,
time, deadline) is :class:`~jetagent.worker.retry.RetryPolicy`.
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import msgspec

from jetagent.errors import CapabilityError, RateLimitedError, TransientError
from jetagent.events import CallRecord, RoutingDecision, StepError, StepScheduled
from jetagent.worker._context import StepOutput
from jetagent.worker.calls import CALLS_RECORDED
from jetagent.worker.retry import RetryPolicy

__all__ = [
    "RATE_LIMIT_RETRIES_EXHAUSTED",
    "Acknowledge",
    "Complete",
    "Decision",
    "Discard",
    "Fail",
    "RunAgain",
    "StepPolicy",
    "WaitInRun",
    "billed",
    "error_of",
    "routing_of",
]

RATE_LIMIT_RETRIES_EXHAUSTED = "RateLimitRetriesExhausted"
"""The error type of a step whose rate limits were waited out as often, or as long, as
its bounds allow."""
MAX_DELIVERIES_EXCEEDED = "MaxDeliveriesExceeded"


@dataclass(frozen=True, slots=True)
class Complete:
    """The handler returned ``output``: record a completed result, then ack."""

    output: StepOutput


@dataclass(frozen=True, kw_only=True, slots=True)
class WaitInRun:
    """Rate limited: report ``billed`` at once, wait ``delay_s`` and call the handler
    again within this run (``waits`` waits so far, this one included)."""

    delay_s: float
    waits: int
    billed: list[CallRecord] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunAgain:
    """End this run without a result and have the step delivered again after
    ``delay_s``: journal the run's end (with ``billed``, why it ended), then ``nak``."""

    delay_s: float
    why: str
    billed: list[CallRecord] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True, slots=True)
class Fail:
    """Record a failed result with ``error``, then ack; when ``dead_letter`` is set (the
    error's text), dead-letter the message first."""

    error: StepError
    routing: list[RoutingDecision] = field(default_factory=list)
    billed: list[CallRecord] = field(default_factory=list)
    """What the failing call was billed (added to the result's calls)."""
    report_billed: bool = False
    """Report ``billed`` with ``record_call`` first (a rate limit's charges are journaled
    as they happen, like every other call of the run)."""
    dead_letter: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Acknowledge:
    """The step has its result already: ack, nothing runs. ``answered_here``: this
    process's run wrote it while this delivery waited (counted as answered here)."""

    answered_here: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Discard:
    """The message is no step to run: ``term`` it; when ``poison`` is set (why it cannot
    be read), dead-letter it first."""

    poison: str | None = None


Decision = Complete | RunAgain | Fail | Acknowledge | Discard
"""What the runtime does with a delivery's message (a :class:`WaitInRun` is carried out
within the run and leads to one of these)."""


@dataclass(frozen=True, kw_only=True)
class StepPolicy:
    """Maps what happened to a step to a :data:`Decision`."""

    rate_limit_waits: int
    """Waits for rate limits allowed within one run (``step_rate_limit_retries``)."""

    def unreadable(self, why: str) -> Discard:
        """A ``StepScheduled`` message that cannot be decoded."""
        return Discard(poison=f"undecodable StepScheduled: {why}")

    def not_a_step(self) -> Discard:
        """A message under the capability's subjects that is no ``StepScheduled``."""
        return Discard()

    def recorded_already(self, *, answered_here: bool = False) -> Acknowledge:
        """A delivery of a step that has its result (``answered_here``: written by the
        run of this process that the delivery waited for)."""
        return Acknowledge(answered_here=answered_here)

    def exhausted(self, *, deliveries: int) -> Fail:
        """A delivery past the last allowed run: every run before it died (or timed
        out) without a result. The step fails without running the handler again."""
        runs = deliveries - 1
        error = StepError(
            type=MAX_DELIVERIES_EXCEEDED,
            message=(
                f"the step ran {runs} times without completing (the workers running it "
                "stopped, or were lost, before it ended)"
            ),
            retryable=True,
        )
        return Fail(error=error, dead_letter=error.message)

    def after_error(
        self,
        exc: Exception,
        *,
        step: StepScheduled,
        retry: RetryPolicy,
        run: int,
        waits: int,
        now: datetime,
    ) -> WaitInRun | RunAgain | Fail:
        """What follows an error of run ``run`` (the delivery count), after ``waits``
        rate-limit waits in this run, under the step's retry budget ``retry``."""
        if isinstance(exc, RateLimitedError):
            return self._rate_limited(exc, step=step, retry=retry, waits=waits, now=now)
        if isinstance(exc, TransientError):
            charged = billed(exc)
            verdict = retry.next(
                run=run,
                now=now,
                scheduled_at=step.at,
                deadline_at=step.deadline_at,
                retry_after=exc.retry_after,
            )
            if verdict.delay_s is not None:
                return RunAgain(delay_s=verdict.delay_s, why=str(exc), billed=charged)
            return Fail(
                error=error_of(exc, retryable=True, why=verdict.reason),
                routing=routing_of(exc),
                billed=charged,
                dead_letter=f"{type(exc).__name__}: {exc}",
            )
        if isinstance(exc, CapabilityError):  # PermanentError, or a bad input or output
            return Fail(
                error=error_of(exc, retryable=False), routing=routing_of(exc), billed=billed(exc)
            )
        # A bug in a handler: retried like a transient error, then failed for good.
        verdict = retry.next(run=run, now=now, scheduled_at=step.at, deadline_at=step.deadline_at)
        if verdict.delay_s is not None:
            return RunAgain(delay_s=verdict.delay_s, why=repr(exc))
        return Fail(
            error=error_of(exc, retryable=False, why=verdict.reason),
            dead_letter="".join(traceback.format_exception(exc, limit=5)),
        )

    def _rate_limited(
        self,
        exc: RateLimitedError,
        *,
        step: StepScheduled,
        retry: RetryPolicy,
        waits: int,
        now: datetime,
    ) -> WaitInRun | Fail:
        """Rate limits are waited out within the run, a bounded number of times and
        never past the step's retry budget or the workflow's deadline."""
        charged = billed(exc)
        verdict = retry.next(
            run=1,  # waits within a run are not failed runs
            now=now,
            scheduled_at=step.at,
            deadline_at=step.deadline_at,
            retry_after=exc.retry_after or retry.delay(waits + 1),
        )
        waits += 1
        if verdict.delay_s is not None and waits <= self.rate_limit_waits:
            return WaitInRun(delay_s=verdict.delay_s, waits=waits, billed=charged)
        why = verdict.reason or (
            f"rate limited {waits} times (at most {self.rate_limit_waits} waits)"
        )
        message = f"{exc}; not retried: {why}"
        # A retry bound ended the step, as for a transient error's runs: dead-lettered.
        return Fail(
            error=StepError(type=RATE_LIMIT_RETRIES_EXHAUSTED, message=message, retryable=True),
            routing=_decisions_of(exc) or [],  # the rate limit's own
            billed=charged,
            report_billed=True,
            dead_letter=message,
        )


def error_of(exc: BaseException, *, retryable: bool, why: str = "") -> StepError:
    """The recorded error of a failed step (``why``: why it is not retried)."""
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
    its cause's when it wraps one), so a failed step's routing shows why each model was
    tried and why the retries ended."""
    for error in (exc, exc.__cause__):
        if isinstance(error, CapabilityError) and (routing := _decisions_of(error)) is not None:
            return routing
    return []


def _decisions_of(error: CapabilityError) -> list[RoutingDecision] | None:
    """The decisions ``error`` carries (those that can be read); None if it carries none."""
    decisions = error.details.get("decisions")
    if not isinstance(decisions, list) or not decisions:
        return None
    routing: list[RoutingDecision] = []
    for decision in decisions:
        with contextlib.suppress(msgspec.ValidationError, TypeError):
            routing.append(msgspec.convert(decision, RoutingDecision, strict=False))
    return routing
