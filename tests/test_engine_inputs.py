"""Inputs that race the start of their workflow: cancels, signals, requests without ids."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec
from nats.js.errors import NotFoundError

from jetagent import Status
from jetagent.config import Settings
from jetagent.events import Cancelled, Started, WorkflowEvent, decode_events
from jetagent.jetstream import DirectGetter, connect
from jetagent.models import ModelCatalog
from jetagent.orchestrator import Orchestrator
from jetagent.orchestrator.journal import Journal
from jetagent.orchestrator.replay import replay_workflow
from jetagent.testing import eventually
from jetagent.workflow import DecideContext
from tests.support.platform import InProcessPlatform

WAITS_FOR_APPROVAL = {
    "instruction": 'call dangerous {"target": "prod"}',
    "tenant": "acme",
    "allowed_tools": ["dangerous"],
}


async def test_a_cancel_right_after_submit_always_cancels(settings: Settings) -> None:
    # Two replicas share the request stream; each holds a request back until the cancel
    # that follows it has been handled (by either replica), as a busy replica would: the
    # cancel is decided before the workflow exists.
    platform = await InProcessPlatform(settings, orchestrators=0).start()
    client = platform.client
    cancels_handled: set[str] = set()
    replicas = _Replicas(settings)
    for orchestrator in await replicas.start(2):
        _hold_requests_until_cancelled(orchestrator, cancels_handled)
    try:

        async def submit_then_cancel() -> str:
            wid = await client.submit(**WAITS_FOR_APPROVAL)  # type: ignore[arg-type]
            await client.cancel(wid, reason="changed my mind", by="test")
            return wid

        ids = await asyncio.gather(*(submit_then_cancel() for _ in range(50)))
        # Without the cancel each of these waits for an approval forever.
        outcomes = await asyncio.gather(
            *(client.result(wid, timeout=30) for wid in ids), return_exceptions=True
        )
        statuses = Counter(
            o.status.value if not isinstance(o, BaseException) else type(o).__name__
            for o in outcomes
        )
        assert statuses == {"cancelled": 50}
        assert cancels_handled == set(ids)
        for wid in ids:
            kinds = Counter(type(e).__name__ for e in await client.events(wid))
            # The cancel was kept (it came first), then applied as the workflow started.
            assert kinds == {"InputDeferred": 1, "Started": 1, "Cancelled": 1}
    finally:
        await replicas.stop()
        await platform.stop()


class _Replicas:
    """Orchestrator replicas of a test's own (to hold or break them on purpose)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.connections: list[Any] = []

    async def start(self, count: int) -> list[Orchestrator]:
        started = []
        for _ in range(count):
            nc = await connect(self.settings.nats_url, name="test-orchestrator")
            self.connections.append(nc)
            orchestrator = Orchestrator(nc, self.settings)
            started.append(orchestrator)
        for orchestrator in started:
            self.tasks.append(asyncio.create_task(orchestrator.run(self.stop_event)))
        return started

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)
        for nc in self.connections:
            await nc.close()


def _hold_requests_until_cancelled(orchestrator: Orchestrator, handled: set[str]) -> None:
    real = orchestrator._on_request

    async def held(msg: Any) -> None:
        kind = msg.subject.split(".")[1]
        if kind == "request":
            wid = msgspec.json.decode(msg.data)["request_id"]
            await eventually(lambda: _true(wid in handled), timeout=10)
        await real(msg)
        if kind == "cancel":
            handled.add(msgspec.json.decode(msg.data)["workflow_id"])

    orchestrator._on_request = held  # type: ignore[method-assign]


async def _true(value: bool) -> bool:
    return value


async def test_a_cancel_before_the_request_is_applied_when_it_starts(
    engine: InProcessPlatform,
) -> None:
    client = engine.client
    await client.cancel("early-bird", reason="before it began", by="ops")

    async def recorded() -> list[WorkflowEvent]:
        return await client.events("early-bird")

    # The cancel is recorded under the workflow's subject, visibly, before any start.
    deferred = await eventually(recorded)
    assert [type(e).__name__ for e in deferred] == ["InputDeferred"]
    await client.submit(request_id="early-bird", **WAITS_FOR_APPROVAL)  # type: ignore[arg-type]
    result = await client.result("early-bird", timeout=20)
    assert result.status is Status.CANCELLED
    assert result.detail == "before it began"
    events = await client.events("early-bird")
    assert [type(e).__name__ for e in events] == ["InputDeferred", "Started", "Cancelled"]
    cancelled = events[-1]
    assert isinstance(cancelled, Cancelled)
    assert cancelled.by == "ops"
    await _replays(engine, "early-bird")


