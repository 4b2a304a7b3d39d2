"""Durable consumers: create one, find it in place, or update it to its definition, and
say which (provisioning's report, one INFO line per item).

A consumer's definition is compared with what the server reports, as the server
normalises it (a single filter kept as ``filter_subject``, ``num_replicas`` 0 for "its
stream's"); only what the definition names is compared, and a ``backoff`` it does not
name counts as one to remove (it would replace the ack wait; docs/ARCHITECTURE.md §5,
fact 4). Which consumer settings nats-server refuses to update in place (the ack policy,
say) is said in its words.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from jetagent.errors import ConfigError
from jetagent.jetstream._api import ApiDeadline, ApiReply, api_request
from jetagent.jetstream._streams import Applied
from jetagent.jetstream.headers import ErrorCode

__all__ = ["ConsumerList", "consumer_changes", "ensure_consumer", "report"]

log = logging.getLogger("jetagent.provision")


def report(applied: Applied) -> None:
    """Say what provisioning did about one item: an INFO line, or a warning when the
    item differs from what was asked and was left alone."""
    if applied.attention:
        log.warning("provisioning: %s; `jetagent provision` applies it", applied.line())
    else:
        log.info("provisioning: %s", applied.line())


class _ConsumerReply(ApiReply):
    config: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None


class ConsumerList(ApiReply):
    """A ``CONSUMER.LIST`` reply: one page of consumer infos."""

    consumers: list[dict[str, Any]] | None = None
    total: int = 0


def _filters(config: dict[str, Any]) -> set[str]:
    # nats-server keeps a single filter as filter_subject, whichever way it was given.
    found = set(config.get("filter_subjects") or [])
    if config.get("filter_subject"):
        found.add(config["filter_subject"])
    return found


def consumer_changes(actual: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings of ``wanted`` an existing consumer (``actual``) does not have."""
    changes = []
    if ("filter_subject" in wanted or "filter_subjects" in wanted) and (
        _filters(actual) != _filters(wanted)
    ):
        changes.append("filter subjects")
    if actual.get("backoff") and not wanted.get("backoff"):
        changes.append("backoff removed")
    for key, value in wanted.items():
        if key in ("filter_subject", "filter_subjects", "backoff"):
            continue
        have = actual.get(key)
        if (have or None) != (value or None):
            changes.append(f"{key} {have!r} → {value!r}")
    return changes


def _consumer_replicas(
    config: dict[str, Any], reply: _ConsumerReply, stream_replicas: int | None
) -> int:
    if config.get("num_replicas"):
        return int(config["num_replicas"])
    if stream_replicas is not None:
        return stream_replicas
    peers = (reply.cluster or {}).get("replicas") or []
    return 1 + len(peers)


async def ensure_consumer(
    nc: NATS,
    config: dict[str, Any],
    *,
    timeout: float = 2.0,
    wait_s: float = 60.0,
    deadline: ApiDeadline | None = None,
    stream_replicas: int | None = None,
    on_applied: Callable[[Applied], None] | None = report,
) -> Applied:
    """Create the durable consumer, or update it to ``config``; idempotent. Says what it
    did (``on_applied``, default: a log line) and returns it. ``stream_replicas`` is its
    stream's, when known (a consumer with ``num_replicas`` 0 follows it). Rides leader
    elections for up to ``wait_s`` seconds (or ``deadline``), ``timeout`` per try."""
    config = dict(config)
    stream = config.pop("stream")
    name = config["durable_name"]
    deadline = deadline or ApiDeadline(wait_s, per_try_s=timeout)
    info = await api_request(
        nc,
        f"$JS.API.CONSUMER.INFO.{stream}.{name}",
        b"",
        _ConsumerReply,
        deadline=deadline,
        waiting_for=f"the leader of consumer {name} on {stream}",
    )
    if info.error is None and info.config is not None:
        changes = consumer_changes(info.config, config)
        if not changes:
            applied = Applied(
                name, "consumer", _consumer_replicas(config, info, stream_replicas), "in place"
            )
            if on_applied is not None:
                on_applied(applied)
            return applied
        action, detail = "updated", "; ".join(changes)
    elif info.error is not None and info.error.err_code == ErrorCode.CONSUMER_NOT_FOUND:
        action, detail = "created", ""
    else:
        reason = info.error.description if info.error is not None else "no config in the reply"
        raise ConfigError(f"cannot read consumer {name} on {stream}: {reason}")
    body = json.dumps({"stream_name": stream, "config": config}).encode()
    reply = await api_request(
        nc, f"$JS.API.CONSUMER.CREATE.{stream}.{name}", body, _ConsumerReply, deadline=deadline
    )
    if reply.error is not None:
        verb = "create" if action == "created" else "update"
        raise ConfigError(
            f"cannot {verb} consumer {name} on {stream}: {reply.error.description}"
            + (f" (changing {detail})" if detail else "")
        )
    applied = Applied(
        name,
        "consumer",
        _consumer_replicas(config, reply, stream_replicas),
        "created" if action == "created" else "updated",
        detail,
    )
    if on_applied is not None:
        on_applied(applied)
    return applied
