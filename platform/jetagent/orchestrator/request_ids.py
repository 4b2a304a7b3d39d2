"""The workflow id of a request whose body names no ``request_id``.

It must be the same on every delivery of the message, or a redelivery (after a crash
between recording the start and acknowledging the request) would start a second
workflow. So it is derived from the message: its ``Nats-Msg-Id`` when it has one (the
publisher's own idempotency key), else ``seq-<N>`` with N the request's sequence in
``JA_REQUESTS`` — which the publisher reads from its publish acknowledgement.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from jetagent.contract import ID_PATTERN

__all__ = ["derived_request_id", "sequence_id"]


class _RequestIdOnly(msgspec.Struct):
    request_id: Any = msgspec.UNSET


_decoder = msgspec.json.Decoder(_RequestIdOnly)


def sequence_id(stream_seq: int) -> str:
    """The id a request without ``request_id`` or ``Nats-Msg-Id`` gets."""
    return f"seq-{stream_seq}"


def derived_request_id(data: bytes, *, msg_id: str | None, stream_seq: int) -> str | None:
    """None when the body names its ``request_id``; else the id derived from the message.

    A ``Nats-Msg-Id`` that cannot be a subject token is not used (the request is then
    rejected for the mismatch, with both values in the reason).
    """
    try:
        named = _decoder.decode(data).request_id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # not a JSON object (validation says why)
    if named is not msgspec.UNSET:
        return None
    if msg_id:
        return msg_id if re.fullmatch(ID_PATTERN, msg_id) else None
    return sequence_id(stream_seq)
