"""Services ride a node's death: the projection service keeps its checkpoints through the
election of its bucket's leader, a nak sent while its consumer elects a new leader
still brings the step back after its delay, not after the whole ack wait, and a
connection leaves a hung node within seconds.

3-node loopback clusters, R3 everywhere, services as processes with every node's URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import EmbeddedCluster
from jetagent.jetstream import connect
from jetagent.jetstream.consume import on_reconnect
from jetagent.testing import eventually
from projections.service import ProjectionService
from tests.support.cluster import (
    checkpoint,
    consumer_leader,
    node,
    projections_caught_up,
    provision_patiently,
    services_ready,
    session_views,
    stream_leader,
)
from tests.support.platform import service_processes

pytestmark = pytest.mark.cluster


def _settings(cluster: EmbeddedCluster, unique: str, **extra: Any) -> Settings:
    return Settings(
        nats_url=cluster.url, prefix=unique.lower()[:12], tenants="*", replicas=3, **extra
    )


@pytest.mark.timeout(240)
async def test_the_projection_service_survives_its_buckets_leader_dying(
    nats_cluster: EmbeddedCluster, unique: str, tmp_path: Path
) -> None:
    settings = _settings(nats_cluster, unique)
    names = settings.names
    nc = await connect(nats_cluster.url, name="test-failover")
    await provision_patiently(nc, settings)
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_REPLICAS": "3"},
    )
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        procs.start("orchestrator", "orchestrator")
        procs.start("reasoning", "worker", "reasoning")
        procs.start("tools", "worker", "tools")
        procs.start("projections", "projections", "run")
        await services_ready(procs)
        ids: list[str] = []
        stop = asyncio.Event()

        async def arrivals() -> None:
            # Work keeps arriving, so the projection has views and checkpoints to write
            # while its bucket has no leader.
            i = 0
            while not stop.is_set():
                i += 1
                # Through the elections too: the client retries with the same id.
                ids.append(await client.submit(instruction=f"What is {i} * 9?", tenant="acme"))
                await asyncio.sleep(0.2)

        arriving = asyncio.create_task(arrivals())
        await eventually(lambda: checkpoint(settings, nc), timeout=60, alive=procs.check_alive)
        # SIGKILL the node leading the checkpoint bucket: its next writes meet no leader.
        bucket = f"KV_{names.bucket('PROJECTIONS')}"
        victim = node(nats_cluster, await stream_leader(nc, bucket))
        await asyncio.to_thread(victim.kill)
        killed_at = time.monotonic()
        # Through the election (4-9 s) and after it, the service lives and checkpoints.
        while time.monotonic() - killed_at < 15:
            procs.check_alive()
            await asyncio.sleep(0.5)
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(nats_cluster.wait_healthy)
        stop.set()
        await arriving
        for wid in ids:
            assert (await client.result(wid, timeout=90)).ok
        await projections_caught_up(settings, nc, procs)
        procs.stop("projections")
        assert "Traceback" not in procs.log("projections"), procs.log("projections")[-3000:]
        # What it projected live equals a rebuild from the streams.
        live_views = await session_views(settings, nc)
        live = await checkpoint(settings, nc)
        assert live is not None
        rebuilt = ProjectionService(nc, settings)
        await rebuilt.rebuild()
        assert await session_views(settings, nc) == live_views
        assert msgspec.to_builtins(rebuilt.metrics) == msgspec.to_builtins(live.metrics)
        assert len(live_views) == len(ids)
    finally:
        procs.stop_all()
        await client.close()
        await nc.close()


def _runs(log: Path) -> list[tuple[int, int, float]]:
    if not log.exists():
        return []
    return [
        (int(p), int(d), float(t))
        for p, d, t in (line.split() for line in log.read_text().split("\n") if line)
    ]


@pytest.mark.timeout(240)
async def test_a_nak_sent_while_the_consumer_elects_a_leader_is_not_lost(
    nats_cluster: EmbeddedCluster, unique: str, tmp_path: Path
) -> None:
    # The ack wait is far longer than any election: a lost nak would show as a step that
    # comes back only after it.
    ack_wait = 40.0
    settings = _settings(nats_cluster, unique, step_ack_wait_s=ack_wait)
    names = settings.names
    nc = await connect(nats_cluster.url, name="test-failover")
    await provision_patiently(nc, settings)
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_REPLICAS": "3", "JETAGENT_STEP_ACK_WAIT_S": str(ack_wait)},
    )
    client = await Client.connect(settings.nats_url, settings=settings)
    gate, log = tmp_path / "gate", tmp_path / "runs.log"
    try:
        procs.start("orchestrator", "orchestrator")
        procs.start("reasoning", "worker", "reasoning")
        procs.start("tools", "worker", "tools")
        await services_ready(procs)
        args = json.dumps({"gate": str(gate), "log": str(log)})
        wid = await client.submit(
            instruction=f"call gated {args}", tenant="acme", allowed_tools=["gated"]
        )

        async def first_run() -> bool:
            return len(_runs(log)) == 1

        await eventually(first_run, timeout=60, alive=procs.check_alive)
        # Kill the node leading the tools consumer, then let the run fail at once: its
        # nak (run again in 1 s) is sent while the consumer has no leader.
        leader = await consumer_leader(nc, names.workflows_stream, "cap-tools")
        victim = node(nats_cluster, leader)
        await asyncio.to_thread(victim.kill)
        killed_at = time.time()
        gate.touch()

        async def second_run() -> bool:
            return len(_runs(log)) >= 2

        await eventually(second_run, timeout=ack_wait + 20, alive=procs.check_alive)
        again = _runs(log)[1][2] - killed_at
        # The election (4-9 s measured) and the 1 s delay, not the 40 s ack wait.
        assert again < 20, f"the step ran again {again:.1f} s after the kill"
        result = await client.result(wid, timeout=60)
        assert result.ok, result
        print(f"nak through a consumer election: ran again {again:.1f} s after the kill")
        await asyncio.to_thread(victim.start)
    finally:
        procs.stop_all()
        await client.close()
        await nc.close()


@pytest.mark.timeout(120)
async def test_a_connection_leaves_a_hung_node_within_seconds(
    nats_cluster: EmbeddedCluster,
) -> None:
    # A hung node (a paused process, a partition) resets no socket: only unanswered
    # pings tell. jetagent's connections ping every second and give up after two
    # unanswered, so they move to another node in about 3 s (nats-py's own defaults:
    # about 6 minutes).
    victim = nats_cluster.servers[0]
    nc = await connect(victim.url, name="test-hung")  # learns the other nodes from it
    moved: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def reconnected() -> None:
        if not moved.done():
            moved.set_result(time.monotonic())

    on_reconnect(nc, reconnected)
    os.kill(victim.pid or 0, signal.SIGSTOP)
    paused = time.monotonic()
    try:
        after = await asyncio.wait_for(moved, 30) - paused
        assert nc.connected_url is not None
        assert nc.connected_url.port != victim.port
        assert after < 6, f"left the hung node after {after:.1f} s"
        print(f"left a hung node after {after:.2f} s")
    finally:
        os.kill(victim.pid or 0, signal.SIGCONT)
        await nc.close()
