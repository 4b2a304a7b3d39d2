"""Stream definitions from ``nats/streams/`` and the check that an existing stream fits.

Definitions use nats-server's own stream API JSON (what ``nats stream add --config``
reads), so the same files serve ``jetagent provision``, the nats CLI and reviews.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from jetagent.jetstream._errors import JetStreamUnavailableError, StreamConfigError
from jetagent.jetstream.headers import ErrorCode

__all__ = ["ensure_stream", "load_definition", "stream_last_seq", "stream_problems"]


def load_definition(name: str) -> dict[str, Any]:
    """The stream definition ``nats/streams/<name>.json`` (``$comment`` keys dropped)."""
    text = (
        resources.files("jetagent").joinpath("definitions", "streams", f"{name}.json").read_text()
    )
    data: dict[str, Any] = json.loads(text)
    return {k: v for k, v in data.items() if not k.startswith("$")}


def stream_problems(actual: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What makes an existing stream's config unusable where ``wanted`` is expected."""
    problems: list[str] = []
    subjects = set(actual.get("subjects") or [])
    for subject in wanted.get("subjects", []):
        if subject not in subjects and ">" not in subjects:
            problems.append(f"its subjects {sorted(subjects)} do not include {subject!r}")
    for flag in ("allow_direct", "allow_atomic", "allow_msg_schedules"):
        if wanted.get(flag) and not actual.get(flag):
            problems.append(f"{flag} is off (it must be true)")
    if actual.get("retention", "limits") != wanted.get("retention", "limits"):
        problems.append(
            f"retention is {actual.get('retention')!r} (it must be {wanted.get('retention')!r})"
        )
    if actual.get("persist_mode") == "async" and wanted.get("allow_atomic"):
        problems.append("persist_mode is 'async', which does not allow atomic batch publish")
    if wanted.get("max_age", 0) == 0 and actual.get("max_age", 0) not in (0, None):
        problems.append(
            f"max_age is {actual['max_age'] / 1e9:.0f} s, which deletes records (it must be 0)"
        )
    for limit in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
        if wanted.get(limit, -1) == -1 and actual.get(limit, -1) not in (-1, 0, None):
            problems.append(f"{limit} is {actual[limit]}, which deletes records (it must be -1)")
    wanted_window = wanted.get("duplicate_window", 0)
    if wanted_window and actual.get("duplicate_window", 0) < wanted_window:
        problems.append(
            f"duplicate_window is {actual.get('duplicate_window', 0) / 1e9:.0f} s "
            f"(it must be at least {wanted_window / 1e9:.0f} s)"
        )
    return problems


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _StreamReply(msgspec.Struct):
    error: _ApiError | None = None
    config: dict[str, Any] | None = None


class _StreamState(msgspec.Struct):
    last_seq: int = 0


class _PositionReply(msgspec.Struct):
    error: _ApiError | None = None
    state: _StreamState | None = None


_Reply = TypeVar("_Reply", _StreamReply, _PositionReply)


async def _api(nc: NATS, subject: str, body: bytes, timeout: float, reply: type[_Reply]) -> _Reply:
    try:
        msg = await nc.request(subject, body, timeout=timeout)
        return msgspec.json.decode(msg.data, type=reply)
    except (NatsError, msgspec.DecodeError) as exc:
        raise JetStreamUnavailableError(
            f"the JetStream API did not answer ({type(exc).__name__}: {exc}); "
            "is JetStream enabled on the server?"
        ) from exc


async def stream_last_seq(nc: NATS, stream: str, *, timeout: float = 5.0) -> int:
    """The stream's last sequence (``0`` while empty), as its leader knows it: what a
    ``Nats-Expected-Last-Sequence`` check compares with."""
    info = await _api(nc, f"$JS.API.STREAM.INFO.{stream}", b"", timeout, _PositionReply)
    if info.error is not None or info.state is None:
        reason = info.error.description if info.error is not None else "no state in the reply"
        raise JetStreamUnavailableError(f"cannot read the position of stream {stream!r}: {reason}")
    return info.state.last_seq


async def ensure_stream(
    nc: NATS, config: dict[str, Any], *, create: bool = True, timeout: float = 5.0
) -> dict[str, Any]:
    """Create the stream if it is missing, or check that the existing one fits ``config``.

    Returns the stream's config as the server reports it. Idempotent.
    """
    name = config["name"]
    info = await _api(nc, f"$JS.API.STREAM.INFO.{name}", b"", timeout, _StreamReply)
    if info.error is None and info.config is not None:
        problems = stream_problems(info.config, config)
        if problems:
            raise StreamConfigError(
                f"stream {name!r} exists but cannot be used as configured: "
                + "; ".join(problems)
                + ". Fix or delete the stream, or set NATS_STREAM to another name."
            )
        return info.config
    if info.error is not None and info.error.err_code != ErrorCode.STREAM_NOT_FOUND:
        raise StreamConfigError(f"cannot read stream {name!r}: {info.error.description}")
    if not create:
        raise StreamConfigError(
            f"stream {name!r} does not exist and creating it is turned off "
            "(run `jetagent provision`, or unset NATS_CREATE_STREAM)"
        )
    body = json.dumps(config).encode()
    created = await _api(nc, f"$JS.API.STREAM.CREATE.{name}", body, timeout, _StreamReply)
    if created.error is not None:
        if created.error.err_code == ErrorCode.STREAM_NAME_IN_USE:
            # Created meanwhile by another process: check what it made.
            return await ensure_stream(nc, config, create=False, timeout=timeout)
        raise StreamConfigError(f"cannot create stream {name!r}: {created.error.description}")
    assert created.config is not None
    # A server too old for a feature drops its flag silently: check what it made.
    problems = stream_problems(created.config, config)
    if problems:
        raise StreamConfigError(
            f"stream {name!r} was created without what it needs (is nats-server too old? "
            "message schedules need 2.12): " + "; ".join(problems)
        )
    return created.config
