"""The long run (``make soak``; excluded from ``make test``): workflows keep arriving while
orchestrators and workers are SIGKILLed and restarted at random; every workflow ends
with the right answer, every step has one result, no decision is recorded twice.

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
from tests.support.platform import ServiceProcesses, eventually
from tests.test_engine_faults import _no_duplicate_events, _step_results, _tool_registered

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
async def test_chaos_soak(settings: Settings, tmp_path: Path) -> None:
    seconds = float(os.environ.get("JETAGENT_SOAK_SECONDS", "120"))
    rate = float(os.environ.get("JETAGENT_SOAK_RATE", "20"))
    kill_every = float(os.environ.get("JETAGENT_SOAK_KILL_EVERY_S", "2"))
    procs = ServiceProcesses(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_STEP_ACK_WAIT_S": "2", "JETAGENT_SHUTDOWN_GRACE_S": "1"},
    )
    for name, args in SERVICES.items():
        procs.start(name, *args)
    client = await Client.connect(settings.nats_url, settings=settings)
    chaos_stop = asyncio.Event()
    kills = 0

    async def chaos() -> None:
        nonlocal kills
        rng = random.Random(7)
        while not chaos_stop.is_set():
            await asyncio.sleep(kill_every)
            name = rng.choice(sorted(SERVICES))
            procs.kill(name)  # SIGKILL mid-work
            kills += 1
            procs.start(f"{name}", *SERVICES[name])

    try:
        await eventually(lambda: _tool_registered(client, settings, "calculator"), timeout=30)
        chaos_task = asyncio.create_task(chaos())
        ids: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (elapsed := loop.time() - start) < seconds:
            i = len(ids)
            wid = await client.submit(
                instruction=f"What is {i} + {i}? Then multiply the result by 3", tenant="acme"
            )
            ids[wid] = i
            ahead = (i + 1) / rate - elapsed
            if ahead > 0:
                await asyncio.sleep(ahead)  # a steady arrival rate, not one burst
        for wid, i in ids.items():
            result = await client.result(wid, timeout=600)
            assert result.ok, (wid, result)
            assert result.output.endswith(f"Final answer: {(2 * i) * 3}")
        chaos_stop.set()
        await chaos_task
        for wid in ids:
            _no_duplicate_events(await client.events(wid))
        assert set((await _step_results(client, settings)).values()) == {1}
        print(f"soak: {len(ids)} workflows in {seconds:g} s, {kills} SIGKILLs, all finished once")
    finally:
        chaos_stop.set()
        await client.close()
        procs.stop_all()
