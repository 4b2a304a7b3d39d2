"""Hostile and malformed input at the orchestrator's doors, sent as a rogue publisher would.

Every bad message gets a visible answer the sender (or an operator) can find: a
``RequestRejected`` under a subject the sender can compute, or a ``JA_DLQ`` entry with
the reason. None is retried as if it were transient, and the services keep serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.errors import RequestRejectedError
from jetagent.events import RequestRejected, StepScheduled, decode_events
from jetagent.jetstream import DirectGetter
from jetagent.testing import eventually
from tests.support.platform import InProcessPlatform

DEEP = 5000


async def dead_letters(client: Client, settings: Settings) -> list[dict[str, Any]]:
    """Every JA_DLQ entry so far, decoded."""
    names = settings.names
    reader = DirectGetter(client.nc, names.dlq_stream, timeout=5)
    await reader.open()
    try:
        records = await reader.scan(f"{names.prefix}.dlq.>")
    finally:
        await reader.close()
    return [json.loads(r.data) for r in records]


async def dead_letter_for(
    client: Client, settings: Settings, subject: str, *, timeout: float = 20.0
) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        for body in await dead_letters(client, settings):
            if body.get("subject") == subject:
                return body
        return None

    return await eventually(found, timeout=timeout)


async def redeliveries(client: Client, settings: Settings, stream: str, consumer: str) -> int:
    info = await client.js.consumer_info(stream, consumer)
    return int(info.num_redelivered)


async def drained(client: Client, stream: str, consumer: str) -> bool:
    info = await client.js.consumer_info(stream, consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# ------------------------------------------------------------------ item 4: nesting


async def test_a_deeply_nested_request_is_rejected_once(engine: InProcessPlatform) -> None:
    client, settings = engine.client, engine.settings
    names = settings.names
    body = (
        b'{"request_id": "deep-1", "tenant": "acme", "instruction": "hi", "metadata": '
        + nested(DEEP)
        + b"}"
    )
    await client.js.publish(names.request("acme"), body, headers={"Nats-Msg-Id": "deep-1"})
    with pytest.raises(RequestRejectedError) as rejected:
        await client.result("deep-1", timeout=20)
    assert any("nest" in r for r in rejected.value.reasons), rejected.value.reasons
    await eventually(lambda: drained(client, names.requests_stream, "orchestrator-requests"))
    # Answered on the first delivery: a permanent problem is never retried.
    assert await redeliveries(client, settings, names.requests_stream, "orchestrator-requests") == 0
    assert not await dead_letters(client, settings)


async def test_deep_cancels_signals_and_results_are_dead_lettered(
    engine: InProcessPlatform,
) -> None:
    client, settings = engine.client, engine.settings
    names = settings.names
    deep = b'{"workflow_id": "w1", "reason": ' + nested(DEEP) + b"}"
    subjects = [names.cancel("w1"), names.signal("w1", "approval"), f"{names.prefix}.step.x.w1.1"]
    for subject in subjects:
        await client.js.publish(subject, deep)
    for subject in subjects:
        body = await dead_letter_for(client, settings, subject)
        assert "nest" in body["reason"], body
        assert body["deliveries"] == 1
    # Services still serve.
    wid = await client.submit(instruction="What is 2 + 2?", tenant="acme")
    assert (await client.result(wid, timeout=30)).output.endswith("4")


# ------------------------------------------------------------------ item 5: schemas


@pytest.mark.parametrize(
    ("schema", "hint"),
    [
        ({"type": 5}, "type"),
        ({"type": "object", "properties": {"a": {"pattern": "("}}}, "pattern"),
        ({"$ref": "#/$defs/missing"}, "$ref"),
        ({"$ref": "https://example.com/remote.json"}, "$ref"),
    ],
)
async def test_an_invalid_output_schema_is_rejected_at_ingress(
    engine: InProcessPlatform, schema: dict[str, Any], hint: str
) -> None:
    client = engine.client
    wid = await client.submit(
        instruction="Answer in JSON", tenant="acme", output={"type": "json", "json_schema": schema}
    )
    with pytest.raises(RequestRejectedError) as rejected:
        await client.result(wid, timeout=20)
    reasons = " ".join(rejected.value.reasons)
    assert "output.json_schema" in reasons, reasons
    assert hint in reasons, reasons


# ------------------------------------------------------------------ item 6: bad ids


@pytest.mark.parametrize("bad_id", ["a b", "*", "x.y", ">", "", "é" * 70])
async def test_inputs_naming_an_impossible_workflow_id_are_dead_lettered(
    engine: InProcessPlatform, bad_id: str
) -> None:
    client, settings = engine.client, engine.settings
    names = settings.names
    p = names.prefix
    sends = {
        f"{p}.cancel.bad": {"type": "CancelRequested", "workflow_id": bad_id},
        f"{p}.signal.bad.approval": {"type": "SignalSent", "workflow_id": bad_id, "name": "x"},
        f"{p}.step.tools.bad.1": {
            "type": "StepResult",
            "workflow_id": bad_id,
            "step_id": "1",
            "capability": "tools",
            "tenant": "acme",
            "ok": True,
            "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:01Z",
        },
    }
    for subject, body in sends.items():
        await client.js.publish(subject, json.dumps(body).encode())
    for subject in sends:
        letter = await dead_letter_for(client, settings, subject)
        assert "workflow id" in letter["reason"], letter
        assert letter["deliveries"] == 1
    for stream, consumer in (
        (names.requests_stream, "orchestrator-requests"),
        (names.steps_stream, "orchestrator-steps"),
    ):
        await eventually(lambda s=stream, c=consumer: drained(client, s, c))
        assert await redeliveries(client, settings, stream, consumer) == 0


# ------------------------------------------------------------------ item 7: rejection ids


async def test_a_request_id_that_is_no_subject_token_is_rejected_where_the_sender_looks(
    engine: InProcessPlatform,
) -> None:
    # A sender in another language, with nothing but a NATS client and the README's rule.
    settings = engine.settings
    p = settings.names.prefix
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        for request_id in ["order 7/a.b*", "ünïcödé", "x" * 65]:
            # README "Rejections": rejected- + the first 32 hex digits of SHA-256(request_id).
            token = "rejected-" + hashlib.sha256(request_id.encode()).hexdigest()[:32]
            sub = await js.subscribe(f"{p}.wf.{token}.>", ordered_consumer=True)
            body = {"request_id": request_id, "tenant": "acme", "instruction": "hi"}
            await js.publish(
                f"{p}.request.acme",
                json.dumps(body).encode(),
                headers={"Nats-Msg-Id": request_id},
            )
            msg = await sub.next_msg(timeout=20)
            [event] = decode_events(msg.data)
            assert isinstance(event, RequestRejected)
            assert any("request_id" in r for r in event.reasons), event.reasons
            await sub.unsubscribe()
        # Unreadable body: the Nats-Msg-Id, by the same rule.
        msg_id = "not json either"
        token = "rejected-" + hashlib.sha256(msg_id.encode()).hexdigest()[:32]
        sub = await js.subscribe(f"{p}.wf.{token}.>", ordered_consumer=True)
        await js.publish(f"{p}.request.acme", b"\xff{", headers={"Nats-Msg-Id": msg_id})
        [event] = decode_events((await sub.next_msg(timeout=20)).data)
        assert isinstance(event, RequestRejected)
        await sub.unsubscribe()
    finally:
        await nc.close()


# ------------------------------------------------------------------ item 9: forged results


@pytest.fixture
async def orchestrator_only(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcessPlatform]:
    """An orchestrator and a tools worker; no reasoning worker until a test starts one."""
    import tests.support.platform as support

    # Only the tools worker at first: reasoning steps stay pending for the test to forge.
    every = support.specs_for_tests
    with monkeypatch.context() as patch:
        patch.setattr(
            support,
            "specs_for_tests",
            lambda catalog: [s for s in every(catalog) if s.name == "tools"],
        )
        platform = await InProcessPlatform(settings).start()
    try:
        yield platform
    finally:
        await platform.stop()


async def _pending_step(client: Client, wid: str) -> StepScheduled:
    async def scheduled() -> StepScheduled | None:
        for event in await client.events(wid):
            if isinstance(event, StepScheduled):
                return event
        return None

    return await eventually(scheduled, timeout=20)


async def _start_reasoning_worker(platform: InProcessPlatform) -> None:
    from jetagent.jetstream import connect
    from jetagent.models import ModelCatalog
    from jetagent.worker._runtime import Worker
    from tests.support.platform import specs_for_tests

    nc = await connect(platform.settings.nats_url, name="test-reasoning")
    platform._connections.append(nc)
    specs = [s for s in specs_for_tests(ModelCatalog.load()) if s.name != "tools"]
    worker = Worker(nc, platform.settings, specs)
    await worker.setup()
    platform._tasks.append(asyncio.create_task(worker.run(platform._stop)))


def _forged(step: StepScheduled, **changes: Any) -> dict[str, Any]:
    body = {
        "type": "StepResult",
        "workflow_id": step.workflow_id,
        "step_id": step.step_id,
        "capability": step.capability,
        "attempt": step.attempt,
        "tenant": step.tenant,
        "ok": True,
        "output": {"text": "FORGED ANSWER", "tool_calls": []},
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
    }
    body.update(changes)
    return body


async def test_a_forged_step_result_is_dead_lettered_and_the_real_one_counts(
    orchestrator_only: InProcessPlatform,
) -> None:
    from jetagent.orchestrator.replay import replay_workflow

    platform = orchestrator_only
    client, settings = platform.client, platform.settings
    p = settings.names.prefix
    wid = await client.submit(instruction="Say hello", tenant="acme")
    step = await _pending_step(client, wid)
    assert step.capability == "reasoning"
    # A rogue tools worker answers the reasoning step on the subjects it can write, and
    # sets the Msg-Id a real result would carry, to have the real one dropped as a dup.
    forgeries = {
        f"{p}.step.tools.{wid}.{step.step_id}": _forged(step),
        f"{p}.step.tools.{wid}.{step.step_id}x": _forged(step, capability="tools"),
    }
    for n, (subject, body) in enumerate(forgeries.items()):
        msg_id = f"{wid}.{step.step_id}" if n == 0 else f"forged-{n}"
        await client.js.publish(subject, json.dumps(body).encode(), headers={"Nats-Msg-Id": msg_id})
    for subject in forgeries:
        letter = await dead_letter_for(client, settings, subject)
        assert letter["workflow_id"] == wid
        assert "capability" in letter["reason"] or "step" in letter["reason"], letter
    # The real worker's answer is recorded and decides the outcome.
    await _start_reasoning_worker(platform)
    result = await client.result(wid, timeout=30)
    assert result.ok, result
    assert "FORGED" not in result.output, result
    report = await replay_workflow(client.nc, settings.names, wid, await _context(platform))
    assert report.ok, report.mismatches
    assert len(report.untrusted) == len(forgeries), report.untrusted


async def test_garbage_under_a_running_workflow_does_not_wedge_it(
    orchestrator_only: InProcessPlatform,
) -> None:
    platform = orchestrator_only
    client, settings = platform.client, platform.settings
    p = settings.names.prefix
    wid = await client.submit(instruction="Say hello", tenant="acme")
    await _pending_step(client, wid)
    # Anyone allowed to write the workflow stream (no auth, say) appends junk.
    await client.js.publish(f"{p}.wf.{wid}.Junk", b"\x00 not an event")
    await client.js.publish(f"{p}.wf.{wid}.Finalized", b"[]")
    await _start_reasoning_worker(platform)
    result = await client.result(wid, timeout=30)
    assert result.ok, result
    letters = [b for b in await dead_letters(client, settings) if b.get("workflow_id") == wid]
    assert {b["subject"] for b in letters} >= {f"{p}.wf.{wid}.Junk"}, letters


async def _context(platform: InProcessPlatform) -> Any:
    from tests.test_replay import _context as replay_context

    return await replay_context(platform)


async def test_replay_verify_flags_a_forged_result_that_was_folded(
    orchestrator_only: InProcessPlatform,
) -> None:
    # A history written before results were checked: a forged result was folded into a
    # StepCompleted. `replay --verify` must not call that history verified.
    from datetime import UTC, datetime

    from jetagent.events import Spend, StepCompleted
    from jetagent.jetstream import AggregateStream
    from jetagent.orchestrator.journal import Journal
    from jetagent.orchestrator.replay import replay_workflow

    platform = orchestrator_only
    client, settings = platform.client, platform.settings
    names = settings.names
    wid = await client.submit(instruction="Say hello", tenant="acme")
    step = await _pending_step(client, wid)
    forged_subject = f"{names.prefix}.step.tools.{wid}.{step.step_id}"
    ack = await client.js.publish(forged_subject, json.dumps(_forged(step)).encode())
    await dead_letter_for(client, settings, forged_subject)  # today's orchestrator refuses it
    aggregates = AggregateStream(client.nc, stream=names.workflows_stream, root=names.workflow_root)
    await aggregates.open()
    try:
        journal = Journal(client.js, aggregates, names, cache_size=10, snapshot_every=1000)
        loaded = await journal.load(wid)
        completed = StepCompleted(
            workflow_id=wid,
            at=datetime.now(UTC),
            step_id=step.step_id,
            capability="reasoning",
            output={"text": "FORGED ANSWER", "tool_calls": [], "rejected_calls": []},
            settlement=Spend(),
            result_seq=ack.seq,
        )
        await journal.append(
            wid, loaded, [completed], {"Ja-Causation": f"{names.steps_stream}:{ack.seq}"}
        )
    finally:
        await aggregates.close()
    report = await replay_workflow(client.nc, names, wid, await _context(platform))
    assert not report.ok
    assert any("capability" in m.detail for m in report.mismatches), report.mismatches


def test_a_trusted_result_with_unreadable_tool_calls_fails_its_step() -> None:
    # Today a worker's malformed output stopped every decision on the workflow (the
    # orchestrator raised on it, retried and dead-lettered it, and the workflow waited).
    from datetime import UTC, datetime

    from jetagent.events import StepFailed, StepResult
    from jetagent.models import ModelCatalog
    from jetagent.workflow import Begin, DecideContext, FoldResult, WorkflowState, decide, evolve

    ctx = DecideContext(models=ModelCatalog.load().models)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    begin = Begin(workflow_id="w", tenant="acme", request={"instruction": "Say hello"}, at=at)
    state = WorkflowState()
    for event in decide(state, begin, ctx):
        state = evolve(state, event)
    [step] = state.steps.values()
    for calls in ("not a list", [{"id": 1}], [None]):
        result = StepResult(
            workflow_id="w",
            step_id=step.step_id,
            capability=step.capability,
            tenant="acme",
            ok=True,
            output={"text": "", "tool_calls": calls},
            started_at=at,
            finished_at=at,
        )
        events = decide(state, FoldResult(result=result, result_seq=9, at=at), ctx)
        failed = events[0]
        assert isinstance(failed, StepFailed), events
        assert failed.error_type == "MalformedOutput"
        assert failed.retryable


def test_a_result_is_trusted_only_for_the_step_as_scheduled() -> None:
    from datetime import UTC, datetime

    import msgspec

    from jetagent.events import StepResult
    from jetagent.models import ModelCatalog
    from jetagent.result_check import result_problem
    from jetagent.workflow import Begin, DecideContext, WorkflowState, decide, evolve

    ctx = DecideContext(models=ModelCatalog.load().models)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    begin = Begin(workflow_id="w", tenant="acme", request={"instruction": "Say hello"}, at=at)
    state = WorkflowState()
    for event in decide(state, begin, ctx):
        state = evolve(state, event)
    [step] = state.steps.values()
    real = StepResult(
        workflow_id="w",
        step_id=step.step_id,
        capability=step.capability,
        attempt=step.attempt,
        tenant="acme",
        ok=True,
        started_at=at,
        finished_at=at,
    )
    subject = f"ja.step.{step.capability}.w.{step.step_id}"
    assert result_problem(subject, real, state, prefix="ja") is None
    wrong = {
        "attempt": msgspec.structs.replace(real, attempt=step.attempt + 1),
        "tool": msgspec.structs.replace(real, tool="calculator"),
        "capability": msgspec.structs.replace(real, capability="tools"),
        "no step": msgspec.structs.replace(real, step_id="99"),
        "no workflow": msgspec.structs.replace(real, workflow_id="other"),
    }
    for hint, forged in wrong.items():
        forged_subject = f"ja.step.{forged.capability}.{forged.workflow_id}.{forged.step_id}"
        problem = result_problem(forged_subject, forged, state, prefix="ja")
        assert problem is not None, hint
        assert hint.split()[-1] in problem, (hint, problem)
    # The body right, the subject another capability's (or the old layout): refused.
    assert result_problem(f"ja.step.tools.w.{step.step_id}", real, state, prefix="ja")
    assert result_problem(f"ja.step.w.{step.step_id}", real, state, prefix="ja")
