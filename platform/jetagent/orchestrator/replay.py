"""Replay a workflow's history and verify that its decisions replay to the same events.

Every event carries its cause (``Ja-Causation: <stream>:<seq>``): the request, step
result, cancel, signal or due timer (``JA_TIMERS``: a deadline check) that the
orchestrator was deciding on (none for a deadline check of older versions). Replaying
regroups the events by cause, turns the stored message into its input with the
orchestrator's own translation (``jetagent.orchestrator.inputs.inputs_of``, requests
checked against the decision context's models and tools), asks the pure ``decide``
again from the state before the group, and compares. No model or tool is called again:
their answers are in the log. A difference means the code or the configuration (model
catalog, registered tools) changed since — or a bug. A rejected request is not
compared: its checks ran against the configuration of that moment (tenants, limits,
the tools served then), which the history does not hold.

What tenant quotas measured outside the pure decisions is read from the record, as the
orchestrator recorded it: a ``Held`` request was decided with that hold, a held
workflow's ``Started`` on a wake-up (``Admit``: it held a slot), and a ``Throttled`` group
under that rate limit; replay verifies what the decisions made of it.

Replay trusts nothing it reads: a step result that was folded although it matches no
step as scheduled (``jetagent.result_check``) is a mismatch; every other untrusted
result of the workflow is listed in ``untrusted``, and junk under the workflow's
subjects is skipped and listed in ``skipped``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS

from jetagent.decoding import PoisonMessage, decode_step_result
from jetagent.events import (
    Held,
    InputDeferred,
    RequestRejected,
    Started,
    StepScheduled,
    Throttled,
    WorkflowEvent,
    decode_events,
)
from jetagent.jetstream import DirectGetter, Record
from jetagent.jetstream.headers import Header
from jetagent.orchestrator.inputs import Admission, Message, Rejection, inputs_of
from jetagent.payloads import is_ref
from jetagent.result_check import result_problem
from jetagent.subjects import Names
from jetagent.workflow import (
    Admit,
    Begin,
    DecideContext,
    FoldResult,
    Hold,
    Input,
    RateLimited,
    Tick,
    WorkflowState,
    as_recorded,
    decide,
    evolve,
)

__all__ = ["Decision", "Mismatch", "ReplayReport", "ReplayedEvent", "replay_workflow"]

_encoder = msgspec.json.Encoder(decimal_format="string")


@dataclass(frozen=True)
class Mismatch:
    cause: str
    recorded: list[str]
    decided: list[str]
    detail: str


Verdict = Literal["same", "differs", "untrusted", "not checked", "not verified"]
"""What re-deciding a decision found: the same events, different ones, a decision that
folded an untrusted step result, one whose input is gone from its stream (or was never
``decide``'s: a rejection), or no verification asked."""


@dataclass(frozen=True)
class ReplayedEvent:
    """One stored event, where it is in the stream, and the decision it belongs to."""

    seq: int
    """Its message's stream sequence (a decision's events in one message share it)."""
    subject: str
    cause: str
    """``<stream>:<seq>`` of the input decided on (``Ja-Causation``), or empty."""
    decision: int
    """Index of its decision in :attr:`ReplayReport.decisions`."""
    event: WorkflowEvent


@dataclass
class Decision:
    """The events recorded for one input, and what re-deciding it found."""

    cause: str
    verdict: Verdict = "not verified"
    detail: str = ""


@dataclass
class ReplayReport:
    workflow_id: str
    events: list[WorkflowEvent] = field(default_factory=list)
    entries: list[ReplayedEvent] = field(default_factory=list)
    """Every event with its stream sequence and decision (``jetagent replay --json``)."""
    decisions: list[Decision] = field(default_factory=list)
    groups: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    state: WorkflowState = field(default_factory=WorkflowState)
    untrusted: list[str] = field(default_factory=list)
    """Step results of this workflow that match no step as scheduled (set aside)."""
    skipped: list[str] = field(default_factory=list)
    """Messages under the workflow's subjects that are not its events."""

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _comparable(event: WorkflowEvent) -> Any:
    """An event as JSON, with a claim-checked input compared by its digest."""
    data = msgspec.to_builtins(event, builtin_types=None)
    if isinstance(event, StepScheduled):
        value = event.input
        data["input"] = (
            value["sha256"] if is_ref(value) else hashlib.sha256(_encoder.encode(value)).hexdigest()
        )
    return msgspec.json.decode(_encoder.encode(data))


async def _message(reader: DirectGetter, seq: int) -> Record | None:
    records = await reader.scan(">", start_seq=seq, page=1, until=lambda r: True)
    return records[0] if records and records[0].seq == seq else None


async def replay_workflow(
    nc: NATS, names: Names, workflow_id: str, ctx: DecideContext, *, verify: bool = True
) -> ReplayReport:
    """Fold a workflow's history; with ``verify``, re-decide every input and compare."""
    workflows = DirectGetter(nc, names.workflows_stream, timeout=5.0)
    sources = {
        names.requests_stream: DirectGetter(nc, names.requests_stream, timeout=5.0),
        names.steps_stream: DirectGetter(nc, names.steps_stream, timeout=5.0),
    }
    for reader in (workflows, *sources.values()):
        await reader.open()
    report = ReplayReport(workflow_id)
    try:
        records = await workflows.scan(names.workflow(workflow_id))
        groups: list[tuple[str, list[WorkflowEvent]]] = []
        for record in records:
            try:
                events = decode_events(record.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                report.skipped.append(f"seq {record.seq} {record.subject}: {exc}")
                continue
            report.events.extend(events)
            cause = record.headers.get(Header.JA_CAUSATION, "")
            if groups and groups[-1][0] == cause and cause:
                groups[-1][1].extend(events)
            else:
                groups.append((cause, list(events)))
                report.decisions.append(Decision(cause=cause))
            report.entries.extend(
                ReplayedEvent(record.seq, record.subject, cause, len(groups) - 1, event)
                for event in events
            )
        for (cause, recorded), decision in zip(groups, report.decisions, strict=True):
            report.groups += 1
            if verify:
                decision.verdict = "not checked"
                command, wrong = await _input(cause, recorded, sources, report.state, names, ctx)
                if wrong is not None:
                    untrusted = wrong.startswith("folded an untrusted")
                    decision.verdict = "untrusted" if untrusted else "differs"
                    decision.detail = wrong
                    report.mismatches.append(
                        Mismatch(
                            cause=cause,
                            recorded=[type(e).__name__ for e in recorded],
                            decided=[],
                            detail=wrong,
                        )
                    )
                elif command is not None:
                    decided = decide(report.state, command, ctx, rate=_rate_of(recorded))
                    want = [_comparable(e) for e in recorded]
                    # Compared in the shape each event was recorded in: a history
                    # written before a step gained an optional input still verifies.
                    got = [
                        _comparable(as_recorded(e, recorded[i] if i < len(recorded) else None))
                        for i, e in enumerate(decided)
                    ]
                    decision.verdict = "same"
                    if want != got:
                        decision.verdict = "differs"
                        decision.detail = _first_difference(want, got)
                        report.mismatches.append(
                            Mismatch(
                                cause=cause or "deadline check",
                                recorded=[type(e).__name__ for e in recorded],
                                decided=[type(e).__name__ for e in decided],
                                detail=decision.detail,
                            )
                        )
            for event in recorded:
                report.state = evolve(report.state, event)
        report.untrusted = await _untrusted_results(
            sources[names.steps_stream], names, workflow_id, report.state
        )
    finally:
        for reader in (workflows, *sources.values()):
            await reader.close()
    return report


async def _untrusted_results(
    reader: DirectGetter, names: Names, workflow_id: str, state: WorkflowState
) -> list[str]:
    found = []
    for record in await reader.scan(names.step_results(workflow_id)):
        try:
            result = decode_step_result(record.data)
        except PoisonMessage as exc:
            found.append(f"seq {record.seq} {record.subject}: unreadable ({exc.reason})")
            continue
        problem = result_problem(record.subject, result, state, prefix=names.prefix)
        if problem is not None:
            found.append(f"seq {record.seq} {record.subject}: {problem}")
    return found


async def _input(
    cause: str,
    recorded: list[WorkflowEvent],
    sources: dict[str, DirectGetter],
    state: WorkflowState,
    names: Names,
    ctx: DecideContext,
) -> tuple[Input | None, str | None]:
    """The input a group of events was decided on, and why deciding on it was wrong (if
    it was: an untrusted step result, an input that cannot be read or admitted now)."""
    at = recorded[0].at
    if not cause:
        return Tick(at=at), None
    stream, _, seq = cause.rpartition(":")
    if stream == names.timers_stream:
        if state.held is not None and isinstance(recorded[0], Started):
            return Admit(at=at), None  # a held workflow woken, holding a slot
        return Tick(at=at), None  # a due timer: time passed (its message is gone once read)
    reader = sources.get(stream)
    if reader is None or not seq.isdigit() or isinstance(recorded[0], RequestRejected):
        return None, None
    record = await _message(reader, int(seq))
    if record is None:
        return None, None  # the cause is gone (a limit, a purge): nothing to compare against
    message = Message.stored(record, stream=stream)
    # How long an early cancel or signal was kept is configuration: read it from the record.
    kept = recorded[0] if isinstance(recorded[0], InputDeferred) else None
    admission = Admission(
        models=set(ctx.models),
        tools=set(ctx.tools),
        early_input_wait=kept.expires_at - kept.at if kept is not None else timedelta(0),
    )
    try:
        made = inputs_of(message, prefix=names.prefix, at=at, admission=admission)
    except PoisonMessage as exc:
        if stream == names.steps_stream:
            return None, f"folded an untrusted step result: unreadable ({exc.reason})"
        return None, f"its input cannot be read: {exc.reason}"
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, f"its input cannot be read: {exc}"
    if isinstance(made, Rejection):
        return None, "its request would be rejected now: " + "; ".join(made.reasons)
    if made is None:
        return None, None
    held = recorded[0]
    if isinstance(made.input, Begin) and isinstance(held, Held):
        # Its tenant's slots held it: what they said is in the record.
        hold = Hold(quota=held.quota, position=held.position)
        return dataclasses.replace(made.input, hold=hold), None
    if isinstance(made.input, FoldResult):
        # Histories from before capability subjects hold results on the older layout.
        result = made.input.result
        problem = result_problem(message.subject, result, state, prefix=names.prefix, legacy=True)
        if problem is not None:
            return None, f"folded an untrusted step result: {problem}"
    return made.input, None


def _rate_of(recorded: list[WorkflowEvent]) -> RateLimited | None:
    """The tenant's rate limit a group was decided under (its ``Throttled``), if any."""
    for event in recorded:
        if isinstance(event, Throttled):
            return RateLimited(quota=event.quota, needed=event.needed, until=event.until)
    return None


def _first_difference(want: list[Any], got: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            return f"event {i + 1} ({a.get('type')}) differs in {', '.join(keys)}"
    return f"{len(want)} events recorded, {len(got)} decided"
