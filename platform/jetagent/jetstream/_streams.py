"""Stream definitions from ``nats/streams/``, the check that an existing stream fits, and
:func:`ensure_stream`: create a stream, find it in place, or change its replicas.

Definitions use nats-server's own stream API JSON (what ``nats stream add --config``
reads), so the same files serve ``jetagent provision``, the nats CLI and reviews. What
an existing stream cannot become in place is refused with the reason: nats-server cannot
change a stream's storage type or its retention to or from work-queue, and jetagent never
changes a stream's subjects (removing one would orphan the messages stored under it;
adding one could merge another application's stream of the same name). Its replicas and
its placement can change in place (nats-server copies the messages to the new peers, or
moves the stream; docs/ARCHITECTURE.md §5, fact 13), and do when the caller allows it
(``change_existing``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeVar

import msgspec
from nats.aio.client import Client as NATS

from jetagent.jetstream._api import ApiDeadline, ApiReply, api_request
from jetagent.jetstream._errors import JetStreamUnavailableError, StreamConfigError
from jetagent.jetstream.headers import ErrorCode

__all__ = [
    "Applied",
    "ensure_stream",
    "load_definition",
    "stream_last_seq",
    "stream_problems",
]


@dataclass(frozen=True)
class Applied:
    """What provisioning did about one stream, bucket or consumer."""

    name: str
    """The stream, bucket or consumer name (``JA_STEPS``, ``JA_SESSIONS``, ``cap-tools``)."""
    kind: str
    """``stream``, ``kv``, ``object store`` or ``consumer``."""
    replicas: int
    """Its replicas once done."""
    action: Literal["created", "updated", "in place"]
    detail: str = ""
    """What changed (``replicas 1 → 3``), or what differs and was left alone."""
    attention: bool = False
    """It differs from what was asked and was left as it is (said as a warning)."""

    def line(self) -> str:
        """One line for a log: ``stream JA_STEPS R3: updated (replicas 1 → 3)``."""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.name} R{self.replicas}: {self.action}{detail}"


def load_definition(name: str) -> dict[str, Any]:
    """The stream definition ``nats/streams/<name>.json`` (``$comment`` keys dropped)."""
    text = (
        resources.files("jetagent").joinpath("definitions", "streams", f"{name}.json").read_text()
    )
    data: dict[str, Any] = json.loads(text)
    return {k: v for k, v in data.items() if not k.startswith("$")}


def stream_problems(actual: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What makes an existing stream's config unusable where ``wanted`` is expected (and
    cannot be changed in place)."""
    problems: list[str] = []
    subjects = set(actual.get("subjects") or [])
    for subject in wanted.get("subjects", []):
        if subject not in subjects and ">" not in subjects:
            problems.append(f"its subjects {sorted(subjects)} do not include {subject!r}")
    if "storage" in wanted and actual.get("storage", "file") != wanted["storage"]:
        problems.append(
            f"its storage is {actual.get('storage', 'file')!r} (it must be "
            f"{wanted['storage']!r}; nats-server cannot change a stream's storage in place: "
            "back it up, delete it and restore it, e.g. `nats stream backup` / `restore`)"
        )
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


class _StreamReply(ApiReply):
    config: dict[str, Any] | None = None


class _StreamState(msgspec.Struct):
    last_seq: int = 0


class _PositionReply(ApiReply):
    state: _StreamState | None = None


def _leader(stream: str) -> str:
    return f"the leader of stream {stream}"


_Info = TypeVar("_Info", bound=ApiReply)


async def _stream_info(nc: NATS, stream: str, reply: type[_Info], deadline: ApiDeadline) -> _Info:
    """``STREAM.INFO`` of ``stream`` as its leader answers it (riding its election)."""
    subject = f"$JS.API.STREAM.INFO.{stream}"
    return await api_request(
        nc, subject, b"", reply, deadline=deadline, waiting_for=_leader(stream)
    )


