"""The long run (``make soak``; excluded from ``make test``): workflows keep arriving while
orchestrators, workers and the nats-server itself are SIGKILLed and restarted at random
(the server on its own store folder and port); every workflow ends with the right
answer, every scheduled step has exactly one result, no decision is recorded twice.

``JETAGENT_SOAK_SECONDS`` (arrivals for this long, default 120), ``JETAGENT_SOAK_RATE``
(workflows a second, default 20) and ``JETAGENT_SOAK_KILL_EVERY_S`` (default 2) size it.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.testing import eventually, tools_registered
from tests.support.checks import assert_no_decision_recorded_twice, assert_one_result_per_step
from tests.support.platform import service_processes

pytestmark = pytest.mark.soak

SERVICES = {
    "orchestrator-a": ("orchestrator",),
    "orchestrator-b": ("orchestrator",),
    "reasoning-a": ("worker", "reasoning"),
    "reasoning-b": ("worker", "reasoning"),
    "tools-a": ("worker", "tools"),
    "tools-b": ("worker", "tools"),
}


@pytest.mark.timeout(3600)
async def test_chaos_soak(fresh_server: EmbeddedServer, unique: str, tmp_path: Path) -> None:
    settings = Settings(nats_url=fresh_server.url, prefix=unique.lower()[:12], tenants="*")
    seconds = float(os.environ.get("JETAGENT_SOAK_SECONDS", "120"))
    rate = float(os.environ.get("JETAGENT_SOAK_RATE", "20"))
    kill_every = float(os.environ.get("JETAGENT_SOAK_KILL_EVERY_S", "2"))
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_STEP_ACK_WAIT_S": "2", "JETAGENT_SHUTDOWN_GRACE_S": "1"},
    )
    for name, args in SERVICES.items():
        procs.start(name, *args)
    client = await Client.connect(settings.nats_url, settings=settings)
    chaos_stop = asyncio.Event()
    arriving = asyncio.Event()
    arriving.set()
    kills = 0
    server_kills = 0

    async def chaos() -> None:
        nonlocal kills, server_kills
        rng = random.Random(7)
        while not chaos_stop.is_set():
            await asyncio.sleep(kill_every)
            name = rng.choice([*sorted(SERVICES), "nats-server"])
            if name == "nats-server":
                if not arriving.is_set():
                    continue  # the results are being read: services only from here on
                fresh_server.kill()  # SIGKILL under load
                server_kills += 1
                # Back on the same store folder and port, as a supervisor would.
                await asyncio.to_thread(fresh_server.start)
                continue
            procs.kill(name)  # SIGKILL mid-work
            kills += 1
            procs.start(f"{name}", *SERVICES[name])

    try:
        await eventually(lambda: tools_registered(client.js, settings, "calculator"), timeout=30)
        chaos_task = asyncio.create_task(chaos())
        ids: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (elapsed := loop.time() - start) < seconds:
            i = len(ids)
            try:
                wid = await client.submit(
                    instruction=f"What is {i} + {i}? Then multiply the result by 3",
                    tenant="acme",
                )
            except Exception:  # the server is down this moment: the caller tries later
                await asyncio.sleep(0.2)
                continue
            ids[wid] = i
            ahead = (i + 1) / rate - elapsed
            if ahead > 0:
                await asyncio.sleep(ahead)  # a steady arrival rate, not one burst
        arriving.clear()
        for wid, i in ids.items():
            result = await client.result(wid, timeout=600)
            assert result.ok, (wid, result)
            assert result.output.endswith(f"Final answer: {(2 * i) * 3}")
        chaos_stop.set()
        await chaos_task
        steps = await assert_one_result_per_step(client, settings, list(ids))
        for wid in ids:
            await assert_no_decision_recorded_twice(client, settings, wid)
        print(
            f"soak: {len(ids)} workflows ({steps} steps) in {seconds:g} s, {kills} service "
            f"and {server_kills} nats-server SIGKILLs, every step run to one result"
        )
    finally:
        chaos_stop.set()
        await client.close()
        procs.stop_all()
