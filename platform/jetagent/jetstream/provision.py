"""Apply the declarative definitions in ``nats/`` (streams, consumers, KV, object stores).

Idempotent: ``jetagent provision`` and every service at start call :func:`provision`,
which says what it did about each stream, bucket and consumer: created, updated or in
place (one INFO line each, or an :class:`Applied` to whoever asks).

- **Replicas** follow the cluster the streams land on (``JETAGENT_REPLICAS``, default
  "auto": R3 on a cluster of three or more servers, R1 on one; see
  :mod:`jetagent.jetstream._placement`). Consumers follow their stream's (a consumer's
  ``num_replicas`` 0), so they change with it.
- **Placement**: ``JETAGENT_PLACEMENT_TAGS`` / ``_CLUSTER`` become every stream's and
  bucket's ``placement``; unset, a stream's placement is left as it is.
- **Changes to an existing deployment** (R1 → R3 when it grows, a new placement) are
  applied by ``jetagent provision`` (``change_existing``): "auto" only grows a stream, an
  explicit count sets it. A service leaves existing streams as they are (its NATS user
  may not change streams) and warns when one differs from what it was asked. What cannot
  change in place (storage type, retention, subjects) is refused with the reason
  (:func:`jetagent.jetstream._streams.stream_problems`).
- **Elections are waited out**: every request rides leader elections under one deadline
  (``JETAGENT_PROVISION_WAIT_S``) with progress lines, and a server without JetStream is
  said to be one (:mod:`jetagent.jetstream._api`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from nats.aio.client import Client as NATS

from jetagent.config import Settings
from jetagent.errors import ConfigError
from jetagent.jetstream._api import ApiDeadline, ApiReply, api_request
from jetagent.jetstream._consumers import ConsumerList, consumer_changes, ensure_consumer, report
from jetagent.jetstream._placement import (
    ClusterShape,
    ReplicaPlan,
    cluster_shape,
    plan_replicas,
)
from jetagent.jetstream._streams import Applied, ensure_stream
from jetagent.subjects import Names

__all__ = [
    "STREAM_FILES",
    "Applied",
    "bucket_configs",
    "consumer_changes",
    "consumer_config",
    "ensure_consumer",
    "provision",
    "repair_capability_consumers",
    "replica_plan",
    "report",
    "stream_configs",
]

log = logging.getLogger("jetagent.provision")

STREAM_FILES = ("requests", "workflows", "steps", "dlq", "calls", "timers")
ORCHESTRATOR_CONSUMERS = ("orchestrator-requests", "orchestrator-steps", "orchestrator-timers")
WAIT_SETTING = "JETAGENT_PROVISION_WAIT_S"
_NS = 1_000_000_000


def _definitions() -> Any:
    return resources.files("jetagent").joinpath("definitions")


def _fill(value: Any, names: Names, extra: dict[str, str]) -> Any:
    if isinstance(value, str):
        out = names.fill(value)
        for key, text in extra.items():
            out = out.replace("{" + key + "}", text)
        return out
    if isinstance(value, list):
        return [_fill(v, names, extra) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names, extra) for k, v in value.items() if not k.startswith("$")}
    return value


def replica_plan(nc: NATS, settings: Settings) -> ReplicaPlan:
    """The replicas the platform's streams get on the deployment ``nc`` is connected to
    (``JETAGENT_REPLICAS``); ConfigError for a count a single server cannot hold."""
    shape = cluster_shape(nc)
    elsewhere = settings.placement_cluster
    if elsewhere and elsewhere != shape.cluster:
        # Placed in another cluster of a super-cluster: this server does not advertise
        # that cluster's servers.
        shape = ClusterShape(cluster=elsewhere, servers=None)
    return plan_replicas(settings.replicas, shape)


def _count(settings: Settings, replicas: int | None) -> int | None:
    if replicas is not None:
        return replicas
    return settings.replicas if isinstance(settings.replicas, int) else None


def stream_configs(settings: Settings, *, replicas: int | None = None) -> list[dict[str, Any]]:
    """The platform's stream configs for the settings' prefix, with ``replicas`` (default:
    an explicit ``JETAGENT_REPLICAS``; none under "auto", which needs the server)."""
    count = _count(settings, replicas)
    configs = []
    for name in STREAM_FILES:
        raw = json.loads(_definitions().joinpath("streams", f"{name}.json").read_text())
        config = _fill(raw, settings.names, {})
        if count is not None:
            config["num_replicas"] = count
        if settings.placement is not None:
            config["placement"] = settings.placement
        configs.append(config)
    return configs


def bucket_configs(
    settings: Settings, *, replicas: int | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(kind, bucket, stream config)`` of every KV bucket and object store in
    ``nats/kv/buckets.json``. Each is the stream nats-py's ``create_key_value`` /
    ``create_object_store`` makes (``KV_<bucket>``, ``OBJ_<bucket>``), so nats-py opens
    it as a bucket; KV buckets read directly (``allow_direct``) unless
    defined with ``"direct": false``."""
    count = _count(settings, replicas)
    defined = _fill(
        json.loads(_definitions().joinpath("kv", "buckets.json").read_text()), settings.names, {}
    )
    out: list[tuple[str, str, dict[str, Any]]] = []
    for kv in defined["kv"]:
        bucket = kv["bucket"]
        config: dict[str, Any] = {
            "name": f"KV_{bucket}",
            "description": kv.get("description"),
            "subjects": [f"$KV.{bucket}.>"],
            "retention": "limits",
            "storage": "file",
            "discard": "new",
            "max_msgs_per_subject": kv.get("history", 1),
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "max_consumers": -1,
            "duplicate_window": 120 * _NS,
            # A bucket whose reads decide (QUOTAS) has no direct gets: any replica may
            # answer one, a stale one too (docs/ARCHITECTURE.md §5.8).
            "allow_direct": kv.get("direct", True),
            "allow_rollup_hdrs": True,
            "allow_msg_ttl": True,
            "deny_delete": True,
        }
        out.append(("kv", bucket, config))
    for obs in defined["object_stores"]:
        bucket = obs["bucket"]
        config = {
            "name": f"OBJ_{bucket}",
            "description": obs.get("description"),
            "subjects": [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
            "retention": "limits",
            "storage": "file",
            "discard": "new",
            "max_bytes": -1,
            "max_age": 0,
            "duplicate_window": 120 * _NS,
            "allow_direct": True,
            "allow_rollup_hdrs": True,
        }
        out.append(("object store", bucket, config))
    for _, _, config in out:
        if count is not None:
            config["num_replicas"] = count
        if settings.placement is not None:
            config["placement"] = settings.placement
    return out


def consumer_config(settings: Settings, kind: str, **extra: str) -> dict[str, Any]:
    """A consumer definition from ``nats/consumers/consumers.json``."""
    raw = json.loads(_definitions().joinpath("consumers", "consumers.json").read_text())
    if kind not in raw:
        raise ConfigError(f"no consumer definition {kind!r} in nats/consumers/consumers.json")
    config: dict[str, Any] = _fill(raw[kind], settings.names, extra)
    return config


def _deadline(
    settings: Settings, timeout: float, progress: Callable[[str], None] | None
) -> ApiDeadline:
    say = progress or (lambda line: log.warning("provisioning: %s", line))
    return ApiDeadline(
        settings.provision_wait_s, per_try_s=timeout, progress=say, setting=WAIT_SETTING
    )


async def provision(
    nc: NATS,
    settings: Settings,
    *,
    consumers: bool = True,
    change_existing: bool = False,
    timeout: float = 2.0,
    progress: Callable[[str], None] | None = None,
    on_applied: Callable[[Applied], None] | None = report,
) -> list[Applied]:
    """Create or check every stream and bucket and (with ``consumers``) the
    orchestrator's consumers; return what was done about each, in order.

    ``change_existing`` (``jetagent provision``) brings existing streams to the planned
    replicas ("auto" only grows them); without it an existing stream is only checked
    (least privilege: a service's user may not change streams). ``timeout`` bounds one
    try of a request; all of it waits at most ``JETAGENT_PROVISION_WAIT_S`` for leader
    elections, saying so through ``progress`` (default: log warnings). ``on_applied``
    hears of each item as it is done (default: an INFO line).
    """
    plan = replica_plan(nc, settings)
    deadline = _deadline(settings, timeout, progress)
    log.info(
        "provisioning under prefix %r: R%d%s (%s)",
        settings.prefix,
        plan.replicas,
        " for new streams" if plan.auto else "",
        plan.reason,
    )
    # Only the meta leader answers $JS.API.INFO: JetStream is there, and led, or this
    # waits for its election (or says JetStream is off).
    await api_request(nc, "$JS.API.INFO", b"", ApiReply, deadline=deadline)
    done: list[Applied] = []

    def note(applied: Applied) -> None:
        done.append(applied)
        if on_applied is not None:
            on_applied(applied)

    replicas_of: dict[str, int] = {}
    for config in stream_configs(settings, replicas=plan.replicas):
        applied = await ensure_stream(
            nc, config, change_existing=change_existing, keep_more=plan.auto, deadline=deadline
        )
        replicas_of[config["name"]] = applied.replicas
        note(applied)
    for kind, bucket, config in bucket_configs(settings, replicas=plan.replicas):
        note(
            await ensure_stream(
                nc,
                config,
                change_existing=change_existing,
                keep_more=plan.auto,
                deadline=deadline,
                kind=kind,
                label=bucket,
            )
        )
    if consumers:
        for kind in ORCHESTRATOR_CONSUMERS:
            config = consumer_config(settings, kind)
            note(
                await ensure_consumer(
                    nc,
                    config,
                    deadline=deadline,
                    stream_replicas=replicas_of.get(config["stream"]),
                    on_applied=None,
                )
            )
    return done


async def repair_capability_consumers(
    nc: NATS,
    settings: Settings,
    *,
    timeout: float = 2.0,
    progress: Callable[[str], None] | None = None,
    on_applied: Callable[[Applied], None] | None = report,
) -> list[Applied]:
    """Bring every existing capability consumer (``cap-*``) to the delivery settings:
    no ``backoff`` (the server would use its first value as the ack wait), the ack wait
    ``step_ack_wait_s``, no server-side delivery limit (workers count deliveries), and
    its stream's replicas. Workers do this for their own consumers at start; ``jetagent
    provision`` does it for all of them. Idempotent; returns what it changed, and tells
    ``on_applied`` of every one (changed or in place)."""
    stream = settings.names.workflows_stream
    ack_wait = int(settings.step_ack_wait_s * 1e9)
    deadline = _deadline(settings, timeout, progress)
    changed = []
    offset = 0
    while True:
        listing = await api_request(
            nc,
            f"$JS.API.CONSUMER.LIST.{stream}",
            json.dumps({"offset": offset}).encode(),
            ConsumerList,
            deadline=deadline,
        )
        if listing.error is not None:
            raise ConfigError(f"cannot list the consumers of {stream}: {listing.error.description}")
        found = listing.consumers or []
        for info in found:
            config = dict(info.get("config") or {})
            name = config.get("durable_name") or info.get("name", "")
            if not name.startswith("cap-"):
                continue
            if (
                not config.get("backoff")
                and config.get("ack_wait") == ack_wait
                and config.get("max_deliver") == -1
                and not config.get("num_replicas")
            ):
                if on_applied is not None:
                    peers = (info.get("cluster") or {}).get("replicas") or []
                    on_applied(Applied(name, "consumer", 1 + len(peers), "in place"))
                continue
            config.pop("backoff", None)
            config["ack_wait"] = ack_wait
            config["max_deliver"] = -1
            config["num_replicas"] = 0
            changed.append(
                await ensure_consumer(
                    nc, {**config, "stream": stream}, deadline=deadline, on_applied=on_applied
                )
            )
        offset += len(found)
        if not found or offset >= listing.total:
            return changed
