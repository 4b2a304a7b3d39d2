"""Replay a workflow's history and verify that its decisions replay to the same events.

Every event carries its cause (``Ja-Causation: <stream>:<seq>``): the request, step
result, cancel, signal or due timer (``JA_TIMERS``: a deadline check) that the
orchestrator was deciding on (none for a deadline check of older versions). Replaying
regroups the events by cause, rebuilds each input from the stored message, asks the pure
``decide`` again from the state before the group, and compares. No model or tool is
called again: their answers are in the log. A difference means the code or the
configuration (model catalog, registered tools) changed since — or a bug.

Replay trusts nothing it reads: a step result that was folded although it matches no
step as scheduled (``jetagent.result_check``) is a mismatch; every other untrusted
result of the workflow is listed in ``untrusted``, and junk under the workflow's
subjects is skipped and listed in ``skipped``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS

from jetagent.config import Names
from jetagent.events import (
    CancelRequested,
    InputDeferred,
    SignalSent,
    Started,
    StepScheduled,
    WorkflowEvent,
    decode_events,
    decode_step_result,
)
from jetagent.jetstream import DirectGetter, Record
from jetagent.payloads import is_ref
from jetagent.result_check import result_problem, step_problem
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
            cause = record.headers.get("Ja-Causation", "")
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
                command, untrusted = await _input(
                    cause, recorded, sources, report.state, names.prefix
                )
                if untrusted is not None:
                    decision.verdict = "untrusted"
                    decision.detail = f"folded an untrusted step result: {untrusted}"
                    report.mismatches.append(
                        Mismatch(
                            cause=cause,
                            recorded=[type(e).__name__ for e in recorded],
                            decided=[],
                            detail=decision.detail,
                        )
                    )
                elif command is not None:
                    decided = decide(report.state, command, ctx)
                    want = [_comparable(e) for e in recorded]
                    got = [_comparable(e) for e in decided]
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
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            found.append(f"seq {record.seq} {record.subject}: unreadable ({exc})")
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
    prefix: str,
) -> tuple[Input | None, str | None]:
    """The input a group of events was decided on, and why it was untrusted (if it was)."""
    at = recorded[0].at
    if not cause:
        return Tick(at=at), None
    stream, _, seq = cause.rpartition(":")
    if stream.endswith("_TIMERS"):
        return Tick(at=at), None  # a due timer: time passed (its message is gone once read)
    reader = sources.get(stream)
    if reader is None or not seq.isdigit():
        return None, None
    message = await _message(reader, int(seq))
    if message is None:
        return None, None  # the cause is gone (a limit, a purge): nothing to compare against
    if stream.endswith("_STEPS"):
        try:
            result = decode_step_result(message.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return None, f"unreadable ({exc})"
        if message.subject == f"{prefix}.step.{result.workflow_id}.{result.step_id}":
            problem = step_problem(state, result)  # the layout before capability subjects
        else:
            problem = result_problem(message.subject, result, state, prefix=prefix)
        return FoldResult(result=result, result_seq=message.seq, at=at), problem
    return _request_input(message, recorded, state, at), None


def _request_input(
    message: Record, recorded: list[WorkflowEvent], state: WorkflowState, at: Any
) -> Input | None:
    kind = message.subject.split(".")[1]
    # How long an early cancel or signal was kept is configuration: read it from the record.
    kept = recorded[0] if isinstance(recorded[0], InputDeferred) else None
    expires_at = kept.expires_at if kept is not None else None
    if kind == "cancel":
        cancel = msgspec.json.decode(message.data, type=CancelRequested)
        return Cancel(
            at=at,
            reason=cancel.reason,
            by=cancel.by,
            workflow_id=cancel.workflow_id,
            expires_at=expires_at,
        )
    if kind == "signal":
        signal = msgspec.json.decode(message.data, type=SignalSent)
        return Signal(
            name=signal.name,
            payload=signal.payload,
            by=signal.by,
            at=at,
            workflow_id=signal.workflow_id,
            expires_at=expires_at,
        )
    started = next((e for e in recorded if isinstance(e, Started)), None)
    if started is None:
        if state.status.value == "queued":
            return None  # a rejection: decided by validation, not by decide()
        return Begin(workflow_id=state.workflow_id, tenant=state.tenant, request={}, at=at)
    return Begin(
        workflow_id=started.workflow_id,
        tenant=started.tenant,
        request=started.request,
        at=at,
        deadline_at=started.deadline_at,
    )


def _first_difference(want: list[Any], got: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            return f"event {i + 1} ({a.get('type')}) differs in {', '.join(keys)}"
    return f"{len(want)} events recorded, {len(got)} decided"
