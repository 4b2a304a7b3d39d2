"""The workflow engine end to end on a real nats-server: loop, budgets, dedup, payloads."""

from __future__ import annotations

import json
from collections import Counter

import msgspec
import pytest

from jetagent import RequestRejectedError, Status, WorkflowRequest
from jetagent.events import (
    ApprovalRequested,
    Finalized,
    Started,
    StepCompleted,
    StepScheduled,
    Terminated,
    decode_event,
)
from jetagent.jetstream import DirectGetter
from jetagent.testing import eventually
from tests.support.platform import InProcessPlatform


async def test_multi_step_loop_with_parallel_tool_calls(engine: InProcessPlatform) -> None:
    client = engine.client
    wid = await client.submit(
        instruction="What is (17 * 23) + 4 and 2 ** 10? Then multiply the result by 2",
        tenant="acme",
    )
    result = await client.result(wid, timeout=20)
    assert result.status is Status.FINALIZED
    assert result.output.endswith("Final answer: 2048")
    events = await client.events(wid)
    scheduled = [e for e in events if isinstance(e, StepScheduled)]
    # reasoning → two calculator calls in parallel → reasoning → calculator → reasoning
    assert [(e.capability, e.tool) for e in scheduled] == [
        ("reasoning", None),
        ("tools", "calculator"),
        ("tools", "calculator"),
        ("reasoning", None),
        ("tools", "calculator"),
        ("reasoning", None),
    ]
    # Both calculator steps of turn 1 were scheduled before either completed.
    kinds = [type(e).__name__ for e in events]
    first_done = kinds.index("StepCompleted", kinds.index("StepScheduled", 2))
    assert kinds[2:4] == ["StepScheduled", "StepScheduled"] or first_done > 3
    assert result.tokens > 0
    assert result.cost_usd > 0


async def test_the_same_request_twice_starts_one_workflow(engine: InProcessPlatform) -> None:
    client = engine.client
    request = WorkflowRequest(instruction="What is 6 * 7?", tenant="acme")
    await client.submit(request)
    await client.submit(request)  # a retried publish: deduplicated by Nats-Msg-Id
    # Even past the dedup window (no Msg-Id at all), the id names one workflow only.
    subject = engine.settings.names.request("acme")
    await client.js.publish(subject, request.model_dump_json().encode())
    result = await client.result(request.request_id, timeout=20)
    assert result.output.endswith("Final answer: 42")
    await eventually(lambda: _processed_requests(engine, 2))
    events = await client.events(request.request_id)
    assert sum(isinstance(e, Started) for e in events) == 1
    assert sum(isinstance(e, Finalized) for e in events) == 1


async def _processed_requests(engine: InProcessPlatform, count: int) -> bool:
    info = await engine.client.js.consumer_info(
        engine.settings.names.requests_stream, "orchestrator-requests"
    )
    return info.ack_floor.stream_seq >= count and info.num_ack_pending == 0


async def test_token_budget_exhaustion_terminates_with_the_reason(
    engine: InProcessPlatform,
) -> None:
    wid = await engine.client.submit(
        instruction="Compute 1 + 1 then 2 + 2 then 3 + 3 then 4 + 4 then 5 + 5",
        tenant="acme",
        capability_limits={"token_cap": 700},
        allowed_tools=["calculator"],
    )
    result = await engine.client.result(wid, timeout=20)
    assert result.status is Status.TERMINATED
    assert result.reason == "token_cap"
    assert result.tokens <= 700
    assert "Stage" in result.output  # the partial output so far


