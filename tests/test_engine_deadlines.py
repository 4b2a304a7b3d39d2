"""Deadlines are durable timers: a workflow ends by its deadline with nothing else happening,
even after every orchestrator was killed (SIGKILL) and replaced."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.events import ApprovalRequested, Started, StepScheduled, Terminated
from jetagent.jetstream import DirectGetter
from jetagent.models import ModelCatalog
from jetagent.orchestrator.replay import replay_workflow
from jetagent.testing import eventually, tools_registered
from jetagent.workflow import DecideContext
from tests.support.platform import InProcessPlatform, service_processes


async def _assert_ended_by_its_deadline(client: Client, wid: str, log: str) -> None:
    result = await client.result(wid, timeout=60)
    assert (result.status.value, result.reason) == ("terminated", "deadline"), log
    events = await client.events(wid)
    started = next(e for e in events if isinstance(e, Started))
    ended = [e for e in events if isinstance(e, Terminated)]
    assert len(ended) == 1
    assert started.deadline_at is not None
    assert ended[0].at >= started.deadline_at  # never before it


async def test_a_deadline_ends_a_waiting_workflow_and_replays(engine: InProcessPlatform) -> None:
    client = engine.client
    wid = await client.submit(
        instruction='call dangerous {"target": "prod"}',
        tenant="acme",
        allowed_tools=["dangerous"],
        capability_limits={"deadline_s": 1},
    )
    await _assert_ended_by_its_deadline(client, wid, "")
    # The due timer is the decision's recorded cause; replay --verify re-decides it.
    names = engine.settings.names
    reader = DirectGetter(client.nc, names.workflows_stream, timeout=5)
    await reader.open()
    try:
        records = await reader.scan(f"{names.workflow_root}.{wid}.Terminated")
    finally:
        await reader.close()
    assert [r.headers["Ja-Causation"].split(":")[0] for r in records] == [names.timers_stream]
    report = await replay_workflow(client.nc, names, wid, await _context(engine))
    assert report.ok, report.mismatches


async def test_a_workflow_that_ends_first_leaves_no_timer_behind(
    engine: InProcessPlatform,
) -> None:
    client, names = engine.client, engine.settings.names
    wid = await client.submit(
        instruction='call dangerous {"target": "prod"}',
        tenant="acme",
        allowed_tools=["dangerous"],
        capability_limits={"deadline_s": 600},
    )
    schedule = names.timer_schedule(wid, "deadline")

    async def armed() -> bool:
        info = await client.js.stream_info(names.timers_stream, subjects_filter=schedule)
        return bool(info.state.subjects)

    await eventually(armed)  # its deadline is held by the server while it waits
    await client.cancel(wid, reason="done with it")
    assert (await client.result(wid, timeout=20)).status.value == "cancelled"
    # Ended long before its deadline: the timer is removed, JA_TIMERS holds nothing.
    await eventually(lambda: _not(armed()), timeout=10)
    info = await client.js.stream_info(names.timers_stream)
    assert info.state.messages == 0


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def _context(platform: InProcessPlatform) -> DecideContext:
    from jetagent.worker.registry import ToolRegistry

    registry = ToolRegistry(platform.client.js, platform.settings.names)
    await registry.start()
    await registry.stop()
    return DecideContext(models=ModelCatalog.load().models, tools=registry.tools)


async def test_a_workflow_waiting_on_approval_ends_at_its_deadline_after_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    procs = service_processes(settings.nats_url, settings.prefix, tmp_path)
    procs.start("orchestrator-1", "orchestrator")
    procs.start("workers", "worker", "reasoning", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(lambda: tools_registered(client.js, settings, "dangerous"), timeout=30)
        wid = await client.submit(
            instruction='call dangerous {"target": "prod"}',
            tenant="acme",
            allowed_tools=["dangerous"],
            capability_limits={"deadline_s": 2},
        )

        async def waiting() -> bool:
            return any(isinstance(e, ApprovalRequested) for e in await client.events(wid))

        await eventually(waiting, timeout=30)
        procs.kill("orchestrator-1")  # the replica that knew the deadline is gone
        procs.start("orchestrator-2", "orchestrator")  # a fresh one, empty cache
        await _assert_ended_by_its_deadline(client, wid, procs.log("orchestrator-2"))
    finally:
        await client.close()
        procs.stop_all()


async def test_a_workflow_on_a_hung_step_ends_at_its_deadline_with_every_orchestrator_restarted(
    settings: Settings, tmp_path: Path
) -> None:
    procs = service_processes(settings.nats_url, settings.prefix, tmp_path)
    procs.start("orchestrator-1", "orchestrator")
    procs.start("orchestrator-2", "orchestrator")
    procs.start("workers", "worker", "reasoning", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(lambda: tools_registered(client.js, settings, "slow"), timeout=30)
        wid = await client.submit(
            instruction='call slow {"seconds": 300}',
            tenant="acme",
            allowed_tools=["slow"],
            capability_limits={"deadline_s": 2},
        )

        async def hung() -> bool:
            events = await client.events(wid)
            return any(isinstance(e, StepScheduled) and e.tool == "slow" for e in events)

        await eventually(hung, timeout=30)
        procs.kill("orchestrator-1")
        procs.kill("orchestrator-2")
        procs.kill("workers")  # the step stays hung: no result will ever come
        # The deadline passes while no orchestrator runs at all; nothing else happens.
        passed_at = datetime.now(UTC) + timedelta(seconds=3)

        async def deadline_passed() -> bool:
            return datetime.now(UTC) >= passed_at

        await eventually(deadline_passed, timeout=10)
        procs.start("orchestrator-3", "orchestrator")
        began = time.monotonic()
        await _assert_ended_by_its_deadline(client, wid, procs.log("orchestrator-3"))
        # The step is still hung: the deadline, not a step result, ended the workflow.
        slow = [r for r in await client.step_results(wid) if r.tool == "slow"]
        assert slow == [], [(r.ok, r.error, r.output) for r in slow]
        # Once an orchestrator is back, the overdue deadline is enforced at once.
        assert time.monotonic() - began < 30
    finally:
        await client.close()
        procs.stop_all()


async def test_a_due_deadline_outlives_a_store_that_failed_more_times_than_max_deliver(
    settings: Settings, tmp_path: Path
) -> None:
    """A due timer whose handling keeps failing (the workflow stream cannot be read, as
    while a cluster elects its leader) is retried until it can be handled, never dropped
    by a delivery limit: the workflow still ends by its deadline once the store is back."""
    procs = service_processes(settings.nats_url, settings.prefix, tmp_path)
    procs.start("orchestrator-1", "orchestrator")
    procs.start("workers", "worker", "reasoning", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    names = settings.names
    try:
        await eventually(lambda: tools_registered(client.js, settings, "dangerous"), timeout=30)
        wid = await client.submit(
            instruction='call dangerous {"target": "prod"}',
            tenant="acme",
            allowed_tools=["dangerous"],
            capability_limits={"deadline_s": 10},
        )

        async def waiting() -> bool:
            return any(isinstance(e, ApprovalRequested) for e in await client.events(wid))

        await eventually(waiting, timeout=30)
        procs.kill("orchestrator-1")
        procs.start("orchestrator-2", "orchestrator")  # empty cache: it must read

        async def timers_pulled() -> bool:
            info = await client.js.consumer_info(names.timers_stream, "orchestrator-timers")
            return info.num_waiting > 0

        await eventually(timers_pulled, timeout=30)
        stream = await client.js.stream_info(names.workflows_stream)
        unreadable = stream.config
        unreadable.allow_direct = False  # every read of a workflow now fails
        await client.js.update_stream(unreadable)

        async def delivered_often() -> bool:
            info = await client.js.consumer_info(names.timers_stream, "orchestrator-timers")
            return info.delivered.consumer_seq >= 12  # past the consumer's old max_deliver

        await eventually(delivered_often, timeout=180, interval=0.5)
        readable = (await client.js.stream_info(names.workflows_stream)).config
        readable.allow_direct = True
        await client.js.update_stream(readable)
        await _assert_ended_by_its_deadline(client, wid, procs.log("orchestrator-2"))
    finally:
        await client.close()
        procs.stop_all()
