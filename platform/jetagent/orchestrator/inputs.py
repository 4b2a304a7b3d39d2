"""Messages into workflow inputs: one translation, for the orchestrator and for replay.

The orchestrator decides on what arrives on its streams — a request, a cancel or a
signal (``JA_REQUESTS``), a step result (``JA_STEPS``), a due timer (``JA_TIMERS``) — and
``jetagent replay --verify`` re-decides every recorded group of events from the message
that caused it (``Ja-Causation``). Both turn that message into the pure ``decide``'s
input with ``inputs_of``, so replay verifies the translation the orchestrator runs, not
a copy of it (docs/ARCHITECTURE.md, "The workflow").

What a translation needs besides the message is passed in: the time of the decision
(``at``: the orchestrator's clock, or the recorded events' time in replay) and the
``Admission`` a request is checked against (the live configuration and registry, or in
replay the decision context). A request that fails its checks becomes a ``Rejection``;
a message that can never be an input raises ``PoisonMessage`` (``jetagent.decoding``).
Whether a step result may be trusted is the workflow's state's business:
``jetagent.result_check``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from jetagent.contract import WorkflowRequest, rejection_id, validate_request
from jetagent.decoding import (
    MAX_MESSAGE_BYTES,
    PoisonMessage,
    check_limits,
    decode_cancel,
    decode_signal,
    decode_step_result,
)
from jetagent.events import QuotaUse, RequestRejected
from jetagent.jetstream.headers import Header
from jetagent.orchestrator.request_ids import derived_request_id, sequence_id
from jetagent.orchestrator.timers import ADMIT, due_timer
from jetagent.subjects import RequestSubject, family, parse
from jetagent.workflow import Admit, Begin, Cancel, FoldResult, Input, Signal, Tick

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from jetagent.jetstream import Record

__all__ = [
    "Addressed",
    "Admission",
    "Message",
    "Rejection",
    "inputs_of",
    "named_tools",
    "readable_request_id",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A stored message as the translation sees it: delivered to a consumer now, or read
    back from its stream by replay."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    stream: str
    seq: int
    """Its sequence in ``stream``."""
    time: datetime | None = None
    """When the server stored it (None when not known)."""

    @classmethod
    def delivered(cls, msg: Msg) -> Message:
        """The message a JetStream consumer delivered."""
        meta = msg.metadata
        return cls(
            subject=msg.subject,
            data=msg.data,
            headers=msg.headers or {},
            stream=meta.stream,
            seq=meta.sequence.stream,
            time=meta.timestamp,
        )

    @classmethod
    def stored(cls, record: Record, *, stream: str) -> Message:
        """A message of ``stream`` read back by direct get."""
        return cls(
            subject=record.subject,
            data=record.data,
            headers=record.headers,
            stream=stream,
            seq=record.seq,
            time=_stamp(record.headers.get(Header.TIME_STAMP)),
        )

    @property
    def causation(self) -> str:
        """``<stream>:<seq>``: the ``Ja-Causation`` header of the events decided on it."""
        return f"{self.stream}:{self.seq}"


@dataclass(frozen=True, kw_only=True)
class Admission:
    """What a request is checked against, and how long an early cancel or signal is kept."""

    models: Collection[str]
    """Models a request may prefer."""
    tools: Collection[str] | None = None
    """Tools a request may allow (None: any)."""
    tenants: Collection[str] | None = None
    """Tenants accepted (None: any)."""
    unserved: Mapping[str, str] = field(default_factory=dict)
    """Known tools no running worker serves, with the command that would serve them."""
    max_request_bytes: int = MAX_MESSAGE_BYTES
    default_tenant: str | None = None
    """The tenant of a request whose body and subject name none."""
    early_input_wait: timedelta = timedelta(0)
    """How long a cancel or signal for a workflow that has not started is kept."""

    def check(self, raw: bytes, tenant: str | None) -> tuple[WorkflowRequest | None, list[str]]:
        """``validate_request`` under these rules (``tenant``: the subject's)."""
        return validate_request(
            raw,
            subject_tenant=tenant,
            tenants=self.tenants,
            tools=self.tools,
            models=self.models,
            max_bytes=self.max_request_bytes,
            unserved=self.unserved,
            default_tenant=self.default_tenant,
        )


@dataclass(frozen=True, slots=True)
class Addressed:
    """An input for ``decide``, and the workflow it is for."""

    workflow_id: str
    input: Input


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A request refused by its checks: recorded as ``RequestRejected`` under
    ``workflow_id``, where its sender follows it (README "Rejections and dead letters")."""

    workflow_id: str
    tenant: str | None
    reasons: list[str]
    size: int
    at: datetime
    quota: QuotaUse | None = None
    """The tenant quota that refused it (None: it failed its checks)."""

    def event(self) -> RequestRejected:
        """The event that records it."""
        return RequestRejected(
            workflow_id=self.workflow_id,
            at=self.at,
            reasons=self.reasons,
            tenant=self.tenant,
            size=self.size,
            quota=self.quota,
        )


def inputs_of(
    message: Message,
    *,
    prefix: str,
    at: datetime,
    admission: Admission | Callable[[], Admission],
) -> Addressed | Rejection | None:
    """The input ``message`` is for ``decide`` (None: it is no input at all).

    ``admission`` may be a function giving the rules as they are now: it is called only
    for a request, cancel or signal (the live rules change as workers come and go).
    Raises ``PoisonMessage`` for a cancel, signal or step result that cannot be read or
    names an id that cannot be a workflow's, or a due timer that cannot be read.
    """
    match family(message.subject):
        case "request":
            return _request(message, prefix=prefix, at=at, admission=_rules(admission))
        case "cancel":
            cancel = decode_cancel(message.data)
            wid = cancel.workflow_id
            # Kept for a while if its workflow has not started (another replica may be
            # starting it at this very moment); the ``inputs`` timer answers it then.
            kept = Cancel(
                at=at,
                reason=cancel.reason,
                by=cancel.by,
                workflow_id=wid,
                expires_at=at + _rules(admission).early_input_wait,
            )
            return Addressed(wid, kept)
        case "signal":
            signal = decode_signal(message.data)
            wid = signal.workflow_id
            sent = Signal(
                name=signal.name,
                payload=signal.payload,
                by=signal.by,
                at=at,
                workflow_id=wid,
                expires_at=at + _rules(admission).early_input_wait,
            )
            return Addressed(wid, sent)
        case "step":
            result = decode_step_result(message.data)
            return Addressed(
                result.workflow_id, FoldResult(result=result, result_seq=message.seq, at=at)
            )
        case "timer":
            timer = due_timer(message)
            if timer.kind == ADMIT:
                # A held workflow's wake-up: decided only once it holds a slot (the
                # orchestrator asks the tenant's slots first).
                return Addressed(timer.workflow_id, Admit(at=at))
            # The server's clock said it is due; never decide "not yet" on a clock behind it.
            return Addressed(timer.workflow_id, Tick(at=max(at, timer.due)))
    return None


def _rules(admission: Admission | Callable[[], Admission]) -> Admission:
    return admission if isinstance(admission, Admission) else admission()


def _request(
    message: Message, *, prefix: str, at: datetime, admission: Admission
) -> Addressed | Rejection:
    where = parse(message.subject, prefix=prefix)
    tenant = where.tenant if isinstance(where, RequestSubject) else None
    msg_id = message.headers.get(Header.MSG_ID)
    request, problems = admission.check(message.data, tenant)
    if request is not None:
        # No request_id in the body: every delivery must name the same workflow.
        derived = derived_request_id(message.data, msg_id=msg_id, stream_seq=message.seq)
        if derived is not None:
            request = request.model_copy(update={"request_id": derived})
    if request is not None and msg_id and msg_id != request.request_id:
        problems = [f"Nats-Msg-Id {msg_id!r} differs from request_id {request.request_id!r}"]
        request = None
    if request is None:
        # The sender follows <prefix>.wf.<id>.>, by the rule in contract.rejection_id
        # (README "Rejections and dead letters"); with no id at all, the stream sequence.
        wid = rejection_id(readable_request_id(message.data), msg_id) or sequence_id(message.seq)
        return Rejection(
            workflow_id=wid, tenant=tenant, reasons=problems, size=len(message.data), at=at
        )
    deadline = request.capability_limits.deadline_s
    begin = Begin(
        workflow_id=request.request_id,
        tenant=request.tenant,
        request=request.model_dump(mode="json"),
        at=at,
        deadline_at=at + timedelta(seconds=deadline) if deadline else None,
    )
    return Addressed(request.request_id, begin)


def named_tools(raw: bytes) -> set[str]:
    """The ``allowed_tools`` of a request body, if it has readable ones."""
    body = _readable_body(raw)
    tools = body.get("allowed_tools") if isinstance(body, dict) else None
    if not isinstance(tools, list):
        return set()
    return {t for t in tools if isinstance(t, str)}


def readable_request_id(raw: bytes) -> object:
    """The body's ``request_id`` if the body can be read within the limits, else None."""
    body = _readable_body(raw)
    return body.get("request_id") if isinstance(body, dict) else None


def _readable_body(raw: bytes) -> Any:
    try:
        check_limits(raw)
        return msgspec.json.decode(raw)
    except (PoisonMessage, msgspec.DecodeError):
        return None


def _stamp(value: str | None) -> datetime | None:
    """``Nats-Time-Stamp`` (RFC 3339, nanoseconds) as a datetime, to the microsecond."""
    if not value:
        return None
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        value = f"{head}.{digits[:6]}{zone}"
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None