async def test_parallel_steps_never_overshoot_the_token_budget(engine: InProcessPlatform) -> None:
    # Eight parallel `burn` calls, each reserving 100 tokens, race for a budget with
    # room for only a few of them at a time.
    calls = " and ".join(f'call burn {{"tokens": {90 + i}}}' for i in range(8))
    wid = await engine.client.submit(
        instruction=calls,
        tenant="acme",
        allowed_tools=["burn"],
        capability_limits={"token_cap": 900},
        model_preferences={"max_output_tokens": 200},
    )
    result = await engine.client.result(wid, timeout=30)
    events = await engine.client.events(wid)
    held = spent = 0
    for event in events:
        if isinstance(event, StepScheduled):
            held += event.reservation.tokens
        elif isinstance(event, StepCompleted):
            step = next(
                e for e in events if isinstance(e, StepScheduled) and e.step_id == event.step_id
            )
            held -= step.reservation.tokens
            spent += event.settlement.tokens
        # At every point, what is spent plus what is reserved fits the cap.
        assert spent + held <= 900
    burns = [e for e in events if isinstance(e, StepScheduled) and e.tool == "burn"]
    assert 0 < len(burns) < 8
    assert result.status is Status.TERMINATED
    assert result.reason == "token_cap"
    assert result.tokens == spent <= 900


async def test_a_5_mb_tool_output_travels_by_reference(engine: InProcessPlatform) -> None:
    wid = await engine.client.submit(
        instruction='call big {"size": 5242880}',
        tenant="acme",
        allowed_tools=["big"],
        capability_limits={"token_cap": 5_000_000},
    )
    result = await engine.client.result(wid, timeout=60)
    assert result.status is Status.FINALIZED
    names = engine.settings.names
    # No message in any stream comes near the server's max_payload (1 MiB).
    for stream in (names.workflows_stream, names.steps_stream):
        reader = DirectGetter(engine.client.nc, stream, timeout=5)
        await reader.open()
        records = await reader.scan(f"{names.prefix}.>")
        await reader.close()
        assert all(len(r.data) < 256 * 1024 for r in records)
    completed = [e for e in await engine.client.events(wid) if isinstance(e, StepCompleted)]
    tool_step = next(e for e in completed if e.tool == "big")
    assert str(tool_step.output["content"]).startswith("ja-ref:")


async def test_malformed_requests_are_rejected_with_every_reason(
    engine: InProcessPlatform,
) -> None:
    client = engine.client
    names = engine.settings.names

    async def send(body: bytes, msg_id: str, tenant: str = "acme") -> list[str]:
        await client.js.publish(names.request(tenant), body, headers={"Nats-Msg-Id": msg_id})
        with pytest.raises(RequestRejectedError) as info:
            await client.result(msg_id, timeout=20)
        return info.value.reasons

    reasons = await send(b"{not json", "bad-json")
    assert "not valid JSON" in reasons[0]

    body = {"request_id": "bad-fields", "tenant": "acme", "instruction": "x", "colour": "red"}
    body["capability_limits"] = {"token_cap": 1, "max_iterations": 0}
    reasons = await send(json.dumps(body).encode(), "bad-fields")
    assert "unknown field 'colour'" in reasons
    assert any(r.startswith("capability_limits.token_cap") for r in reasons)
    assert any(r.startswith("capability_limits.max_iterations") for r in reasons)

    body = {"request_id": "no-instruction", "tenant": "acme"}
    assert "missing field 'instruction'" in await send(json.dumps(body).encode(), "no-instruction")

    body = {
        "request_id": "unknown-things",
        "tenant": "acme",
        "instruction": "x",
        "allowed_tools": ["rm_rf"],
        "model_preferences": {"models": ["gpt-9"]},
    }
    reasons = await send(json.dumps(body).encode(), "unknown-things")
    assert any("unknown tool 'rm_rf'" in r for r in reasons)
    assert any("unknown model 'gpt-9'" in r for r in reasons)

    body = {"request_id": "oversize", "tenant": "acme", "instruction": "x" * 300_000}
    reasons = await send(json.dumps(body).encode(), "oversize")
    assert "limit is" in reasons[0]

    body = {"request_id": "wrong-tenant", "tenant": "other", "instruction": "x"}
    reasons = await send(json.dumps(body).encode(), "wrong-tenant")
    assert "does not match the subject's tenant 'acme'" in reasons[0]

    # A Nats-Msg-Id that is not the request_id: rejected under the request's id.
    body = {"request_id": "mismatch", "tenant": "acme", "instruction": "x"}
    await client.js.publish(
        names.request("acme"), json.dumps(body).encode(), headers={"Nats-Msg-Id": "another"}
    )
    with pytest.raises(RequestRejectedError, match="differs from request_id"):
        await client.result("mismatch", timeout=20)
    # The orchestrator kept serving throughout.
    wid = await client.submit(instruction="What is 1 + 2?", tenant="acme")
    assert (await client.result(wid, timeout=20)).output.endswith("3")


