"""Replaying history: decisions replay to the recorded events; snapshots rebuild state."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from jetagent.config import Settings
from jetagent.events import Spend, StepScheduled
from jetagent.jetstream import AggregateStream
from jetagent.llm import ToolCall
from jetagent.models import ModelCatalog
from jetagent.orchestrator.journal import Journal
from jetagent.orchestrator.replay import replay_workflow
from jetagent.workflow import DecideContext, WorkflowState, _plan, as_recorded, fold
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


def _tool_steps(events: list[Any]) -> list[StepScheduled]:
    return [e for e in events if isinstance(e, StepScheduled) and e.capability == "tools"]


async def test_a_history_written_before_steps_carried_their_session_still_verifies(
    engine: InProcessPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = engine.client
    instruction = "remember my city is Oslo, then recall city"

    # The orchestrator of before: tool steps carried the call and nothing of the workflow.
    def call_only(state: WorkflowState, call: ToolCall) -> dict[str, Any]:
        return {"call_id": call.id, "tool": call.name, "arguments": call.arguments}

    monkeypatch.setattr(_plan, "_tool_input", call_only)
    old = await client.submit(
        instruction=instruction, tenant="acme", session_context={"session_id": "s1"}
    )
    assert (await client.result(old, timeout=20)).ok
    monkeypatch.undo()
    written = _tool_steps(await client.events(old))
    assert len(written) == 2
    assert all("session_id" not in step.input for step in written)

    # Today's orchestrator puts the workflow's session in every tool step...
    new = await client.submit(
        instruction=instruction, tenant="acme", session_context={"session_id": "s1"}
    )
    assert (await client.result(new, timeout=20)).ok
    assert [s.input["session_id"] for s in _tool_steps(await client.events(new))] == ["s1"] * 2

    # ...and replays both histories to what each recorded.
    ctx = await _context(engine)
    for wid in (old, new):
        report = await replay_workflow(client.nc, engine.settings.names, wid, ctx)
        assert report.ok, report.mismatches
        assert report.groups >= 3


def _step(input: dict[str, Any]) -> StepScheduled:
    return StepScheduled(
        workflow_id="wf",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        step_id="2",
        capability="tools",
        tool="calculator",
        iteration=1,
        input=input,
        reservation=Spend(),
        tenant="acme",
    )


def _ref(value: dict[str, Any]) -> dict[str, Any]:
    """A claim check of ``value``, as the orchestrator's payload store writes one."""
    data = msgspec.json.Encoder(decimal_format="string").encode(value)
    digest = hashlib.sha256(data).hexdigest()
    return {"$ref": f"PAYLOADS/{digest}", "sha256": digest, "size": len(data), "tokens": 0}


def test_a_decided_step_compares_in_the_shape_it_was_recorded_in() -> None:
    call = {"call_id": "call_1_1", "tool": "calculator", "arguments": {"expression": "6 * 7"}}
    decided = _step({**call, "session_id": "s1"})
    # Recorded before steps carried their session: compared without it.
    assert as_recorded(decided, _step(call)) == _step(call)
    # Recorded since: compared as it is, so another session is still a difference.
    assert as_recorded(decided, _step({**call, "session_id": "s1"})) == decided
    assert as_recorded(decided, _step({**call, "session_id": "s2"})) == decided
    # A claim-checked input is known by its digest, of either shape.
    assert as_recorded(decided, _step(_ref(call))) == _step(call)
    assert as_recorded(decided, _step(_ref(decided.input))) == decided
    other = {**call, "arguments": {"expression": "6 * 8"}}
    assert as_recorded(decided, _step(_ref(other))) == decided
    # Nothing to compare with (more decided than recorded): as decided.
    assert as_recorded(decided, None) == decided


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
