"""Replaying history: decisions replay to the recorded events; snapshots rebuild state."""

from __future__ import annotations

from decimal import Decimal

from jetagent.config import Settings
from jetagent.jetstream import AggregateStream
from jetagent.models import ModelCatalog
from jetagent.orchestrator.journal import Journal
from jetagent.orchestrator.replay import replay_workflow
from jetagent.workflow import DecideContext, WorkflowState, fold
from tests.support.platform import InProcessPlatform


async def _context(platform: InProcessPlatform) -> DecideContext:
    from jetagent.worker.registry import ToolRegistry

    registry = ToolRegistry(platform.client.js, platform.settings.names)
    await registry.start()
    await registry.stop()
    return DecideContext(models=ModelCatalog.load().models, tools=registry.tools)


async def test_every_decision_replays_to_the_recorded_events(engine: InProcessPlatform) -> None:
    client = engine.client
    ids = [
        await client.submit(
            instruction="What is (17 * 23) + 4 and 2 ** 10? Then multiply the result by 2",
            tenant="acme",
        ),
        await client.submit(
            instruction="Compute 1 + 1 then 2 + 2 then 3 + 3 then 4 + 4 then 5 + 5",
            tenant="acme",
            allowed_tools=["calculator"],
            capability_limits={"token_cap": 700},
        ),
        await client.submit(
            instruction="remember my city is Oslo, then recall city", tenant="acme"
        ),
    ]
    for wid in ids:
        await client.result(wid, timeout=20)
    ctx = await _context(engine)
    for wid in ids:
        report = await replay_workflow(client.nc, engine.settings.names, wid, ctx)
        assert report.ok, report.mismatches
        assert report.groups >= 3
        assert report.state.status.is_final

    # With other prices in the catalog, the reservations would differ: replay says where.
    models = dict(ctx.models)
    planner = models["offline-planner"]
    models["offline-planner"] = planner.model_copy(update={"output_per_mtok": Decimal(99)})
    changed = DecideContext(models=models, tools=ctx.tools)
    report = await replay_workflow(client.nc, engine.settings.names, ids[0], changed)
    assert not report.ok
    assert "reservation" in report.mismatches[0].detail


async def test_a_workflow_rebuilds_from_its_snapshot(settings: Settings) -> None:
    config = settings.model_copy(update={"snapshot_every": 10})
    platform = await InProcessPlatform(config).start()
    try:
        wid = await platform.client.submit(
            instruction="Compute 1 + 1 then 2 + 2 then 3 + 3 then 4 + 4 then 5 + 5",
            tenant="acme",
        )
        assert (await platform.client.result(wid, timeout=20)).ok
        names = config.names
        kv = await platform.client.js.key_value(names.bucket("SNAPSHOTS"))
        assert (await kv.get(wid)).value  # a snapshot was taken along the way
        # A fresh replica (empty cache) loads snapshot + the events after it...
        aggregates = AggregateStream(
            platform.client.nc, stream=names.workflows_stream, root=names.workflow_root
        )
        await aggregates.open()
        journal = Journal(platform.client.js, aggregates, names, cache_size=10, snapshot_every=10)
        loaded = await journal.load(wid)
        await aggregates.close()
        # ...and arrives at exactly the state folded from every event.
        events = await platform.client.events(wid)
        assert loaded.state == fold(WorkflowState(), events)
        assert loaded.snapshot_version > 0
    finally:
        await platform.stop()