async def test_unknown_tenant_is_rejected(settings, nats_url: str) -> None:  # type: ignore[no-untyped-def]
    strict = settings.model_copy(update={"tenants": "acme"})
    platform = await InProcessPlatform(strict).start()
    try:
        wid = await platform.client.submit(instruction="hi", tenant="mallory")
        with pytest.raises(RequestRejectedError, match="unknown tenant 'mallory'"):
            await platform.client.result(wid, timeout=20)
    finally:
        await platform.stop()


async def test_cancel_ends_a_waiting_workflow(engine: InProcessPlatform) -> None:
    wid = await engine.client.submit(
        instruction='call dangerous {"target": "prod"}', tenant="acme", allowed_tools=["dangerous"]
    )

    async def waiting() -> bool:
        return any(isinstance(e, ApprovalRequested) for e in await engine.client.events(wid))

    await eventually(waiting)
    await engine.client.cancel(wid, reason="changed my mind", by="test")
    result = await engine.client.result(wid, timeout=20)
    assert result.status is Status.CANCELLED


async def test_approval_flow(engine: InProcessPlatform) -> None:
    client = engine.client
    wid = await client.submit(
        instruction='call dangerous {"target": "staging"}',
        tenant="acme",
        allowed_tools=["dangerous"],
    )

    async def approval() -> ApprovalRequested | None:
        events = await client.events(wid)
        return next((e for e in events if isinstance(e, ApprovalRequested)), None)

    request = await eventually(approval)
    assert (await client.session(wid)).status is Status.WAITING_APPROVAL
    await client.approve(wid, request.step_id, by="ops")
    result = await client.result(wid, timeout=20)
    assert result.output.endswith("Final answer: deleted staging")

    denied = await client.submit(
        instruction='call dangerous {"target": "prod"}', tenant="acme", allowed_tools=["dangerous"]
    )
    engine_wid = denied

    async def approval2() -> ApprovalRequested | None:
        events = await client.events(engine_wid)
        return next((e for e in events if isinstance(e, ApprovalRequested)), None)

    request = await eventually(approval2)
    await client.approve(denied, request.step_id, approved=False, comment="not prod", by="ops")
    result = await client.result(denied, timeout=20)
    assert "denied by ops: not prod" in result.output


async def test_steps_and_results_are_one_to_one(engine: InProcessPlatform) -> None:
    wids = [
        await engine.client.submit(instruction=f"What is {i} * 3? Then add 1 to it", tenant="acme")
        for i in range(10)
    ]
    for wid in wids:
        assert (await engine.client.result(wid, timeout=30)).ok
    names = engine.settings.names
    reader = DirectGetter(engine.client.nc, names.steps_stream, timeout=5)
    await reader.open()
    results = await reader.scan(f"{names.prefix}.step.>")
    await reader.close()
    per_step = Counter(r.subject for r in results)
    assert set(per_step.values()) == {1}
    scheduled = 0
    for wid in wids:
        scheduled += sum(isinstance(e, StepScheduled) for e in await engine.client.events(wid))
    assert scheduled == len(results)


