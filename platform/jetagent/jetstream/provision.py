"""Apply the declarative definitions in ``nats/`` (streams, consumers, KV, object stores).

Idempotent: ``jetagent provision`` and every service at start call :func:`provision`;
an existing stream is checked against its definition and refused with a clear message
if it cannot work (wrong subjects, atomic publish off, limits that delete events).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, NotFoundError

from jetagent.config import Settings
from jetagent.errors import ConfigError
from jetagent.jetstream._streams import ensure_stream
from jetagent.subjects import Names

__all__ = [
    "STREAM_FILES",
    "consumer_config",
    "ensure_consumer",
    "provision",
    "repair_capability_consumers",
    "stream_configs",
]

STREAM_FILES = ("requests", "workflows", "steps", "dlq", "calls", "timers")


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


def stream_configs(settings: Settings) -> list[dict[str, Any]]:
    """The platform's stream configs, filled in for the settings' prefix and replicas."""
    configs = []
    for name in STREAM_FILES:
        raw = json.loads(_definitions().joinpath("streams", f"{name}.json").read_text())
        config = _fill(raw, settings.names, {})
        config["num_replicas"] = settings.replicas
        configs.append(config)
    return configs


def consumer_config(settings: Settings, kind: str, **extra: str) -> dict[str, Any]:
    """A consumer definition from ``nats/consumers/consumers.json``."""
    raw = json.loads(_definitions().joinpath("consumers", "consumers.json").read_text())
    if kind not in raw:
        raise ConfigError(f"no consumer definition {kind!r} in nats/consumers/consumers.json")
    config: dict[str, Any] = _fill(raw[kind], settings.names, extra)
    if settings.replicas > 1:
        config["num_replicas"] = settings.replicas
    return config


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _ConsumerReply(msgspec.Struct):
    error: _ApiError | None = None


async def ensure_consumer(nc: NATS, config: dict[str, Any], *, timeout: float = 5.0) -> None:
    """Create the durable consumer, or update it to ``config`` (idempotent)."""
    config = dict(config)
    stream = config.pop("stream")
    name = config["durable_name"]
    body = json.dumps({"stream_name": stream, "config": config}).encode()
    try:
        reply = await nc.request(f"$JS.API.CONSUMER.CREATE.{stream}.{name}", body, timeout=timeout)
    except NatsError as exc:
        raise ConfigError(f"cannot create consumer {name} on {stream}: {exc}") from exc
    answer = msgspec.json.decode(reply.data, type=_ConsumerReply)
    if answer.error is not None:
        raise ConfigError(f"cannot create consumer {name} on {stream}: {answer.error.description}")


async def provision(
    nc: NATS, settings: Settings, *, timeout: float = 5.0, consumers: bool = True
) -> list[str]:
    """Create or check every stream, bucket and (with ``consumers``) the orchestrator's
    consumers; return what exists. A service without the right to create a stream only
    checks it (least privilege: an operator runs ``jetagent provision``)."""
    done = []
    for config in stream_configs(settings):
        await ensure_stream(nc, config, timeout=timeout)
        done.append(f"stream {config['name']}")
    js = nc.jetstream(timeout=timeout)
    storage = StorageType.FILE
    buckets = _fill(
        json.loads(_definitions().joinpath("kv", "buckets.json").read_text()), settings.names, {}
    )
    for kv in buckets["kv"]:
        try:
            await js.key_value(kv["bucket"])
        except (NotFoundError, BadRequestError):
            await js.create_key_value(
                KeyValueConfig(
                    bucket=kv["bucket"],
                    description=kv.get("description"),
                    history=kv.get("history", 1),
                    storage=storage,
                    replicas=settings.replicas,
                    direct=kv.get("direct", True),
                )
            )
        done.append(f"kv {kv['bucket']}")
    for obs in buckets["object_stores"]:
        try:
            await js.object_store(obs["bucket"])
        except (NotFoundError, BadRequestError):
            await js.create_object_store(
                obs["bucket"],
                config=ObjectStoreConfig(
                    description=obs.get("description"), storage=storage, replicas=settings.replicas
                ),
            )
        done.append(f"object store {obs['bucket']}")
    if consumers:
        for kind in ("orchestrator-requests", "orchestrator-steps", "orchestrator-timers"):
            await ensure_consumer(nc, consumer_config(settings, kind), timeout=timeout)
            done.append(f"consumer {kind}")
    return done


async def repair_capability_consumers(
    nc: NATS, settings: Settings, *, timeout: float = 5.0
) -> list[str]:
    """Bring every existing capability consumer (``cap-*``) to the delivery settings:
    no ``backoff`` (the server would use its first value as the ack wait), the ack wait
    ``step_ack_wait_s`` and no server-side delivery limit (workers count deliveries).
    Workers do this for their own consumers at start; ``jetagent provision`` does it for
    all of them. Idempotent; returns what it changed."""
    stream = settings.names.workflows_stream
    ack_wait = int(settings.step_ack_wait_s * 1e9)
    changed = []
    offset = 0
    while True:
        body = json.dumps({"offset": offset}).encode()
        try:
            reply = await nc.request(f"$JS.API.CONSUMER.LIST.{stream}", body, timeout=timeout)
        except NatsError as exc:
            raise ConfigError(f"cannot list the consumers of {stream}: {exc}") from exc
        listing: dict[str, Any] = json.loads(reply.data)
        consumers = listing.get("consumers") or []
        for info in consumers:
            config = dict(info.get("config") or {})
            name = config.get("durable_name") or info.get("name", "")
            if not name.startswith("cap-"):
                continue
            if (
                not config.get("backoff")
                and config.get("ack_wait") == ack_wait
                and config.get("max_deliver") == -1
            ):
                continue
            config.pop("backoff", None)
            config["ack_wait"] = ack_wait
            config["max_deliver"] = -1
            await ensure_consumer(nc, {**config, "stream": stream}, timeout=timeout)
            changed.append(f"consumer {name} (no backoff, ack wait {settings.step_ack_wait_s:g} s)")
        offset += len(consumers)
        if not consumers or offset >= int(listing.get("total", 0)):
            return changed
