"""The worker runtime: retries, dead letters, graceful shutdown; the sync client."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from jetagent import Status, SyncClient
from jetagent.client import Client
from jetagent.config import Settings
from jetagent.errors import RequestRejectedError
from jetagent.events import StepFailed, StepScheduled
from jetagent.jetstream import DirectGetter
from jetagent.testing import eventually, tools_registered
from tests.support.checks import assert_one_result_per_step
from tests.support.platform import InProcessPlatform, service_processes


async def _records(client: Client, stream: str, subject: str) -> list[dict[str, object]]:
    reader = DirectGetter(client.nc, stream, timeout=5)
    await reader.open()
    try:
        return [json.loads(r.data) for r in await reader.scan(subject)]
    finally:
        await reader.close()


async def test_a_step_failing_after_max_deliver_is_recorded_and_dead_lettered(
    settings: Settings,
) -> None:
    config = settings.model_copy(update={"step_max_deliver": 2, "max_step_attempts": 2})
    platform = await InProcessPlatform(config).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction='call flaky {"note": "x"}', tenant="acme", allowed_tools=["flaky"]
        )
        result = await client.result(wid, timeout=30)
        assert result.status is Status.TERMINATED
        assert result.reason == "step_failed"
        events = await client.events(wid)
        failed = [e for e in events if isinstance(e, StepFailed)]
        # Each attempt was delivered twice, failed for good, and was recorded as failed.
        assert len(failed) == 2
        assert all("still down" in e.error for e in failed)
        tries = [e for e in events if isinstance(e, StepScheduled) and e.tool == "flaky"]
        assert [e.attempt for e in tries] == [1, 2]
        names = config.names
        results = await _records(client, names.steps_stream, names.step_results(wid))
        assert [r["deliveries"] for r in results if r["tool"] == "flaky"] == [2, 2]
        letters = await _records(client, names.dlq_stream, f"{names.prefix}.dlq.tools")
        assert len(letters) == 2
        assert all("still down" in str(letter["error"]) for letter in letters)
    finally:
        await platform.stop()


async def test_sigterm_lets_a_running_step_finish(settings: Settings, tmp_path: Path) -> None:
    procs = service_processes(settings.nats_url, settings.prefix, tmp_path)
    procs.start("orchestrator", "orchestrator")
    procs.start("reasoning", "worker", "reasoning")
    tools = procs.start("tools", "worker", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(lambda: tools_registered(client.js, settings, "slow"), timeout=30)
        wid = await client.submit(
            instruction='call slow {"seconds": 2}', tenant="acme", allowed_tools=["slow"]
        )

        async def running() -> bool:
            info = await client.js.consumer_info(settings.names.workflows_stream, "cap-tools")
            return info.num_ack_pending > 0

        await eventually(running, timeout=30)
        tools.send_signal(signal.SIGTERM)  # a deploy stops the only tools worker mid-step
        code = await asyncio.to_thread(tools.wait, 30)
        assert code == 0, procs.log("tools")
        # It finished the step before leaving: the workflow completes with no other worker.
        result = await client.result(wid, timeout=30)
        assert result.output.endswith("slept 2.0")
        assert await assert_one_result_per_step(client, settings, [wid]) == 3
    finally:
        await client.close()
        procs.stop_all()


async def test_the_sync_client(engine: InProcessPlatform) -> None:
    def use_it() -> tuple[str, list[str], str]:
        with SyncClient(engine.settings.nats_url, settings=engine.settings) as client:
            wid = client.submit(instruction="What is 5 * 5?", tenant="acme")
            result = client.result(wid, timeout=20)
            kinds = [type(e).__name__ for e in client.watch(wid)]
            return result.output, kinds, client.session(wid).status.value

    output, kinds, status = await asyncio.to_thread(use_it)
    assert output.endswith("Final answer: 25")
    assert kinds[0] == "Started"
    assert kinds[-1] == "Finalized"
    assert status == "finalized"


async def test_waiting_on_results_leaves_no_consumers_behind(engine: InProcessPlatform) -> None:
    # Thousands of quick result() / watch() calls once reached the server's consumer
    # limit per stream ("maximum consumers limit reached", found by `make soak`).
    client = engine.client
    stream = engine.settings.names.workflows_stream
    wid = await client.submit(instruction="What is 2 + 2?", tenant="acme")
    await client.result(wid, timeout=20)
    before = (await client.js.stream_info(stream)).state.consumer_count
    for _ in range(50):
        result = await client.result(wid, timeout=20)  # ended: read directly
        assert result.output.endswith("Final answer: 4")
        assert [type(e).__name__ async for e in client.watch(wid)][-1] == "Finalized"
    assert (await client.js.stream_info(stream)).state.consumer_count == before
    with pytest.raises(RequestRejectedError):
        await client.result(
            await client.submit(instruction="x", tenant="acme", allowed_tools=["nope"]),
            timeout=20,
        )
    assert (await client.js.stream_info(stream)).state.consumer_count == before
