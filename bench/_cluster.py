"""A 3-node JetStream cluster for the ``cluster`` suite, and what the suite asks of it.

The nodes are :class:`jetagent.embedded.EmbeddedServer` processes on loopback
(:func:`jetagent.testing.nats_cluster`), so a node can be SIGKILLed and started again
on its store and ports. Besides that: provisioning a prefix with R3 streams before its
services start (retried: on a loaded machine a freshly formed cluster may leave a
JetStream API request unanswered, and the services of today give up on the first such
timeout), waiting until every replica of every stream and consumer is current again
after a restart, moving a stream's leader to a chosen node, and listing the Raft groups
a node leads (what a SIGKILL of it sets electing: docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from jetagent.config import Settings
from jetagent.embedded import EmbeddedCluster, EmbeddedServer
from jetagent.errors import JetagentError
from jetagent.jetstream import connect
from jetagent.jetstream.provision import provision

__all__ = [
    "Led",
    "groups_led",
    "move_stream_leader",
    "provision_at",
    "provision_retrying",
    "restart_node",
    "stream_leader",
    "wait_replicas_current",
]

_API_TIMEOUT = 2.0


async def _api(nc: NATS, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = json.dumps(body).encode() if body is not None else b""
    reply = await nc.request(subject, payload, timeout=_API_TIMEOUT)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def provision_retrying(nc: NATS, settings: Settings, *, timeout: float = 90.0) -> None:
    """``jetagent provision`` for ``settings`` (its replicas), tried again until it
    succeeds or ``timeout`` s have passed; then every replica is current."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await provision(nc, settings, timeout=_API_TIMEOUT * 2)
            break
        except (JetagentError, NatsError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"provisioning {settings.prefix} failed: {exc}") from exc
            await asyncio.sleep(0.5)
    await wait_replicas_current(nc, timeout=max(deadline - time.monotonic(), 10.0))


async def provision_at(url: str, settings: Settings) -> None:
    """:func:`provision_retrying` over a connection of its own to ``url``."""
    nc = await connect(url, name="bench-provision")
    try:
        await provision_retrying(nc, settings)
    finally:
        await nc.close()


async def _streams(nc: NATS) -> list[dict[str, Any]]:
    streams: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = await _api(nc, "$JS.API.STREAM.LIST", {"offset": offset})
        found = page.get("streams") or []
        streams += found
        offset += len(found)
        if not found or offset >= int(page.get("total", 0)):
            return streams


async def _consumers(nc: NATS, stream: str) -> list[dict[str, Any]]:
    page = await _api(nc, f"$JS.API.CONSUMER.LIST.{stream}", {"offset": 0})
    found: list[dict[str, Any]] = page.get("consumers") or []
    return found


def _settled(info: dict[str, Any], replicas: int) -> bool:
    cluster = info.get("cluster") or {}
    peers = cluster.get("replicas") or []
    current = [p for p in peers if p.get("current") and not p.get("offline")]
    return bool(cluster.get("leader")) and len(current) >= replicas - 1


async def _unsettled(nc: NATS) -> list[str]:
    """Streams and consumers without a leader or with a replica not current."""
    behind = []
    for stream in await _streams(nc):
        name = stream["config"]["name"]
        replicas = int(stream["config"].get("num_replicas", 1))
        if replicas > 1 and not _settled(stream, replicas):
            behind.append(f"stream {name}")
            continue
        for consumer in await _consumers(nc, name):
            wanted = int(consumer["config"].get("num_replicas") or replicas)
            if wanted > 1 and not _settled(consumer, wanted):
                behind.append(f"consumer {name}/{consumer['name']}")
    return behind


async def wait_replicas_current(nc: NATS, *, timeout: float = 60.0) -> float:
    """Until every replicated stream and consumer has a leader and every replica is
    current; returns how long that took (s)."""
    started = time.monotonic()
    last: list[str] | str = "no answer yet"
    while time.monotonic() - started < timeout:
        try:
            last = await _unsettled(nc)
            if not last:
                return time.monotonic() - started
        except (NatsError, TimeoutError) as exc:  # an election: the API may not answer
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.1)
    raise RuntimeError(f"replicas not current within {timeout:.0f} s: {last}")


async def stream_leader(nc: NATS, stream: str) -> str:
    """The name of the node leading ``stream`` now."""
    info = await _api(nc, f"$JS.API.STREAM.INFO.{stream}")
    leader = (info.get("cluster") or {}).get("leader")
    if not leader:
        raise RuntimeError(f"stream {stream} has no leader: {info}")
    return str(leader)


async def move_stream_leader(nc: NATS, stream: str, node: str, *, timeout: float = 30.0) -> None:
    """Make ``node`` the leader of ``stream`` (a step-down with a preferred placement)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await stream_leader(nc, stream) == node:
                return
            body = {"placement": {"preferred": node}}
            await _api(nc, f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body)
        except (NatsError, TimeoutError, RuntimeError):
            pass  # between leaders: ask again
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not move the leader of {stream} to {node}")
        await asyncio.sleep(0.2)


@dataclass(frozen=True)
class Led:
    """The Raft groups one node leads: what its SIGKILL sets electing."""

    meta: bool
    streams: tuple[str, ...]
    consumers: tuple[str, ...]

    def describe(self, prefix: str = "") -> str:
        """``the meta group, 6 streams, consumers STEPS/orchestrator-steps``, without
        ``prefix`` in the names."""
        parts = ["the meta group"] if self.meta else []
        parts.append(f"{len(self.streams)} streams")
        if self.consumers:
            short = [c.replace(f"{prefix.upper()}_", "") if prefix else c for c in self.consumers]
            parts.append("consumers " + ", ".join(short))
        return ", ".join(parts)


def groups_led(server: EmbeddedServer) -> Led:
    """What ``server`` leads, from its own monitoring endpoint (``/jsz``)."""
    query = "/jsz?accounts=true&streams=true&consumers=true&config=true"
    with urllib.request.urlopen(server.monitor_url + query, timeout=5) as reply:
        info = json.loads(reply.read())
    me = server.server_name
    streams, consumers = [], []
    for account in info.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if (stream.get("cluster") or {}).get("leader") == me:
                streams.append(stream["name"])
            for consumer in stream.get("consumer_detail") or []:
                durable = (consumer.get("config") or {}).get("durable_name")
                # Ephemeral consumers (KV watchers, ordered readers) are not counted.
                if durable and (consumer.get("cluster") or {}).get("leader") == me:
                    consumers.append(f"{stream['name']}/{consumer['name']}")
    meta = (info.get("meta_cluster") or {}).get("leader") == me
    return Led(meta=meta, streams=tuple(streams), consumers=tuple(consumers))


def restart_node(cluster: EmbeddedCluster, server: EmbeddedServer) -> float:
    """Start a killed node again on its store and ports; seconds until the cluster's
    meta leader sees it current (its streams may still be catching up)."""
    started = time.monotonic()
    server.start()
    cluster.wait_healthy()
    return time.monotonic() - started