def test_an_older_event_shape_is_upcast() -> None:
    v1 = {
        "type": "StepScheduled",
        "v": 1,
        "workflow_id": "w",
        "at": "2026-01-01T00:00:00Z",
        "step_id": "1",
        "capability": "tools",
        "tool": "calculator",
        "input": {},
        "tenant": "t",
    }
    event = decode_event(json.dumps(v1).encode())
    assert isinstance(event, StepScheduled)
    assert event.v == 2
    assert event.reservation.tokens == 0
    assert event.iteration == 1


def test_terminated_and_finalized_are_final_statuses() -> None:
    assert Status.FINALIZED.is_final
    assert Status.TERMINATED.is_final
    assert not Status.PROCESSING.is_final
    assert msgspec.json.decode(b'"terminated"', type=Status) is Status.TERMINATED
    assert Terminated.__struct_config__.tag == "Terminated"


async def test_garbage_inputs_go_to_the_dead_letter_stream(engine: InProcessPlatform) -> None:
    client = engine.client
    names = engine.settings.names
    # An undecodable step result and cancel, and a step for a worker that is not JSON.
    await client.js.publish(names.step_result("tools", "nope", "1"), b"\x00not json")
    await client.js.publish(names.cancel("nope"), b"[1, 2")
    await client.js.publish(f"{names.workflow_root}.x.StepScheduled.tools.calculator", b"{}")

    async def dead_letters() -> int:
        info = await client.js.stream_info(names.dlq_stream)
        return int(info.state.messages) if info.state.messages >= 3 else 0

    await eventually(dead_letters, timeout=20)
    reader = DirectGetter(client.nc, names.dlq_stream, timeout=5)
    await reader.open()
    records = await reader.scan(f"{names.prefix}.dlq.>")
    await reader.close()
    bodies = [json.loads(r.data) for r in records]
    assert {b["source"] for b in bodies} >= {"orchestrator", "tools"}
    assert all(b["error"] for b in bodies)
    # Every service kept serving.
    wid = await client.submit(instruction="What is 2 + 2?", tenant="acme")
    assert (await client.result(wid, timeout=20)).output.endswith("4")


def test_hostile_tool_names_never_reach_a_subject() -> None:
    # A model asking for a tool whose name would inject subject tokens gets a tool error
    # it can read, and no step is scheduled on a subject built from that name.
    from datetime import UTC, datetime

    from jetagent.events import StepResult
    from jetagent.llm import ToolSpec
    from jetagent.models import ModelCatalog
    from jetagent.workflow import (
        Begin,
        DecideContext,
        FoldResult,
        ToolInfo,
        WorkflowState,
        decide,
        fold,
    )

    at = datetime(2026, 1, 1, tzinfo=UTC)
    ctx = DecideContext(
        models=ModelCatalog.load().models,
        tools={"calculator": ToolInfo(spec=ToolSpec(name="calculator", description="math"))},
    )
    request = WorkflowRequest(request_id="w", tenant="t", instruction="x").model_dump(mode="json")
    state = fold(
        WorkflowState(),
        decide(WorkflowState(), Begin(workflow_id="w", tenant="t", request=request, at=at), ctx),
    )
    hostile = {"id": "c1", "name": "calc.>.x", "arguments": {"expression": "1+1"}}
    result = StepResult(
        workflow_id="w", step_id="1", capability="reasoning", tenant="t", ok=True,
        output={"text": "", "tool_calls": [hostile]}, started_at=at, finished_at=at,
    )  # fmt: skip
    events = decide(state, FoldResult(result=result, result_seq=1, at=at), ctx)
    completed = events[0]
    assert isinstance(completed, StepCompleted)
    assert completed.output["rejected_calls"][0]["tool"] == "calc.>.x"
    assert "unknown tool" in completed.output["rejected_calls"][0]["error"]
    scheduled = [e for e in events if isinstance(e, StepScheduled)]
    assert [e.capability for e in scheduled] == ["reasoning"]  # the model sees the error
    tool_messages = fold(state, events).messages[-1]
    assert tool_messages.role == "tool"
    assert "unknown tool 'calc.>.x'" in tool_messages.content