async def stream_last_seq(
    nc: NATS, stream: str, *, timeout: float = 5.0, deadline: ApiDeadline | None = None
) -> int:
    """The stream's last sequence (``0`` while empty), as its leader knows it: what a
    ``Nats-Expected-Last-Sequence`` check compares with. Waits up to ``timeout`` seconds
    in all (or ``deadline``) while the stream's leader is elected."""
    deadline = deadline or ApiDeadline(timeout, per_try_s=min(2.0, timeout))
    info = await _stream_info(nc, stream, _PositionReply, deadline)
    if info.error is not None or info.state is None:
        reason = info.error.description if info.error is not None else "no state in the reply"
        raise JetStreamUnavailableError(f"cannot read the position of stream {stream!r}: {reason}")
    return info.state.last_seq


def _replicas(config: dict[str, Any]) -> int:
    return int(config.get("num_replicas") or 1)


def placement_text(placement: dict[str, Any] | None) -> str:
    """``cluster 'east', tags ssd, az:1`` (``anywhere`` for no placement)."""
    cluster, tags = _placement(placement)
    parts = [f"cluster {cluster!r}"] if cluster else []
    if tags:
        parts.append("tags " + ", ".join(tags))
    return ", ".join(parts) or "anywhere"


def _placement(placement: dict[str, Any] | None) -> tuple[str | None, tuple[str, ...]]:
    # nats-server lower-cases server tags, and placement tags with them.
    placement = placement or {}
    tags = tuple(sorted(str(t).lower() for t in placement.get("tags") or ()))
    return placement.get("cluster") or None, tags


def _describe(config: dict[str, Any]) -> str:
    where = config.get("placement")
    return f"R{_replicas(config)}" + (f", placement {placement_text(where)}" if where else "")


def _hint(err_code: int, config: dict[str, Any]) -> str:
    replicas = _replicas(config)
    if err_code == ErrorCode.NO_SUITABLE_PEERS:
        where = ""
        if config.get("placement"):
            where = f" and the placement ({placement_text(config['placement'])})"
        return (
            f" (R{replicas} needs {replicas} running servers with JetStream{where} in the "
            "cluster: is one of them down, or are there fewer?)"
        )
    if err_code == ErrorCode.REPLICAS_NOT_SUPPORTED:
        return " (the server runs alone, not in a cluster: it holds R1 streams only)"
    if err_code == ErrorCode.STREAM_MOVE_IN_PROGRESS:
        return " (an earlier change is still moving it: try again once it has settled)"
    return ""


async def ensure_stream(
    nc: NATS,
    config: dict[str, Any],
    *,
    create: bool = True,
    change_existing: bool = False,
    keep_more: bool = False,
    timeout: float = 5.0,
    deadline: ApiDeadline | None = None,
    kind: str = "stream",
    label: str | None = None,
) -> Applied:
    """Create the stream if it is missing, or check that the existing one fits
    ``config``; with ``change_existing``, bring its replicas (``num_replicas``) and its
    placement (``placement``, when given) to ``config``'s. Without it a difference is
    only reported (:attr:`Applied.attention`). With ``keep_more`` fewer replicas than the
    stream has are not asked for ("auto": a node that is down is missing from the servers
    a cluster advertises).

    Idempotent. Waits up to ``timeout`` seconds in all (or ``deadline``) while leaders
    are elected. ``kind`` and ``label`` name it in the returned :class:`Applied` (a KV
    bucket ``JA_SESSIONS`` is the stream ``KV_JA_SESSIONS``).
    """
    name = config["name"]
    label = label or name
    deadline = deadline or ApiDeadline(timeout, per_try_s=min(2.0, timeout))
    info = await _stream_info(nc, name, _StreamReply, deadline)
    if info.error is None and info.config is not None:
        return await _check_existing(
            nc, info.config, config, change_existing, keep_more, deadline, kind, label
        )
    if info.error is not None and info.error.err_code != ErrorCode.STREAM_NOT_FOUND:
        raise StreamConfigError(f"cannot read stream {name!r}: {info.error.description}")
    if not create:
        raise StreamConfigError(
            f"stream {name!r} does not exist and creating it is turned off "
            "(run `jetagent provision`, or unset NATS_CREATE_STREAM)"
        )
    body = json.dumps(config).encode()
    created = await api_request(
        nc, f"$JS.API.STREAM.CREATE.{name}", body, _StreamReply, deadline=deadline
    )
    if created.error is not None:
        if created.error.err_code == ErrorCode.STREAM_NAME_IN_USE:
            # Created meanwhile by another process: check what it made.
            return await ensure_stream(
                nc,
                config,
                create=False,
                change_existing=change_existing,
                keep_more=keep_more,
                deadline=deadline,
                kind=kind,
                label=label,
            )
        hint = _hint(created.error.err_code, config)
        raise StreamConfigError(
            f"cannot create {kind} {label!r}: {created.error.description}{hint}"
        )
    assert created.config is not None
    # A server too old for a feature drops its flag silently: check what it made.
    problems = stream_problems(created.config, config)
    if problems:
        raise StreamConfigError(
            f"stream {name!r} was created without what it needs (is nats-server too old? "
            "message schedules need 2.12): " + "; ".join(problems)
        )
    return Applied(label, kind, _replicas(created.config), "created")


