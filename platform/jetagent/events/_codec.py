"""Events as bytes: JSON encoding, decoding with limits, and upcasting older shapes.

A decoder reads the current shape directly; an event written with an older schema version
is upcast one version at a time (``UPCASTERS``) before it is converted, so old streams
stay readable. Anything that is not an event raises ``msgspec.DecodeError`` or
``msgspec.ValidationError`` — JSON nested too deep to read included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from jetagent.subjects import event_tail

from ._types import EVENT_CLASSES, Started, StepResult, StepScheduled, WorkflowEvent

_encoder = msgspec.json.Encoder(decimal_format="string")


def encode(event: msgspec.Struct) -> bytes:
    """JSON bytes of any event."""
    return _encoder.encode(event)


_workflow_decoder = msgspec.json.Decoder(WorkflowEvent)
_result_decoder = msgspec.json.Decoder(StepResult)


def event_type(cls: type[msgspec.Struct]) -> str:
    """The ``type`` tag of an event class."""
    return str(cls.__struct_config__.tag)


def _current_version(cls: type[msgspec.Struct]) -> int:
    for field in msgspec.structs.fields(cls):
        if field.name == "v":
            return int(field.default)
    raise TypeError(f"{cls} has no schema version")


CURRENT_VERSIONS: dict[str, int] = {event_type(c): _current_version(c) for c in EVENT_CLASSES}
"""The schema version each event type is written with today."""
_CURRENT_BY_CLASS: dict[type[msgspec.Struct], int] = {c: _current_version(c) for c in EVENT_CLASSES}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""``(type, from_version) -> function`` returning the event one version newer."""


def _step_scheduled_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no budget reservation and no iteration (written before budgets existed).
    data.setdefault("reservation", {"tokens": 0, "usd": "0"})
    data.setdefault("iteration", 1)
    return data


UPCASTERS[("StepScheduled", 1)] = _step_scheduled_v1_v2


def _started_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no held_since (written before tenant quotas existed): it started at once.
    data.setdefault("held_since", None)
    return data


UPCASTERS[("Started", 1)] = _started_v1_v2


def _request_rejected_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no quota (written before tenant quotas existed): it failed its checks.
    data.setdefault("quota", None)
    return data


UPCASTERS[("RequestRejected", 1)] = _request_rejected_v1_v2


def _upcast(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise msgspec.ValidationError(f"an event is a JSON object, not {type(raw).__name__}")
    data: dict[str, Any] = raw
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CURRENT_VERSIONS:
        raise msgspec.ValidationError(f"unknown event type {kind!r}")
    version = data.get("v", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise msgspec.ValidationError(f"schema version {version!r} is not a version")
    while version < CURRENT_VERSIONS[kind]:
        step = UPCASTERS.get((kind, version))
        if step is None:
            raise msgspec.ValidationError(f"no upcaster for {kind} v{version}")
        data = step(data)
        version += 1
        data["v"] = version
    return data


def _too_deep() -> msgspec.DecodeError:
    # msgspec recurses and raises RecursionError on JSON nested ~1000 levels deep; that
    # is a decode error like any other here (no reader should treat it as a bug).
    return msgspec.DecodeError("the JSON is nested too deep to read")


def decode_event(data: bytes) -> WorkflowEvent:
    """Decode a workflow event, upcasting an older shape to the current one.

    Anything that is not an event raises ``msgspec.DecodeError`` or ``ValidationError``.
    """
    try:
        return _decode_event(data)
    except RecursionError:
        raise _too_deep() from None


def _decode_event(data: bytes) -> WorkflowEvent:
    event: WorkflowEvent | None
    try:
        event = _workflow_decoder.decode(data)
    except msgspec.ValidationError:
        event = None
    if event is not None and event.v == _CURRENT_BY_CLASS[type(event)]:
        return event
    raw = _upcast(msgspec.json.decode(data))
    upcast: WorkflowEvent = msgspec.convert(raw, WorkflowEvent)
    return upcast


_batch_decoder = msgspec.json.Decoder(list[WorkflowEvent])


def encode_events(events: list[WorkflowEvent]) -> bytes:
    """One message's body: the event itself, or a JSON array of a decision's events."""
    if len(events) == 1:
        return encode(events[0])
    return _encoder.encode(events)


def decode_events(data: bytes) -> list[WorkflowEvent]:
    """The events of one ``JA_WORKFLOWS`` message (one event, or an array of them).

    Never empty; anything else (``[]`` included) raises ``msgspec.DecodeError`` or
    ``msgspec.ValidationError``.
    """
    try:
        return _decode_events(data)
    except RecursionError:
        raise _too_deep() from None


def _decode_events(data: bytes) -> list[WorkflowEvent]:
    if data.lstrip()[:1] != b"[":
        return [_decode_event(data)]
    try:
        events: list[WorkflowEvent] = _batch_decoder.decode(data)
    except msgspec.ValidationError:
        events = []
    if events and all(e.v == _CURRENT_BY_CLASS[type(e)] for e in events):
        return events
    items = msgspec.json.decode(data)
    if not isinstance(items, list) or not items:
        raise msgspec.ValidationError("a message holds one event or a non-empty array of them")
    return [_decode_event(msgspec.json.encode(item)) for item in items]


def group_for_messages(events: list[WorkflowEvent]) -> list[list[WorkflowEvent]]:
    """A decision's events cut into messages: each ``StepScheduled`` ends a message (its
    subject names the capability workers filter on) and ``Started`` stands alone (the
    subject that names a workflow's creation); everything else rides along, so a usual
    step's ``StepCompleted`` and next ``StepScheduled`` are one write."""
    groups: list[list[WorkflowEvent]] = []
    current: list[WorkflowEvent] = []
    for event in events:
        if isinstance(event, Started):
            if current:
                groups.append(current)
            groups.append([event])
            current = []
            continue
        current.append(event)
        if isinstance(event, StepScheduled):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def decode_step_result(data: bytes) -> StepResult:
    """A ``StepResult`` (``msgspec.DecodeError`` / ``ValidationError`` if it is not one)."""
    try:
        return _result_decoder.decode(data)
    except RecursionError:
        raise _too_deep() from None


def subject_tail(event: WorkflowEvent) -> str:
    """The subject tokens after ``<prefix>.wf.<workflow_id>.`` for an event."""
    name = str(event_type(type(event)))
    if isinstance(event, StepScheduled):
        return event_tail(name, event.capability, event.tool or None)
    return event_tail(name)
