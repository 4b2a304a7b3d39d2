"""Helpers for tests on a 3-node cluster: where leaders are, moving them, probing replicas."""

from __future__ import annotations

import asyncio
import json
import time

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from jetagent.config import Settings
from jetagent.jetstream.provision import provision

__all__ = [
    "consumer_leader",
    "lead_elsewhere",
    "provision_patiently",
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
        try:
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
        except NatsError:
            pass
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