async def _has(nc: NATS, name: str, changes: dict[str, Any], deadline: ApiDeadline) -> bool:
    """Whether the stream already has ``changes``: an update retried after a lost reply
    finds its first try applied (a placement change then reports a move in progress)."""
    info = await _stream_info(nc, name, _StreamReply, deadline)
    config = info.config or {}
    if "num_replicas" in changes and _replicas(config) != changes["num_replicas"]:
        return False
    return "placement" not in changes or _placement(config.get("placement")) == _placement(
        changes["placement"]
    )


async def _check_existing(
    nc: NATS,
    actual: dict[str, Any],
    wanted: dict[str, Any],
    change_existing: bool,
    keep_more: bool,
    deadline: ApiDeadline,
    kind: str,
    label: str,
) -> Applied:
    name = wanted["name"]
    problems = stream_problems(actual, wanted)
    if problems:
        raise StreamConfigError(
            f"{kind} {label!r} exists but cannot be used as configured: "
            + "; ".join(problems)
            + ". Fix or delete the stream, or set NATS_STREAM to another name."
        )
    have = _replicas(actual)
    changes: dict[str, Any] = {}
    said: list[str] = []
    want = _replicas(wanted)
    if "num_replicas" in wanted and want != have and not (want < have and keep_more):
        changes["num_replicas"] = want
        said.append(f"replicas {have} → {want}")
    if "placement" in wanted and _placement(actual.get("placement")) != _placement(
        wanted["placement"]
    ):
        changes["placement"] = wanted["placement"]
        said.append(
            f"placement {placement_text(actual.get('placement'))} → "
            f"{placement_text(wanted['placement'])}"
        )
    if not changes:
        return Applied(label, kind, have, "in place")
    if not change_existing:
        asked = "; ".join(said)
        return Applied(
            label, kind, have, "in place", f"{asked} asked, not changed here", attention=True
        )
    updated = await api_request(
        nc,
        f"$JS.API.STREAM.UPDATE.{name}",
        json.dumps({**actual, **changes}).encode(),
        _StreamReply,
        deadline=deadline,
    )
    if updated.error is not None and not await _has(nc, name, changes, deadline):
        raise StreamConfigError(
            f"cannot change {kind} {label!r} ({'; '.join(said)}): "
            f"{updated.error.description}{_hint(updated.error.err_code, {**actual, **changes})}"
            f". It is unchanged: {_describe(actual)}."
        )
    # nats-server answers once the change is agreed; the new peers catch up afterwards
    # (the stream stays available meanwhile).
    return Applied(
        label,
        kind,
        _replicas(changes) if "num_replicas" in changes else have,
        "updated",
        "; ".join(said),
    )
