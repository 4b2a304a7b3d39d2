"""Decoding untrusted bytes with limits, at every door of the orchestrator.

Requests, cancels, signals and step results come from publishers jetagent does not
control. JSON parsers recurse: a body nested thousands of levels deep makes msgspec
raise ``RecursionError`` — not a decode error — so depth is measured first, by a scan
that does not recurse. Size is checked before anything else. Every failure becomes a
``PoisonMessage`` with a reason a person can read; the orchestrator answers it once
(a ``RequestRejected`` or a dead letter) and never retries it: retrying cannot help.

Ids read from a message become subject tokens and KV keys, so they must be tokens
(``ID_PATTERN``, README "Rejections and dead letters"); an input that names anything
else is poison too, never a transient error.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

import msgspec

from jetagent._depth import MAX_DEPTH, nests_deeper_than
from jetagent.contract import ID_PATTERN
from jetagent.errors import JetagentError
from jetagent.events import CancelRequested, SignalSent, StepResult

__all__ = [
    "MAX_DEPTH",
    "MAX_MESSAGE_BYTES",
    "MAX_RESULT_DEPTH",
    "PoisonMessage",
    "UntrustedResult",
    "check_limits",
    "decode_cancel",
    "decode_json",
    "decode_signal",
    "decode_step_result",
    "is_token",
    "nests_deeper_than",
    "shown",
]

# MAX_DEPTH (from _depth): deepest JSON nesting accepted in a request, cancel or signal
# (a request's JSON Schema included).
MAX_RESULT_DEPTH = 200
"""Deepest JSON nesting of a step result (a tool may return deep JSON of its own)."""
MAX_MESSAGE_BYTES = 1024 * 1024
"""Largest cancel, signal or step result read (the streams' ``max_msg_size``)."""

_TOKEN = re.compile(ID_PATTERN)

T = TypeVar("T")


class PoisonMessage(JetagentError):
    """A message that can never be processed; ``reason`` says why, for the sender.

    ``workflow_id`` is the workflow it concerns, when that could be read as a token.
    """

    kind: Literal["poison", "untrusted"] = "poison"
    """The dead letter's kind (``jetagent.dead_letter``)."""

    def __init__(self, reason: str, *, workflow_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.workflow_id = workflow_id


class UntrustedResult(PoisonMessage):
    """A step result that matches no step as it was scheduled (``jetagent.result_check``)."""

    kind: Literal["poison", "untrusted"] = "untrusted"


def is_token(value: object) -> bool:
    """Whether ``value`` is an id usable as a subject token and KV key."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def shown(value: object, limit: int = 80) -> str:
    """``repr`` of a value from a message, cut short (a reason must stay readable)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_limits(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH
) -> None:
    """Raise ``PoisonMessage`` if ``data`` is larger or nests deeper than allowed."""
    if len(data) > max_bytes:
        raise PoisonMessage(f"the message is {len(data)} bytes; the limit is {max_bytes} bytes")
    if nests_deeper_than(data, max_depth):
        raise PoisonMessage(f"the JSON is nested more than {max_depth} levels deep")


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decode_json(
    data: bytes,
    kind: type[T],
    *,
    what: str,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_depth: int = MAX_DEPTH,
) -> T:
    """``data`` as ``kind``, within the limits; ``PoisonMessage`` says why it is not."""
    check_limits(data, max_bytes=max_bytes, max_depth=max_depth)
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        value: T = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise PoisonMessage(f"not a valid {what}: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise PoisonMessage(f"not a valid {what}: the body is not JSON ({exc})") from None
    return value


def _workflow_id(value: str, what: str) -> str:
    if not is_token(value):
        raise PoisonMessage(
            f"{what} names workflow id {shown(value)}, which is not a valid workflow id "
            "(1-64 letters, digits, '-' or '_')"
        )
    return value


def decode_cancel(data: bytes) -> CancelRequested:
    """A ``CancelRequested`` from ``<prefix>.cancel.<workflow_id>``."""
    cancel = decode_json(data, CancelRequested, what="CancelRequested")
    _workflow_id(cancel.workflow_id, "the cancel")
    return cancel


def decode_signal(data: bytes) -> SignalSent:
    """A ``SignalSent`` from ``<prefix>.signal.<workflow_id>.<name>``."""
    signal = decode_json(data, SignalSent, what="SignalSent")
    _workflow_id(signal.workflow_id, "the signal")
    return signal


def decode_step_result(data: bytes) -> StepResult:
    """A ``StepResult`` whose ids are tokens (whether it is *trusted* is decided later,
    against the workflow: ``jetagent.result_check``)."""
    result = decode_json(data, StepResult, what="StepResult", max_depth=MAX_RESULT_DEPTH)
    wid = _workflow_id(result.workflow_id, "the step result")
    for name, value in (("step id", result.step_id), ("capability", result.capability)):
        if not is_token(value):
            raise PoisonMessage(
                f"the step result's {name} {shown(value)} is not a valid token", workflow_id=wid
            )
    return result
