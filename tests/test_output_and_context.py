"""The final answer's format (JSON Schema, one repair) and context-window compaction."""

from __future__ import annotations

import json

from jetagent import Status
from jetagent.config import Settings
from jetagent.events import StepScheduled
from jetagent.models import ModelCatalog
from tests.support.platform import InProcessPlatform

CALC = ["calculator"]


async def test_a_json_answer_that_satisfies_the_schema(engine: InProcessPlatform) -> None:
    schema = {
        "type": "object",
        "required": ["answer"],
        "properties": {"answer": {"type": "number"}},
    }
    wid = await engine.client.submit(
        instruction="What is 6 * 7?",
        tenant="acme",
        allowed_tools=CALC,
        output={"type": "json", "json_schema": schema},
    )
    result = await engine.client.result(wid, timeout=20)
    assert result.status is Status.FINALIZED
    assert json.loads(result.output)["answer"] == 42


async def test_an_invalid_json_answer_is_repaired_once(engine: InProcessPlatform) -> None:
    schema = {"type": "object", "required": ["answer", "total"]}
    wid = await engine.client.submit(
        instruction="What is 6 * 7?",
        tenant="acme",
        allowed_tools=CALC,
        output={"type": "json", "json_schema": schema},
    )
    result = await engine.client.result(wid, timeout=20)
    assert result.status is Status.FINALIZED
    assert json.loads(result.output)["total"] == 42
    reasoning = [
        e
        for e in await engine.client.events(wid)
        if isinstance(e, StepScheduled) and e.capability == "reasoning"
    ]
    # reasoning → calculator → reasoning (invalid answer) → reasoning (repaired)
    assert len(reasoning) == 3
    assert (
        "not valid JSON for the requested schema" in reasoning[-1].input["messages"][-1]["content"]
    )


async def test_an_answer_still_invalid_after_its_repair_ends_the_workflow(
    engine: InProcessPlatform,
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    wid = await engine.client.submit(
        instruction="What is 6 * 7?",
        tenant="acme",
        allowed_tools=CALC,
        output={"type": "json", "json_schema": schema},
    )
    result = await engine.client.result(wid, timeout=20)
    assert result.status is Status.TERMINATED
    assert result.reason == "invalid_output"
    assert "is not of type 'string'" in result.detail


async def test_older_turns_are_summarised_near_the_context_window(settings: Settings) -> None:
    # An offline model with a tiny window: the conversation outgrows it after a few turns.
    text = (
        '[models.offline-tiny]\nprovider = "offline"\ncontext_window = 400\n'
        "max_output_tokens = 64\ninput_per_mtok = 1\noutput_per_mtok = 1\n"
    )
    catalog = ModelCatalog.parse(text, source="test")
    platform = await InProcessPlatform(settings, catalog=catalog).start()
    try:
        wid = await platform.client.submit(
            instruction="Compute 1 + 1 then 2 + 2 then 3 + 3 then 4 + 4 then 5 + 5 then 6 + 6",
            tenant="acme",
            allowed_tools=CALC,
            model_preferences={"models": ["offline-tiny"], "max_output_tokens": 64},
            capability_limits={"token_cap": 100_000},
        )
        result = await platform.client.result(wid, timeout=30)
        assert result.status is Status.FINALIZED, result
        # Every stage's result survived the compactions.
        assert "1 + 1 = 2" in result.output
        assert result.output.endswith("Final answer: 12")
        compactions = [
            e
            for e in await platform.client.events(wid)
            if isinstance(e, StepScheduled) and e.input.get("mode") == "compact"
        ]
        assert compactions
    finally:
        await platform.stop()
