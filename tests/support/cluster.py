"""Helpers for tests on a 3-node cluster: where leaders are, moving them, probing replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from jetagent.config import Settings
from jetagent.embedded import EmbeddedCluster, EmbeddedServer
from jetagent.jetstream.provision import provision
from jetagent.sessions import SessionView
from jetagent.testing import ServiceProcesses
from projections.checkpoints import CheckpointStore
from projections.service import CHECKPOINT_KEY, Checkpoint

__all__ = [
    "checkpoint",
    "consumer_leader",
    "lead_elsewhere",
    "node",
    "provision_patiently",
    "services_ready",
    "session_views",
    "stream_leader",
    "wait_for_leader",
]


async def stream_leader(nc: NATS, stream: str) -> str | None:
    """The server leading ``stream`` now (None: electing, or no answer)."""
    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)
    except NatsError:
        return None
    leader: str | None = (json.loads(reply.data).get("cluster") or {}).get("leader")
    return leader


async def consumer_leader(nc: NATS, stream: str, consumer: str) -> str | None:
    """The server leading a consumer now (None: electing, or no answer)."""
    try:
        reply = await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=2)
    except NatsError:
        return None
    leader: str | None = (json.loads(reply.data).get("cluster") or {}).get("leader")
    return leader


async def wait_for_leader(nc: NATS, stream: str, *, timeout: float = 30.0) -> str:
    """Wait until ``stream`` has a leader; return its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = await stream_leader(nc, stream)
        if leader:
            return leader
        await asyncio.sleep(0.1)
    raise TimeoutError(f"stream {stream} had no leader within {timeout:.0f} s")


async def lead_elsewhere(
    nc: NATS, stream: str, avoid: str, *, move: bool = False, timeout: float = 60.0
) -> str:
    """Have ``stream`` led by another server than ``avoid`` (a leader step-down, as an
    operator's ``nats stream cluster step-down`` does; with ``move`` at least once);
    return the new leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = await wait_for_leader(nc, stream, timeout=max(deadline - time.monotonic(), 1))
        if leader != avoid and not move:
            return leader
        move = False
        with contextlib.suppress(NatsError):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
        await asyncio.sleep(0.5)
    raise TimeoutError(f"stream {stream} kept its leader on {avoid}")


async def provision_patiently(nc: NATS, settings: Settings, *, timeout: float = 60.0) -> None:
    """Provision, retrying while a fresh cluster is still placing its first streams."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await provision(nc, settings, timeout=10)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


def node(cluster: EmbeddedCluster, name: str | None) -> EmbeddedServer:
    """The cluster's node named ``name``."""
    return next(s for s in cluster.servers if s.server_name == name)


async def checkpoint(settings: Settings, nc: NATS) -> Checkpoint | None:
    """The projection service's saved checkpoint."""
    kv = await nc.jetstream().key_value(settings.names.bucket("PROJECTIONS"))
    value = await CheckpointStore(kv, CHECKPOINT_KEY).load()
    return msgspec.json.decode(value, type=Checkpoint) if value else None


async def projections_caught_up(settings: Settings, nc: NATS, procs: ServiceProcesses) -> None:
    """Wait until the projection service's checkpoint reaches the workflows and steps
    streams' last sequences as they are now (every service alive meanwhile)."""
    from jetagent.testing import eventually

    names = settings.names
    ends = {
        stream: (await nc.jetstream().stream_info(stream)).state.last_seq
        for stream in (names.workflows_stream, names.steps_stream)
    }

    async def caught_up() -> bool:
        saved = await checkpoint(settings, nc)
        return saved is not None and all(saved.positions.get(s, 0) >= n for s, n in ends.items())

    await eventually(caught_up, timeout=60, alive=procs.check_alive)


async def session_views(settings: Settings, nc: NATS) -> dict[str, dict[str, Any]]:
    """Every session view in the bucket, as plain data."""
    bucket = settings.names.bucket("SESSIONS")
    kv = await nc.jetstream().key_value(bucket)
    prefix = f"$KV.{bucket}."
    info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
    views = {}
    for key in (subject[len(prefix) :] for subject in info.state.subjects or {}):
        entry = await kv.get(key)
        views[key] = msgspec.to_builtins(msgspec.json.decode(entry.value or b"", type=SessionView))
    return views


_READY = {"orchestrator": "orchestrator ready", "worker": " serving ", "projections": "serving"}


async def services_ready(procs: ServiceProcesses, timeout: float = 90.0) -> None:
    """Wait until every started service has said it is ready (its log's ready line).

    A service starting while a node dies may fail in its provisioning; the tests of node
    loss kill nodes only once every service serves."""
    for process in procs.processes.values():
        kind = process.argv[process.argv.index("jetagent.cli") + 1]
        await asyncio.to_thread(process.wait_for_output, _READY[kind], timeout=timeout)
