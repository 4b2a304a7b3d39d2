"""Tenant concurrency quotas: a tenant over its quota is held or rejected with the quota
recorded, in arrival order, while other tenants run; deadlines and cancels reach held
workflows; a slot counted for a workflow that never started is reclaimed from the record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from jetagent.cli._render import describe
from jetagent.client import Client
from jetagent.config import Settings, TenantQuota
from jetagent.errors import RequestRejectedError
from jetagent.events import (
    Cancelled,
    Finalized,
    Held,
    QuotaUse,
    RequestRejected,
    Started,
    StepScheduled,
    Terminated,
    Throttled,
    WorkflowEvent,
)
from jetagent.models import ModelCatalog
from jetagent.orchestrator.quotas import Slots, TenantSlots
from jetagent.orchestrator.rates import TokenBucket, TokenBuckets
from jetagent.orchestrator.replay import replay_workflow
from jetagent.testing import eventually
from jetagent.worker.registry import ToolRegistry
from jetagent.workflow import (
    Admit,
    Begin,
    Cancel,
    DecideContext,
    Hold,
    Input,
    RateLimited,
    Tick,
    WorkflowState,
    decide,
    evolve,
)
from tests.support.platform import InProcessPlatform


def _quota_settings(settings: Settings, **quotas: TenantQuota) -> Settings:
    return settings.model_copy(update={"tenant_quotas": quotas})


@pytest.fixture
async def held_engine(settings: Settings) -> AsyncIterator[InProcessPlatform]:
    """acme may run one workflow at once; more are held."""
    config = _quota_settings(settings, acme=TenantQuota(max_workflows=1, over_quota="hold"))
    platform = await InProcessPlatform(config).start()
    try:
        yield platform
    finally:
        await platform.stop()


async def _first(client: Client, wid: str, kind: type[WorkflowEvent]) -> WorkflowEvent:
    async def found() -> WorkflowEvent | None:
        return next((e for e in await client.events(wid) if isinstance(e, kind)), None)

    event: WorkflowEvent = await eventually(found, timeout=30)
    return event


async def _event(client: Client, wid: str, kind: type[WorkflowEvent]) -> WorkflowEvent | None:
    return next((e for e in await client.events(wid) if isinstance(e, kind)), None)


async def _slow(client: Client, tenant: str, seconds: float, **fields: object) -> str:
    return await client.submit(
        instruction=f'call slow {{"seconds": {seconds}}}',
        tenant=tenant,
        allowed_tools=["slow"],
        **fields,  # type: ignore[arg-type]
    )


async def _context(platform: InProcessPlatform) -> DecideContext:
    registry = ToolRegistry(platform.client.js, platform.settings.names)
    await registry.start()
    await registry.stop()
    return DecideContext(models=ModelCatalog.load().models, tools=registry.tools)


async def test_over_its_quota_a_request_is_rejected_with_the_quota_while_others_run(
    settings: Settings,
) -> None:
    config = _quota_settings(settings, acme=TenantQuota(max_workflows=2, over_quota="reject"))
    platform = await InProcessPlatform(config).start()
    client = platform.client
    try:
        running = [await _slow(client, "acme", 3) for _ in range(2)]
        for wid in running:
            await _first(client, wid, Started)
        # acme's third request meets its quota: refused, with the quota and its use.
        third = await client.submit(instruction="hello", tenant="acme")
        with pytest.raises(RequestRejectedError) as refused:
            await client.result(third, timeout=20)
        assert "max_workflows=2" in str(refused.value), refused.value
        rejected = await _event(client, third, RequestRejected)
        assert isinstance(rejected, RequestRejected)
        assert rejected.quota == QuotaUse(quota="max_workflows", limit=2, in_use=2)
        assert rejected.tenant == "acme"
        assert "2 of 2 concurrent workflows running" in rejected.reasons[0]
        # Another tenant is not held back by acme's quota: it runs to its end meanwhile.
        other = await client.submit(instruction="What is 2 + 3?", tenant="beta")
        assert (await client.result(other, timeout=20)).ok
        still = [await _event(client, wid, Finalized) for wid in running]
        assert still == [None, None], "beta ran after acme's workflows, not beside them"
        # Once acme's workflows end, its slots are free again.
        for wid in running:
            assert (await client.result(wid, timeout=30)).ok
        again = await client.submit(instruction="hello", tenant="acme")
        assert (await client.result(again, timeout=20)).ok
    finally:
        await platform.stop()


async def test_held_requests_start_in_arrival_order_when_a_slot_frees(
    held_engine: InProcessPlatform,
) -> None:
    client = held_engine.client
    first = await _slow(client, "acme", 2)
    await _first(client, first, Started)
    held = [await client.submit(instruction=f"What is {i} + 1?", tenant="acme") for i in range(3)]
    # Each is held, in order, with the quota that held it; its session view and
    # `jetagent watch` say so.
    for position, wid in enumerate(held, start=1):
        event = await _first(client, wid, Held)
        assert isinstance(event, Held)
        assert event.quota == QuotaUse(quota="max_workflows", limit=1, in_use=1)
        assert event.position == position
        assert await _event(client, wid, Started) is None
        view = await client.fold_session(wid)
        assert (view.status.value, view.reason) == ("queued", "held")
        assert "max_workflows=1 (1 of 1 concurrent workflows running)" in view.detail
        assert f"position {position}" in describe(event)
    # beta is not held back: it ends while acme's first still runs.
    beta = await client.submit(instruction="What is 2 + 3?", tenant="beta")
    assert (await client.result(beta, timeout=20)).ok
    assert await _event(client, first, Finalized) is None
    # Each held one starts when the one before it has ended: one at a time, in order.
    ended_at = [(await client.result(first, timeout=30)) and await _ended_at(client, first)]
    for wid in held:
        result = await client.result(wid, timeout=30)
        assert result.ok, result
        started = await _event(client, wid, Started)
        assert isinstance(started, Started)
        assert started.at >= ended_at[-1], "started before the slot was free"
        assert started.held_since is not None
        ended_at.append(await _ended_at(client, wid))
    # Replay re-decides the hold and the start from the record.
    ctx = await _context(held_engine)
    for wid in held:
        report = await replay_workflow(client.nc, held_engine.settings.names, wid, ctx)
        assert report.ok, report.mismatches
        assert [type(e).__name__ for e in report.events][:2] == ["Held", "Started"]


async def _ended_at(client: Client, wid: str) -> datetime:
    events = await client.events(wid)
    return next(e.at for e in events if isinstance(e, Finalized | Terminated | Cancelled))


async def test_a_held_workflow_ends_at_its_deadline_or_cancel_and_frees_its_place(
    held_engine: InProcessPlatform,
) -> None:
    client = held_engine.client
    first = await _slow(client, "acme", 3)
    await _first(client, first, Started)
    late = await client.submit(
        instruction="hello", tenant="acme", capability_limits={"deadline_s": 1}
    )
    dropped = await client.submit(instruction="hello", tenant="acme")
    after = await client.submit(instruction="hello", tenant="acme")
    for wid in (late, dropped, after):
        await _first(client, wid, Held)
    # The deadline runs while held: it ends Terminated(deadline), never started.
    result = await client.result(late, timeout=20)
    assert (result.status.value, result.reason) == ("terminated", "deadline")
    assert "held" in result.detail
    assert await _event(client, late, Started) is None
    # A held workflow can be cancelled; it never starts either.
    await client.cancel(dropped, reason="not needed")
    assert (await client.result(dropped, timeout=20)).status.value == "cancelled"
    # Neither holds up the queue: the next one starts when the slot frees.
    assert (await client.result(after, timeout=30)).ok
    assert await _event(client, dropped, Started) is None
    ctx = await _context(held_engine)
    for wid in (late, dropped):
        report = await replay_workflow(client.nc, held_engine.settings.names, wid, ctx)
        assert report.ok, report.mismatches
    # The tenant's slots hold nothing once everything ended.
    slots = Slots(client.js, held_engine.settings.names)

    async def empty() -> bool:
        left = await slots.read("acme")
        return not left.running and not left.held

    await eventually(empty, timeout=20)


async def test_a_slot_counted_for_a_workflow_that_never_started_is_reclaimed(
    settings: Settings,
) -> None:
    config = _quota_settings(settings, acme=TenantQuota(max_workflows=1))
    platform = await InProcessPlatform(config).start()
    client = platform.client
    try:
        # As if an orchestrator took a slot and died before recording the start, and the
        # request then never started (its redelivery refused): the slot was counted long ago.
        kv = await client.js.key_value(config.names.bucket("QUOTAS"))
        ghost = TenantSlots(running={"ghost-1": datetime.now(UTC) - timedelta(minutes=10)})
        await kv.put(Slots.key("acme"), msgspec.json.encode(ghost))
        wid = await client.submit(instruction="hello", tenant="acme")
        # The record shows ghost-1 never started: its slot goes to this request.
        assert (await client.result(wid, timeout=20)).ok
        assert await _event(client, wid, Held) is None
        slots = await Slots(client.js, config.names).read("acme")
        assert "ghost-1" not in slots.running
    finally:
        await platform.stop()


async def test_a_held_workflow_whose_wake_up_was_lost_starts_on_its_recheck(
    settings: Settings,
) -> None:
    config = _quota_settings(settings, acme=TenantQuota(max_workflows=1)).model_copy(
        update={"quota_recheck_s": 1.0}
    )
    platform = await InProcessPlatform(config).start()
    client = platform.client
    try:
        first = await _slow(client, "acme", 4)
        await _first(client, first, Started)
        waiting = await client.submit(instruction="hello", tenant="acme")
        await _first(client, waiting, Held)
        # As if a replica promoted it into a freed slot and died before waking it: the
        # key says it holds the slot, and no wake-up was sent.
        kv = await client.js.key_value(config.names.bucket("QUOTAS"))
        promoted = TenantSlots(running={waiting: datetime.now(UTC)})
        await kv.put(Slots.key("acme"), msgspec.json.encode(promoted))
        # Its durable recheck finds its slot and starts it (long before `first` ends).
        assert (await client.result(waiting, timeout=20)).ok
        assert await _event(client, first, Finalized) is None
        assert (await client.result(first, timeout=20)).ok
    finally:
        await platform.stop()


async def test_quotas_of_other_tenants_and_the_default_apply(settings: Settings) -> None:
    config = settings.model_copy(
        update={
            "tenant_max_workflows": 1,
            "over_quota": "reject",
            "tenant_quotas": {"big": TenantQuota(max_workflows=0)},
        }
    )
    assert config.quotas_of("anyone").max_workflows == 1
    assert config.quotas_of("big").max_workflows == 0
    platform = await InProcessPlatform(config).start()
    client = platform.client
    try:
        # The default (1, reject) for a tenant without an override ...
        first = await _slow(client, "small", 2)
        await _first(client, first, Started)
        with pytest.raises(RequestRejectedError):
            await client.result(await client.submit(instruction="hello", tenant="small"))
        # ... and no limit for one whose override says 0.
        many = [await _slow(client, "big", 1) for _ in range(3)]
        for wid in many:
            await _first(client, wid, Started)
        results = await asyncio.gather(*(client.result(w, timeout=30) for w in many))
        assert all(r.ok for r in results)
    finally:
        await platform.stop()


async def test_a_tenant_over_its_tokens_per_minute_waits_on_a_durable_timer(
    settings: Settings,
) -> None:
    config = _quota_settings(settings, acme=TenantQuota(tokens_per_minute=600))
    platform = await InProcessPlatform(config).start()
    client = platform.client
    try:
        # Each reasoning step reserves its prompt and 64 output tokens (about 75 tokens:
        # no tools offered); a minute's 600 cover the first ones at once, the rest wait
        # for the bucket (10 tokens a second, and what settled steps did not spend).
        ids = [
            await client.submit(
                instruction=f"say {i}",
                tenant="acme",
                allowed_tools=[],
                model_preferences={"models": ["offline-planner"], "max_output_tokens": 64},
            )
            for i in range(12)
        ]
        other = await client.submit(instruction="hello", tenant="beta")
        assert (await client.result(other, timeout=20)).ok  # beta is not throttled
        results = await asyncio.gather(*(client.result(w, timeout=60) for w in ids))
        assert all(r.ok for r in results), results
        throttled = 0
        ctx = await _context(platform)
        for wid in ids:
            events = await client.events(wid)
            waits = [e for e in events if isinstance(e, Throttled)]
            if not waits:
                continue
            throttled += 1
            assert len(waits) <= 3, f"{wid} throttled {len(waits)} times: a busy loop"
            wait = waits[-1]
            assert wait.quota.quota == "tokens_per_minute"
            assert wait.quota.limit == 600
            assert wait.needed > 0
            # Its step was scheduled by the timer, not before the bucket allowed it.
            step = next(e for e in events if isinstance(e, StepScheduled))
            assert step.at >= wait.until, (step.at, wait.until)
            report = await replay_workflow(client.nc, config.names, wid, ctx)
            assert report.ok, report.mismatches
        print(f"\n{throttled} of {len(ids)} workflows waited for tenant acme's tokens per minute")
        assert throttled >= 3, throttled
        assert not any(isinstance(e, Throttled) for e in await client.events(other))
    finally:
        await platform.stop()


async def test_with_reject_a_tenant_whose_tokens_are_spent_is_refused(settings: Settings) -> None:
    config = _quota_settings(settings, acme=TenantQuota(tokens_per_minute=600, over_quota="reject"))
    platform = await InProcessPlatform(config).start()
    client = platform.client
    try:
        # acme's steps spent this minute's tokens (and more: the bucket is in debt).
        kv = await client.js.key_value(config.names.bucket("QUOTAS"))
        spent = TokenBucket(level=-300.0, at=datetime.now(UTC))
        await kv.put(TokenBuckets.key("acme"), msgspec.json.encode(spent))
        second = await client.submit(instruction="hello", tenant="acme")
        with pytest.raises(RequestRejectedError) as refused:
            await client.result(second, timeout=20)
        assert "tokens_per_minute=600" in str(refused.value)
        rejected = await _event(client, second, RequestRejected)
        assert isinstance(rejected, RequestRejected)
        assert rejected.quota is not None
        assert rejected.quota.quota == "tokens_per_minute"
        assert rejected.quota.limit == 600
        assert rejected.quota.in_use > 600
        # Another tenant is not refused.
        assert (await client.result(await client.submit(instruction="hi", tenant="beta"))).ok
    finally:
        await platform.stop()


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"JETAGENT_TENANT_QUOTAS": "{acme"}, "JETAGENT_TENANT_QUOTAS is not JSON"),
        ({"JETAGENT_TENANT_QUOTAS": '{"acme": {"max_workflow": 3}}'}, "max_workflow"),
        ({"JETAGENT_TENANT_QUOTAS": '{"a b": {}}'}, "are not tenant ids"),
        ({"JETAGENT_TENANT_QUOTAS": '{"acme": {"max_workflows": -1}}'}, "greater than or equal"),
        ({"JETAGENT_OVER_QUOTA": "drop"}, "'hold' or 'reject'"),
        ({"JETAGENT_TENANT_MAX_WORKFLOWS": "-1"}, "greater than or equal"),
        ({"JETAGENT_QUOTA_RECHECK_S": "0"}, "greater than or equal"),
    ],
)
def test_bad_quota_settings_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], said: str
) -> None:
    from pydantic import ValidationError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert said in str(refused.value)


def test_quota_settings_round_trip_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `jetagent up` hands its settings to the services it starts as environment variables.
    quotas = '{"acme": {"max_workflows": 3, "over_quota": "reject"}, "big": {"max_workflows": 0}}'
    monkeypatch.setenv("JETAGENT_TENANT_QUOTAS", quotas)
    settings = Settings()
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    again = Settings()
    assert again.quotas_of("acme").max_workflows == 3
    assert again.quotas_of("acme").over_quota == "reject"
    assert again.quotas_of("big").max_workflows == 0
    assert again.quotas_of("other") == settings.quotas_of("other")


# ---------------------------------------------------------------- the pure decisions

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CTX = DecideContext(models=ModelCatalog.load().models)
FULL = QuotaUse(quota="max_workflows", limit=2, in_use=2)


def _begin(**fields: object) -> Begin:
    request = {"request_id": "wf", "tenant": "acme", "instruction": "hello"}
    return Begin(
        workflow_id="wf",
        tenant="acme",
        request=request,
        at=T0,
        deadline_at=T0 + timedelta(seconds=30),
        **fields,  # type: ignore[arg-type]
    )


def _decide_all(state: WorkflowState, command: Input, **rate: object) -> WorkflowState:
    for event in decide(state, command, CTX, **rate):  # type: ignore[arg-type]
        state = evolve(state, event)
    return state


def test_a_held_request_starts_on_admit_with_its_deadline_from_the_request() -> None:
    events = decide(WorkflowState(), _begin(hold=Hold(quota=FULL, position=3)), CTX)
    assert [type(e).__name__ for e in events] == ["Held"]
    held = events[0]
    assert isinstance(held, Held)
    assert (held.quota, held.position, held.deadline_at) == (FULL, 3, T0 + timedelta(seconds=30))
    state = evolve(WorkflowState(), held)
    assert state.status.value == "queued"
    # A redelivered request decides nothing more; time passing before the deadline neither.
    assert decide(state, _begin(hold=Hold(quota=FULL, position=3)), CTX) == []
    assert decide(state, Tick(at=T0 + timedelta(seconds=10)), CTX) == []
    started = decide(state, Admit(at=T0 + timedelta(seconds=5)), CTX)
    assert [type(e).__name__ for e in started] == ["Started", "StepScheduled"]
    first = started[0]
    assert isinstance(first, Started)
    assert first.held_since == T0
    assert first.deadline_at == T0 + timedelta(seconds=30)  # not moved by the wait
    # Admitting a workflow that is not held decides nothing.
    assert decide(_decide_all(state, Admit(at=T0)), Admit(at=T0), CTX) == []


def test_a_held_workflow_ends_at_its_deadline_or_on_a_cancel_kept_from_before() -> None:
    state = _decide_all(WorkflowState(), _begin(hold=Hold(quota=FULL, position=1)))
    ended = decide(state, Tick(at=T0 + timedelta(seconds=30)), CTX)
    assert [type(e).__name__ for e in ended] == ["Terminated"]
    assert isinstance(ended[0], Terminated)
    assert ended[0].reason == "deadline"
    # A cancel that came before the request was held cancels it as it is held.
    early = Cancel(
        at=T0, reason="never mind", workflow_id="wf", expires_at=T0 + timedelta(seconds=60)
    )
    state = _decide_all(WorkflowState(), early)
    events = decide(state, _begin(hold=Hold(quota=FULL, position=1)), CTX)
    assert [type(e).__name__ for e in events] == ["Held", "Cancelled"]
    # A cancel while it is held ends it too.
    state = _decide_all(WorkflowState(), _begin(hold=Hold(quota=FULL, position=1)))
    assert [type(e).__name__ for e in decide(state, Cancel(at=T0), CTX)] == ["Cancelled"]


def test_a_throttled_decision_schedules_its_step_when_the_timer_says() -> None:
    spent = QuotaUse(quota="tokens_per_minute", limit=1000, in_use=1000)
    until = T0 + timedelta(seconds=12)
    rate = RateLimited(quota=spent, needed=600, until=until)
    events = decide(WorkflowState(), _begin(), CTX, rate=rate)
    assert [type(e).__name__ for e in events] == ["Started", "Throttled"]
    throttled = events[-1]
    assert isinstance(throttled, Throttled)
    assert (throttled.until, throttled.quota) == (until, spent)
    assert throttled.needed >= 600
    state = WorkflowState()
    for event in events:
        state = evolve(state, event)
    assert decide(state, Tick(at=until - timedelta(seconds=1)), CTX) == []  # not yet
    due = decide(state, Tick(at=until), CTX)
    assert [type(e).__name__ for e in due] == ["StepScheduled"]