async def test_a_cancel_or_signal_for_an_id_that_never_starts_is_answered(
    settings: Settings,
) -> None:
    quick = settings.model_copy(update={"early_input_wait_s": 1.0})
    platform = await InProcessPlatform(quick).start()
    client = platform.client
    try:
        await client.cancel("nobody", reason="typo", by="ops")
        await client.signal("nobody", "approval", {"step_id": "2", "approved": True})

        async def answered() -> list[str] | None:
            kinds = [type(e).__name__ for e in await client.events("nobody")]
            return kinds if "InputRejected" in kinds else None

        kinds = await eventually(answered, timeout=30)
        assert kinds == ["InputDeferred", "InputDeferred", "InputRejected"]
        rejected = (await client.events("nobody"))[-1]
        reasons = getattr(rejected, "reasons", [])
        assert len(reasons) == 2
        assert all("did not start" in r for r in reasons), reasons
        await _replays(platform, "nobody")
        # A request that comes later still starts normally (nothing pending any more).
        await client.submit(request_id="nobody", instruction="What is 6 * 7?", tenant="acme")
        result = await client.result("nobody", timeout=20)
        assert result.ok
        assert result.output.endswith("Final answer: 42")
        await _replays(platform, "nobody")
    finally:
        await platform.stop()


async def test_a_request_without_any_id_starts_one_workflow_when_redelivered(
    settings: Settings,
) -> None:
    # Workers only; the orchestrator is ours, with a crash between append and ack.
    platform = await InProcessPlatform(settings, orchestrators=0).start()
    nc = await connect(settings.nats_url, name="test-orchestrator")
    orchestrator = Orchestrator(nc, settings)
    crashes = 0
    deliveries = 0
    real_append = Journal.append
    real_on_request = orchestrator._on_request

    async def append_then_crash(self: Journal, wid: str, *args: Any) -> None:
        nonlocal crashes
        await real_append(self, wid, *args)
        if crashes == 0 and any(isinstance(e, Started) for e in args[1]):
            crashes += 1
            raise RuntimeError("crash between append and ack (test)")

    async def counting(msg: Any) -> None:
        nonlocal deliveries
        deliveries += 1
        await real_on_request(msg)

    orchestrator.journal.append = append_then_crash.__get__(orchestrator.journal)  # type: ignore[method-assign]
    orchestrator._on_request = counting  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(orchestrator.run(stop))
    client = platform.client
    try:
        # No request_id in the body and no Nats-Msg-Id header.
        body = msgspec.json.encode({"instruction": "What is 6 * 7?", "tenant": "acme"})
        ack = await client.js.publish(settings.names.request("acme"), body)
        await eventually(lambda: _requests_settled(client.js, settings), timeout=30)
        assert crashes == 1
        assert deliveries == 2
        started = await _started_workflows(client.nc, settings)
        assert len(started) == 1, started
        # The id is derived from the request's stream sequence (the publisher's ack).
        assert started == [f"seq-{ack.seq}"]
        result = await client.result(started[0], timeout=20)
        assert result.ok
        assert result.output.endswith("Final answer: 42")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await nc.close()
        await platform.stop()


async def test_a_request_without_request_id_is_named_by_its_msg_id(
    engine: InProcessPlatform,
) -> None:
    body = msgspec.json.encode({"instruction": "What is 6 * 7?", "tenant": "acme"})
    subject = engine.settings.names.request("acme")
    await engine.client.js.publish(subject, body, headers={"Nats-Msg-Id": "from-header"})
    result = await engine.client.result("from-header", timeout=20)
    assert result.output.endswith("Final answer: 42")


async def _replays(platform: InProcessPlatform, wid: str) -> None:
    """``jetagent replay --verify``: every decision replays to the recorded events."""
    from jetagent.worker.registry import ToolRegistry

    registry = ToolRegistry(platform.client.js, platform.settings.names)
    await registry.start()
    await registry.stop()
    ctx = DecideContext(models=ModelCatalog.load().models, tools=registry.tools)
    report = await replay_workflow(platform.client.nc, platform.settings.names, wid, ctx)
    assert report.ok, report.mismatches
    assert report.groups >= 1


async def _requests_settled(js: Any, settings: Settings) -> bool:
    try:
        info = await js.consumer_info(settings.names.requests_stream, "orchestrator-requests")
    except NotFoundError:  # the orchestrator has not provisioned it yet
        return False
    return bool(info.ack_floor.stream_seq >= 1 and info.num_ack_pending == 0)


async def _started_workflows(nc: Any, settings: Settings) -> list[str]:
    names = settings.names
    reader = DirectGetter(nc, names.workflows_stream, timeout=5)
    await reader.open()
    try:
        records = await reader.scan(f"{names.workflow_root}.*.Started")
    finally:
        await reader.close()
    return [e.workflow_id for r in records for e in decode_events(r.data)]


async def test_a_kept_cancel_applied_at_the_start_leaves_no_timer_behind(
    engine: InProcessPlatform,
) -> None:
    """The timer that would have answered the kept cancel is removed once the cancel has
    applied (else every early cancel leaves a schedule in JA_TIMERS for the whole wait)."""
    client, names = engine.client, engine.settings.names
    await client.cancel("early-leaver", reason="before it began", by="ops")
    inputs = names.timer_schedule("early-leaver", "inputs")

    async def armed() -> bool:
        info = await client.js.stream_info(names.timers_stream, subjects_filter=inputs)
        return bool(info.state.subjects)

    await eventually(armed)
    await client.submit(request_id="early-leaver", **WAITS_FOR_APPROVAL)  # type: ignore[arg-type]
    result = await client.result("early-leaver", timeout=20)
    assert result.status is Status.CANCELLED

    async def nothing_armed() -> bool:
        return not await armed()

    await eventually(nothing_armed, timeout=10)
