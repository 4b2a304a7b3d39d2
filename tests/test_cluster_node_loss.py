"""Node loss without loss: the platform on a 3-node cluster keeps completing workflows
while one node, then the workflows stream's leader, then another node are SIGKILLed and
restarted.

As an operator deploys it: R3 everywhere (``JETAGENT_REPLICAS=3``), every node's URL in
``NATS_URL``, two orchestrators and two replicas of each worker and the projection
service as processes. Every step runs a tool for two seconds. Afterwards, from the
streams: every acknowledged request reached exactly one final state, every scheduled
step has exactly one ``StepResult``, no decision was recorded twice, no tool ran twice
(no worker died), and the live session views and metrics equal a rebuild. The longest
time in which no step completed is measured and printed (``pytest -s``).

The 300 workflows of issue #15 take about a minute here (65 s measured).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jetagent.client import Client, WorkflowRequest
from jetagent.config import Settings
from jetagent.embedded import EmbeddedCluster, EmbeddedServer
from jetagent.events import decode_step_result
from jetagent.jetstream import DirectGetter, connect
from projections.service import ProjectionService
from tests.support.checks import assert_no_decision_recorded_twice, assert_one_result_per_step
from tests.support.cluster import (
    checkpoint,
    node,
    projections_caught_up,
    provision_patiently,
    services_ready,
    session_views,
    stream_leader,
)
from tests.support.platform import service_processes

pytestmark = pytest.mark.cluster

SERVICES = {
    "orchestrator-a": ("orchestrator",),
    "orchestrator-b": ("orchestrator",),
    "reasoning-a": ("worker", "reasoning"),
    "reasoning-b": ("worker", "reasoning"),
    "tools-a": ("worker", "tools"),
    "tools-b": ("worker", "tools"),
    "projections": ("projections", "run"),
}
WORKFLOWS = 300
ARRIVALS_S = 36.0
"""Requests arrive evenly over this long (8 a second); the three kills fall inside it."""
TOOL_S = 2.0


@dataclass
class _Chaos:
    """The kills and restarts, with when each happened (monotonic seconds)."""

    cluster: EmbeddedCluster
    nc: object
    workflows_stream: str
    log: list[tuple[float, str]] = field(default_factory=list)
    """(wall-clock time, what happened)"""

    async def kill_and_restart(self, victim: EmbeddedServer, why: str) -> None:
        await asyncio.to_thread(victim.kill)
        self.log.append((time.time(), f"SIGKILL {victim.server_name} ({why})"))
        await asyncio.sleep(4)
        await asyncio.to_thread(victim.start)
        self.log.append((time.time(), f"restarted {victim.server_name}"))
        await asyncio.to_thread(self.cluster.wait_healthy)

    async def run(self, started: float, at: Callable[[float], Awaitable[None]]) -> None:
        leader = await stream_leader(self.nc, self.workflows_stream)  # type: ignore[arg-type]
        first = next(s for s in self.cluster.servers if s.server_name != leader)
        await at(started + 6)
        await self.kill_and_restart(first, "a node")
        await at(started + 16)
        leader = node(self.cluster, await stream_leader(self.nc, self.workflows_stream))  # type: ignore[arg-type]
        await self.kill_and_restart(leader, "the workflows stream's leader")
        await at(started + 27)
        # Another node: one not killed yet, if the leader was not the third.
        spared = [s for s in self.cluster.servers if s is not first and s is not leader]
        other = spared[0] if spared else next(s for s in self.cluster.servers if s is not first)
        await self.kill_and_restart(other, "another node")


async def _until(moment: float) -> None:
    await asyncio.sleep(max(moment - time.monotonic(), 0))


def _first_difference(keys: list[str], live: dict[str, Any], rebuilt: dict[str, Any]) -> str:
    key = keys[0]
    a, b = live.get(key) or {}, rebuilt.get(key) or {}
    fields = {f: (a.get(f), b.get(f)) for f in a.keys() | b.keys() if a.get(f) != b.get(f)}
    return f"{len(keys)} views differ from a rebuild; {key} (live, rebuilt): {fields}"


def _longest_gap(times: list[float]) -> tuple[float, float]:
    """The longest gap between consecutive times, and where it began."""
    ordered = sorted(times)
    gaps = [(b - a, a) for a, b in itertools.pairwise(ordered)]
    return max(gaps) if gaps else (0.0, 0.0)


@pytest.mark.timeout(600)
async def test_workflows_keep_completing_while_nodes_are_killed(
    nats_cluster: EmbeddedCluster, unique: str, tmp_path: Path
) -> None:
    workflows = WORKFLOWS
    settings = Settings(
        nats_url=nats_cluster.url,
        prefix=unique.lower()[:12],
        tenants="*",
        replicas=3,
        step_ack_wait_s=30.0,
    )
    names = settings.names
    nc = await connect(nats_cluster.url, name="test-node-loss")
    await provision_patiently(nc, settings)
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={
            "JETAGENT_REPLICAS": "3",
            "JETAGENT_STEP_ACK_WAIT_S": "30",
        },
    )
    client = await Client.connect(settings.nats_url, settings=settings)
    runs_log = tmp_path / "runs.log"
    try:
        for name, args in SERVICES.items():
            procs.start(name, *args)
        await services_ready(procs)
        chaos = _Chaos(nats_cluster, nc, names.workflows_stream)
        started, started_wall = time.monotonic(), time.time()
        chaos_task = asyncio.create_task(chaos.run(started, _until))
        args = json.dumps({"seconds": TOOL_S, "log": str(runs_log)})
        ids: list[str] = []
        for i in range(workflows):
            await _until(started + i * ARRIVALS_S / workflows)
            request = WorkflowRequest(
                request_id=str(uuid.uuid4()),
                instruction=f"call logged_sleep {args}",
                tenant="acme",
                allowed_tools=["logged_sleep"],
            )
            # Acknowledged once it returns: the client sends it again, with the same id,
            # while the requests stream elects a leader.
            await client.submit(request)
            ids.append(request.request_id)
            procs.check_alive()
        await chaos_task
        for wid in ids:
            result = await client.result(wid, timeout=180)
            assert result.ok, (wid, result)

        # From the streams: one result per step, no decision twice, one final state each.
        steps = await assert_one_result_per_step(client, settings, ids)
        assert steps == 3 * workflows
        for wid in ids:
            await assert_no_decision_recorded_twice(client, settings, wid)
        # No tool ran twice: every worker lived.
        runs = runs_log.read_text().splitlines()
        assert len(runs) == workflows, f"{len(runs)} tool runs for {workflows} tool steps"

        # The longest stall: the longest time in which no step completed.
        reader = DirectGetter(nc, names.steps_stream, timeout=5)
        await reader.open()
        results = [decode_step_result(r.data) for r in await reader.scan(names.all_step_results)]
        await reader.close()
        finished = [r.finished_at for r in results]
        times = sorted(t.timestamp() for t in finished)
        stall, since = _longest_gap(times)
        print(f"\n{workflows} workflows, {steps} steps; times from the first arrival:")
        for at, what in chaos.log:
            after = ""
            if what.startswith("SIGKILL"):
                # The longest time without a completed step around this kill.
                near = [t for t in times if at - 1 <= t <= at + 10]
                after = f"; no step completed for up to {_longest_gap(near)[0]:.1f} s"
            print(f"  {at - started_wall:6.1f} s  {what}{after}")
        began = since - started_wall
        print(f"  longest stall: no step completed for {stall:.1f} s from {began:.1f} s")
        # The step that ended it, and its workflow's story (what was waited for).
        ended = min(
            (r for r in results if r.finished_at.timestamp() > since),
            key=lambda r: r.finished_at,
        )
        print(
            f"  ended by step {ended.workflow_id}/{ended.step_id} ({ended.capability}, "
            f"run {ended.deliveries}, started {ended.started_at.timestamp() - started_wall:.1f} s)"
        )
        for event in await client.events(ended.workflow_id):
            at = getattr(event, "at", None)
            when = f"{at.timestamp() - started_wall:6.1f} s" if at is not None else "   ?"
            print(f"    {when}  {type(event).__name__}")
        assert stall < 25, f"no step completed for {stall:.1f} s"

        # The live projections equal a rebuild from the streams.
        await projections_caught_up(settings, nc, procs)
        procs.check_alive()  # every service lived through every kill
        procs.stop_all()
        live_views = await session_views(settings, nc)
        live = await checkpoint(settings, nc)
        assert live is not None
        rebuilt = ProjectionService(nc, settings)
        await rebuilt.rebuild()
        rebuilt_views = await session_views(settings, nc)
        differ = sorted(
            k
            for k in rebuilt_views.keys() | live_views.keys()
            if rebuilt_views.get(k) != live_views.get(k)
        )
        assert not differ, _first_difference(differ, live_views, rebuilt_views)
        assert msgspec.to_builtins(rebuilt.metrics) == msgspec.to_builtins(live.metrics)
        assert {wid for wid in ids} <= set(live_views)
    finally:
        procs.stop_all()
        await client.close()
        await nc.close()
