"""Forged step results are not projected: their usage and cost count nowhere.

The orchestrator trusts a ``StepResult`` only when it answers a step as scheduled
(``jetagent.result_check``). The projections apply the same rule where they can check
it: the subject must name the body's capability, workflow and step, and the step must
have been scheduled for that capability, tool and attempt. Anything else is skipped,
counted (``jetagent_projection_poison_messages_total``) and dead-lettered once as
``untrusted``; a rebuild reaches the same views and totals.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec

from jetagent.config import Settings
from jetagent.contract import Status
from jetagent.dead_letter import DeadLetter
from jetagent.events import CallRecord, StepResult, encode
from jetagent.jetstream import connect
from jetagent.llm import Usage
from jetagent.sessions import SessionView, StepView
from jetagent.testing import eventually
from projections.service import ProjectionService
from projections.trust import Verdict, judge_scheduled
from tests.support.platform import InProcessPlatform

MILLION = 10**6


def _forged(workflow_id: str, step_id: str, capability: str, tool: str | None) -> StepResult:
    now = datetime.now(UTC)
    call = CallRecord(
        model="offline-planner",
        provider="offline",
        outcome="ok",
        usage=Usage(input_tokens=MILLION, output_tokens=MILLION),
    )
    return StepResult(
        workflow_id=workflow_id,
        step_id=step_id,
        capability=capability,
        tool=tool,
        tenant="acme",
        ok=True,
        calls=[call],
        started_at=now,
        finished_at=now,
    )


def _tokens(service: ProjectionService) -> int:
    return sum(service.metrics.tokens.values())


async def test_forged_step_results_are_not_projected(settings: Settings) -> None:
    names = settings.names
    platform = await InProcessPlatform(settings).start()
    nc = await connect(settings.nats_url, name="test-projection-trust")
    js = nc.jetstream()
    stop = asyncio.Event()
    live = ProjectionService(nc, settings)
    task = asyncio.create_task(live.run(stop))
    try:
        workflow_id = await platform.client.submit(
            instruction="What is 6 * 7? Then add 1 to it", tenant="acme"
        )
        await platform.client.result(workflow_id, timeout=30)

        async def projected() -> bool:
            assert not task.done(), task.exception()
            view = live.views.get(workflow_id)
            return view is not None and view.status.value == "finalized" and view.tokens > 0

        await eventually(projected, timeout=30)
        honest = live.views[workflow_id]
        real_tokens = honest.tokens
        assert real_tokens < MILLION
        tools_step = next(s for s in honest.steps if s.capability == "tools")
        reasoning_step = next(s for s in honest.steps if s.capability == "reasoning")
        before = _tokens(live)
        poison_before = sum(live.metrics.poison.values())

        forged = [
            # The body says tools; it was written on the reasoning capability's subject.
            (
                names.step_result("reasoning", workflow_id, tools_step.step_id),
                _forged(workflow_id, tools_step.step_id, "tools", tools_step.tool),
            ),
            # A step that was never scheduled, on a subject that matches its body.
            (
                names.step_result("reasoning", workflow_id, "s99"),
                _forged(workflow_id, "s99", "reasoning", None),
            ),
            # A scheduled step, answered as another capability than it was scheduled for.
            (
                names.step_result("tools", workflow_id, reasoning_step.step_id),
                _forged(workflow_id, reasoning_step.step_id, "tools", "calculator"),
            ),
        ]
        for subject, result in forged:
            await js.publish(subject, encode(result))

        async def counted() -> bool:
            assert not task.done(), task.exception()
            return sum(live.metrics.poison.values()) - poison_before == len(forged)

        await eventually(counted, timeout=30)
        assert _tokens(live) == before
        view = live.views[workflow_id]
        assert view.tokens == real_tokens
        assert all(s.step_id != "s99" for s in view.steps)
        assert live.metrics.poison.get(names.steps_stream, 0) == len(forged)

        async def dead_lettered() -> list[DeadLetter]:
            info = await js.stream_info(names.dlq_stream)
            letters = []
            for seq in range(1, info.state.last_seq + 1):
                msg = await js.get_msg(names.dlq_stream, seq)
                letter = msgspec.json.decode(msg.data or b"{}", type=DeadLetter)
                if letter.source == "projections":
                    letters.append(letter)
            return letters

        async def all_lettered() -> bool:
            return len(await dead_lettered()) >= len(forged)

        await eventually(all_lettered, timeout=30)
        letters = await dead_lettered()
        assert len(letters) == len(forged)
        assert {letter.kind for letter in letters} == {"untrusted"}
        assert any("capability 'tools'" in letter.reason for letter in letters)
        assert any("s99" in letter.reason for letter in letters)
    finally:
        stop.set()
        await task
    live_totals = live.metrics.totals()
    live_view = msgspec.to_builtins(live.views[workflow_id])
    dlq_before = (await js.stream_info(names.dlq_stream)).state.messages

    rebuilt = ProjectionService(nc, settings)
    await rebuilt.rebuild()
    assert rebuilt.metrics.totals() == live_totals
    assert msgspec.to_builtins(rebuilt.views[workflow_id]) == live_view
    assert _tokens(rebuilt) < MILLION
    assert (await js.stream_info(names.dlq_stream)).state.messages == dlq_before
    await nc.close()
    await platform.stop()


def _view(*, final: bool, attempt: int = 1) -> SessionView:
    view = SessionView(workflow_id="w1")
    scheduled = StepView(step_id="2", capability="tools", tool="calculator", attempt=attempt)
    view.steps.append(scheduled)
    view.status = Status.FINALIZED if final else Status.PROCESSING
    return view


def test_a_result_waits_for_its_schedule_and_is_untrusted_if_the_workflow_ends_first() -> None:
    early = _forged("w1", "3", "tools", "calculator")
    assert judge_scheduled(_view(final=False), early)[0] is Verdict.WAIT
    verdict, reason = judge_scheduled(_view(final=True), early)
    assert verdict is Verdict.UNTRUSTED
    assert "ended without scheduling step '3'" in reason
    # An attempt not scheduled yet waits too; a late answer of an earlier one counts.
    second = msgspec.structs.replace(_forged("w1", "2", "tools", "calculator"), attempt=2)
    assert judge_scheduled(_view(final=False), second)[0] is Verdict.WAIT
    assert judge_scheduled(_view(final=True), second)[0] is Verdict.UNTRUSTED
    first = _forged("w1", "2", "tools", "calculator")
    assert judge_scheduled(_view(final=False, attempt=2), first)[0] is Verdict.TRUSTED
    # Another tool than the one scheduled is refused at once.
    other = _forged("w1", "2", "tools", "python")
    verdict, reason = judge_scheduled(_view(final=False), other)
    assert verdict is Verdict.UNTRUSTED
    assert "scheduled for tool 'calculator'" in reason
