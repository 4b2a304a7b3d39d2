"""Fairness and exact counts under load, with the services as processes.

- A burst of one tenant does not starve another: tenant B's single workflow, measured idle
  and then during tenant A's burst in the same run, waits behind a few of A's steps, not
  behind the burst — counted from the streams' records, for each of B's steps: A's steps
  ahead of it that completed while it waited (docs/ARCHITECTURE.md §9).
- Two orchestrator replicas, one SIGKILLed mid-burst, keep each tenant's running workflows
  within its quota: the maximum concurrency, computed afterwards from the streams
  (``Started`` to the final event of every workflow), never exceeds it, and every workflow
  still ends exactly once.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from datetime import datetime
from pathlib import Path

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.events import (
    Cancelled,
    Finalized,
    Held,
    Started,
    StepCompleted,
    StepResult,
    StepScheduled,
    Terminated,
    WorkflowEvent,
)
from jetagent.orchestrator.quotas import Slots
from jetagent.testing import eventually, tools_registered
from tests.support.checks import assert_no_decision_recorded_twice, assert_one_result_per_step
from tests.support.platform import service_processes

STEP = 'call slow {"seconds": 0.02}'
"""Three short offline steps: reasoning, the tool, reasoning."""
_FINAL = (Finalized, Terminated, Cancelled)


async def _run_b(client: Client) -> tuple[float, str]:
    began = time.monotonic()
    wid = await client.submit(instruction=STEP, tenant="b", allowed_tools=["slow"])
    result = await client.result(wid, timeout=120)
    assert result.ok, result
    return time.monotonic() - began, wid


def _a_steps(a_events: dict[str, list[WorkflowEvent]]) -> list[tuple[datetime, datetime]]:
    """When each of A's steps was scheduled and completed."""
    steps = []
    for events in a_events.values():
        scheduled = {e.step_id: e.at for e in events if isinstance(e, StepScheduled)}
        steps += [(scheduled[e.step_id], e.at) for e in events if isinstance(e, StepCompleted)]
    return steps


def _waits(
    b_events: list[WorkflowEvent],
    b_results: list[StepResult],
    a_steps: list[tuple[datetime, datetime]],
) -> list[tuple[int, int]]:
    """For each step of B: how many of A's steps scheduled before it (ahead of it in the
    stream) completed while it was pending, and how many of those completed while it
    waited — to be taken by a worker, or its result to be folded — rather than while it
    ran (those ran beside it, not ahead of it)."""
    scheduled = {e.step_id: e.at for e in b_events if isinstance(e, StepScheduled)}
    ran = {r.step_id: (r.started_at, r.finished_at) for r in b_results}
    counts = []
    for event in b_events:
        if isinstance(event, StepCompleted):
            start, end = scheduled[event.step_id], event.at
            began, finished = ran[event.step_id]
            pending = [done for at, done in a_steps if at < start < done < end]
            waited = [done for done in pending if not began <= done < finished]
            counts.append((len(pending), len(waited)))
    return counts


