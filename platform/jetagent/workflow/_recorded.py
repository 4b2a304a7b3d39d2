"""Decisions in the shape of events written by an earlier ``decide``. Pure: no I/O.

A written event is a contract (docs/ARCHITECTURE.md): ``jetagent replay --verify``
re-decides a history and compares what it decides with what was recorded. When
``decide`` starts to write more — an optional key in a step's input, which every reader
takes as optional — a history written before that must still verify. :func:`as_recorded`
gives a decided event in the shape the recorded one was written in: it leaves out a key
added since only when the recorded event lacks it, so a value that differs is still a
difference.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from jetagent.events import StepScheduled, WorkflowEvent

__all__ = ["ADDED_STEP_INPUTS", "as_recorded"]

ADDED_STEP_INPUTS: tuple[str, ...] = ("session_id",)
"""Keys a step's input gained after histories were first written, oldest first.

``session_id``: the workflow's session, on every tool step (a capability reads only its
step, never the workflow's ``Started`` event)."""

# The claim check's encoding (jetagent.payloads): a reference's digest is of these bytes.
_encoder = msgspec.json.Encoder(decimal_format="string")


def as_recorded(decided: WorkflowEvent, recorded: WorkflowEvent | None) -> WorkflowEvent:
    """``decided`` in the shape ``recorded`` was written in (itself when nothing differs
    but a key added since, or when they are not both ``StepScheduled``)."""
    if not isinstance(decided, StepScheduled) or not isinstance(recorded, StepScheduled):
        return decided
    added = [key for key in ADDED_STEP_INPUTS if key in decided.input]
    if not added:
        return decided
    if _is_ref(recorded.input):
        # A claim-checked input is known by its digest: of the current shape or the older.
        digest = recorded.input["sha256"]
        older = _without(decided.input, added)
        if _digest(decided.input) != digest and _digest(older) == digest:
            return msgspec.structs.replace(decided, input=older)
        return decided
    missing = [key for key in added if key not in recorded.input]
    if not missing:
        return decided
    return msgspec.structs.replace(decided, input=_without(decided.input, missing))


def _is_ref(value: dict[str, Any]) -> bool:
    return "$ref" in value and isinstance(value.get("sha256"), str)


def _without(value: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in keys}


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(_encoder.encode(value)).hexdigest()
