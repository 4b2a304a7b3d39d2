"""Nothing lost, nothing doubled: services killed with SIGKILL mid-work, replicas racing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.testing import eventually, tools_registered
from tests.support.checks import assert_no_decision_recorded_twice, assert_one_result_per_step
from tests.support.platform import InProcessPlatform, service_processes


async def _each_once(client: Client, settings: Settings, ids: list[str]) -> None:
    """Every scheduled step has exactly one result; no decision was recorded twice."""
    assert await assert_one_result_per_step(client, settings, ids) >= len(ids)
    for wid in ids:
        await assert_no_decision_recorded_twice(client, settings, wid)


async def test_sigkill_a_worker_mid_step(settings: Settings, tmp_path: Path) -> None:
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_STEP_ACK_WAIT_S": "2", "JETAGENT_SHUTDOWN_GRACE_S": "1"},
    )
    procs.start("orchestrator", "orchestrator")
    procs.start("reasoning", "worker", "reasoning")
    procs.start("tools-a", "worker", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(lambda: tools_registered(client.js, settings, "slow"), timeout=30)
        wid = await client.submit(
            instruction='call slow {"seconds": 3}', tenant="acme", allowed_tools=["slow"]
        )

        async def slow_step_running() -> bool:
            info = await client.js.consumer_info(settings.names.workflows_stream, "cap-tools")
            return info.num_ack_pending > 0

        await eventually(slow_step_running, timeout=30)
        procs.kill("tools-a")  # the only replica dies holding the step
        procs.start("tools-b", "worker", "tools")  # another replica picks it up
        result = await client.result(wid, timeout=60)
        assert result.ok, procs.log("orchestrator")
        assert result.output.endswith("slept 3.0")
        await _each_once(client, settings, [wid])
    finally:
        await client.close()
        procs.stop_all()


async def test_sigkill_the_orchestrator_and_restart(settings: Settings, tmp_path: Path) -> None:
    procs = service_processes(settings.nats_url, settings.prefix, tmp_path)
    procs.start("orchestrator-1", "orchestrator")
    procs.start("workers", "worker", "reasoning", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(lambda: tools_registered(client.js, settings, "calculator"), timeout=30)
        ids = [
            await client.submit(
                instruction=f"What is {i} + {i}? Then multiply the result by 3 then add 1 to it",
                tenant="acme",
            )
            for i in range(40)
        ]

        async def some_progress() -> bool:
            info = await client.js.consumer_info(settings.names.steps_stream, "orchestrator-steps")
            return info.ack_floor.stream_seq > 20

        await eventually(some_progress, timeout=30)
        procs.kill("orchestrator-1")  # mid-work: some decisions half-written
        procs.start("orchestrator-2", "orchestrator")
        for i, wid in enumerate(ids):
            result = await client.result(wid, timeout=60)
            assert result.ok, procs.log("orchestrator-2")
            assert result.output.endswith(f"Final answer: {(2 * i) * 3 + 1}")
        await _each_once(client, settings, ids)
    finally:
        await client.close()
        procs.stop_all()


async def test_two_orchestrators_match_one(settings: Settings, nats_url: str) -> None:
    async def run(prefix: str, orchestrators: int) -> dict[int, tuple[str, str, int]]:
        config = settings.model_copy(update={"prefix": prefix})
        platform = await InProcessPlatform(config, orchestrators=orchestrators, workers=2).start()
        try:
            ids = {
                i: await platform.client.submit(
                    instruction=f"What is {i} * 7 and {i} + 7? Then add 2 to the result",
                    tenant="acme",
                    request_id=f"wf-{i}",
                )
                for i in range(100)
            }
            results = await asyncio.gather(
                *(platform.client.result(wid, timeout=120) for wid in ids.values())
            )
            await _each_once(platform.client, config, list(ids.values()))
            return {
                i: (r.status.value, r.output, r.tokens) for i, r in zip(ids, results, strict=True)
            }
        finally:
            await platform.stop()

    one = await run(settings.prefix[:10] + "a", 1)
    two = await run(settings.prefix[:10] + "b", 2)
    assert one == two
    assert all(status == "finalized" for status, _, _ in one.values())