async def test_a_burst_of_one_tenant_does_not_starve_another(
    settings: Settings, tmp_path: Path
) -> None:
    procs = service_processes(settings.nats_url, settings.prefix, tmp_path)
    procs.start("orchestrator", "orchestrator")
    procs.start("workers", "worker", "reasoning", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(
            lambda: tools_registered(client.js, settings, "slow"),
            timeout=60,
            alive=procs.check_alive,
        )
        await _run_b(client)  # warm-up
        idle = statistics.median([(await _run_b(client))[0] for _ in range(3)])
        # Tenant A's burst, all at once; then B, five times in a row, while it runs.
        burst_began = time.monotonic()
        burst = await asyncio.gather(
            *(
                client.submit(instruction=STEP, tenant="a", allowed_tools=["slow"])
                for _ in range(300)
            )
        )
        busy = [await _run_b(client) for _ in range(5)]
        results = await asyncio.gather(*(client.result(w, timeout=180) for w in burst))
        burst_s = time.monotonic() - burst_began
        assert all(r.ok for r in results)
        a_events = {w: await client.events(w) for w in burst}
        a_steps = _a_steps(a_events)
        last_a = max(e.at for events in a_events.values() for e in events)
        counts: list[tuple[int, int]] = []
        for _, wid in busy:
            b_events = await client.events(wid)
            assert max(e.at for e in b_events) < last_a, "B ran after the burst, not during it"
            counts += _waits(b_events, await client.step_results(wid), a_steps)
        latencies = [s for s, _ in busy]
        pending, waited = [p for p, _ in counts], [w for _, w in counts]
        print(
            f"\nB idle {idle * 1000:.0f} ms; B during A's burst of 300 workflows "
            f"({burst_s:.1f} s, {len(a_steps) / burst_s:.0f} A steps/s): "
            f"{', '.join(f'{s * 1000:.0f}' for s in latencies)} ms; A's steps completed while "
            f"a B step was pending: {pending}, of them while it waited: {waited}"
        )
        # B does not wait for the burst: a small part of it (in stream order B waits for
        # nearly all of it; the idle latency is reported, not bounded: the machine is shared).
        assert max(latencies) < burst_s / 3, (latencies, burst_s)
        # Each B step waits behind a few of A's steps, not behind a crowd of them: in turn
        # (fair turns), and handled beside a few of them, not a burst's worth (shares).
        # With the fair turns alone the median was 17 to 24 here (B's inputs handled in a
        # crowd of 32 of A's), in stream order more (B behind every step ahead of it).
        assert statistics.median(waited) <= 6, waited
        assert max(waited) <= 40, waited
    finally:
        await client.close()
        procs.stop_all()


def _max_running(events: dict[str, list[WorkflowEvent]]) -> int:
    """The most workflows running at one moment: from each one's Started to its end."""
    edges: list[tuple[datetime, int]] = []
    for history in events.values():
        started = next((e.at for e in history if isinstance(e, Started)), None)
        ended = next((e.at for e in history if isinstance(e, _FINAL)), None)
        if started is None:
            continue
        assert ended is not None, history
        edges += [(started, 1), (ended, -1)]
    running = most = 0
    for _, change in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # ends first
        running += change
        most = max(most, running)
    return most


async def test_two_orchestrators_one_killed_keep_every_tenant_within_its_quota(
    settings: Settings, tmp_path: Path
) -> None:
    quotas = {"a": {"max_workflows": 5}, "b": {"max_workflows": 3}}
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_TENANT_QUOTAS": json.dumps(quotas), "JETAGENT_QUOTA_RECHECK_S": "2"},
    )
    procs.start("orchestrator-1", "orchestrator")
    procs.start("orchestrator-2", "orchestrator")
    procs.start("workers", "worker", "reasoning", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(
            lambda: tools_registered(client.js, settings, "slow"),
            timeout=60,
            alive=procs.check_alive,
        )
        step = 'call slow {"seconds": 0.1}'
        ids = {
            tenant: [
                await client.submit(instruction=step, tenant=tenant, allowed_tools=["slow"])
                for _ in range(count)
            ]
            for tenant, count in (("a", 60), ("b", 15))
        }

        async def some_ended() -> bool:
            ended = [await client._last_event(w) for w in ids["a"][:10]]
            return sum(isinstance(e, _FINAL) for e in ended) >= 3

        await eventually(some_ended, timeout=60, alive=procs.check_alive)
        procs.kill("orchestrator-1")  # mid-burst: slots taken, starts and ends half-done
        for tenant, wids in ids.items():
            results = await asyncio.gather(*(client.result(w, timeout=120) for w in wids))
            assert all(r.ok for r in results), (tenant, procs.log("orchestrator-2"))
        # From the streams: never more running at once than the tenant's quota, and
        # the quota was used (the count is not trivially low).
        for tenant, wids in ids.items():
            events = {w: await client.events(w) for w in wids}
            most = _max_running(events)
            held = sum(any(isinstance(e, Held) for e in h) for h in events.values())
            print(f"\ntenant {tenant}: at most {most} running at once, {held} held")
            assert most == quotas[tenant]["max_workflows"], (tenant, most)
            assert held > 0
        every = ids["a"] + ids["b"]
        assert await assert_one_result_per_step(client, settings, every) >= 3 * len(every)
        for wid in every:
            await assert_no_decision_recorded_twice(client, settings, wid)
        # No slot is lost for good: A's whole quota runs again, and then none is taken (a
        # slot the kill left taken is reclaimed from the record when A looks full).
        again = [
            await client.submit(instruction=step, tenant="a", allowed_tools=["slow"])
            for _ in range(5)
        ]
        results = await asyncio.gather(*(client.result(w, timeout=60) for w in again))
        assert all(r.ok for r in results)
        slots = Slots(client.js, settings.names)

        async def none_taken() -> bool:
            left = await slots.read("a")  # each freed just after its end was recorded
            return not left.running and not left.held

        await eventually(none_taken, timeout=20, alive=procs.check_alive)
    finally:
        await client.close()
        procs.stop_all()
