"""Every model call is recorded against its step, the moment it completes: the gateway
reports each attempt (answered, failed, rate limited, a cancelled hedge) through its
``on_call`` hook, the reasoning capability journals it with ``StepContext.record_call``,
and a reasoning worker killed between two calls of one step loses none of them — the
run that writes the result carries both runs' calls, each once."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from pathlib import Path

import msgspec
import pytest
from nats.errors import Error as NatsError

from capabilities.reasoning import Attempt, HttpSettings, ModelGateway
from jetagent.client import Client
from jetagent.config import Settings
from jetagent.events import CallRecord
from jetagent.jetstream import DirectGetter
from jetagent.llm import Message
from jetagent.models import ModelCatalog
from jetagent.testing import eventually
from jetagent.worker.calls import JournalEntry
from projections.service import ProjectionService
from tests.fakes.llm_servers import FakeOpenAI, hang, model_for, openai_completion, openai_error
from tests.support.checks import assert_no_decision_recorded_twice, assert_one_result_per_step
from tests.support.platform import InProcessPlatform, service_processes

KEY_ENV = "JA_TEST_RECORDED_KEY"
HI = [Message(role="user", content="hi")]
USAGE_30 = {"prompt_tokens": 30, "completion_tokens": 0}


@pytest.fixture
def openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv(KEY_ENV, "sk-recorded-test-key")
    with FakeOpenAI() as server:
        yield server


# -- the gateway reports every attempt as it completes --------------------------------


async def test_the_gateway_reports_every_attempt_as_it_completes(openai: FakeOpenAI) -> None:
    # A hung primary, a hedge that answers: both calls are reported, the loser too.
    openai.script(hang(), openai_completion("hedged"))
    model = model_for(openai, "gpt-local", api_key_env=KEY_ENV, hedge={"delay_s": 0.2})
    catalog = ModelCatalog(models={model.name: model}, source="test")
    reported: list[Attempt] = []

    async def on_call(attempt: Attempt) -> None:
        reported.append(attempt)

    async with ModelGateway(catalog, http_settings=HttpSettings(trust_env=False)) as gateway:
        result = await gateway.call(
            models=["gpt-local"],
            messages=HI,
            tools=[],
            max_tokens=50,
            remaining_tokens=None,
            remaining_usd=None,
            on_call=on_call,
        )
    assert result.completion.text == "hedged"
    assert len(openai.requests) == 2
    # Each attempt exactly once, the very objects of the result.
    assert sorted(map(id, reported)) == sorted(map(id, result.attempts))
    assert {(a.outcome, a.hedge) for a in reported} == {("ok", True), ("cancelled", False)}


# -- in a running platform: each call is in the journal and in the result, once -------


async def test_reasoning_and_summarize_journal_each_call_as_it_settles(
    settings: Settings, openai: FakeOpenAI
) -> None:
    # The reasoning step is rate limited once (billed) before it is answered; the
    # summarize step is answered at once.
    openai.script(
        openai_error(
            429,
            "Rate limit reached for tokens",
            type="tokens",
            code="rate_limit_exceeded",
            headers={"retry-after-ms": "100"},
            usage={"prompt_tokens": 30, "completion_tokens": 0},
        ),
        openai_completion("Oslo."),
        openai_completion("You asked for the capital of Norway: Oslo."),
    )
    model = model_for(openai, "gpt-billed", api_key_env=KEY_ENV)
    base = ModelCatalog.load()
    catalog = ModelCatalog(models={**base.models, model.name: model}, source="test")
    platform = await InProcessPlatform(settings, catalog=catalog).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction="What is the capital of Norway?",
            tenant="acme",
            model_preferences={"models": ["gpt-billed"]},
            output={"summarize": True},
        )
        result = await client.result(wid, timeout=30)
        assert result.ok, result
        steps = {r.capability: r for r in await client.step_results(wid)}
        assert set(steps) == {"reasoning", "summarize"}
        assert [c.outcome for c in steps["reasoning"].calls] == ["rate_limited", "ok"]
        assert [c.outcome for c in steps["summarize"].calls] == ["ok"]
        recorded = [c for r in steps.values() for c in r.calls]
        assert len(recorded) == len(openai.requests) == 3  # each call counted once
        # Each call was journaled by the run that made it, as it settled.
        for step in steps.values():
            journaled = await _journaled(client, settings, wid, step.step_id)
            assert journaled == [(1, c) for c in step.calls], journaled
    finally:
        await platform.stop()


async def test_a_billed_failure_retried_by_the_worker_is_counted_once(
    settings: Settings, openai: FakeOpenAI
) -> None:
    # A 500 that was billed fails the run (a transient error: the worker runs the step
    # again later); the next run is answered. The billed call was journaled as it
    # settled and must be neither lost nor counted again from the error.
    openai.script(
        openai_error(500, "The server had an error", type="server_error", usage=USAGE_30),
        openai_completion("Oslo."),
    )
    model = model_for(openai, "gpt-billed", api_key_env=KEY_ENV)
    base = ModelCatalog.load()
    catalog = ModelCatalog(models={**base.models, model.name: model}, source="test")
    config = settings.model_copy(update={"step_retry_base_s": 0.2})
    platform = await InProcessPlatform(config, catalog=catalog).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction="What is the capital of Norway?",
            tenant="acme",
            model_preferences={"models": ["gpt-billed"]},
        )
        result = await client.result(wid, timeout=30)
        assert result.output == "Oslo.", result
        [step] = await client.step_results(wid)
        assert step.deliveries == 2
        assert step.interrupted_runs == 0  # the first run ended, and said so
        assert [(c.outcome, c.usage is not None) for c in step.calls] == [
            ("failed", True),
            ("ok", True),
        ]
        assert len(step.calls) == len(openai.requests) == 2
    finally:
        await platform.stop()


async def _journaled(
    client: Client, settings: Settings, wid: str, step_id: str
) -> list[tuple[int, CallRecord]]:
    """(delivery, call) of each call in a step's journal."""
    reader = DirectGetter(client.nc, settings.names.calls_stream, timeout=5)
    await reader.open()
    try:
        records = await reader.scan(settings.names.step_calls(wid, step_id, "*"))
    finally:
        await reader.close()
    entries = [msgspec.json.decode(r.data, type=JournalEntry) for r in records]
    return [(e.delivery, e.call) for e in entries if e.call is not None]


# -- end to end: a reasoning worker killed between two calls of one step --------------


@pytest.mark.timeout(180)
async def test_a_reasoning_worker_killed_between_calls_loses_no_call(
    settings: Settings, openai: FakeOpenAI, tmp_path: Path
) -> None:
    # The first call is answered 429 with the tokens it was billed and a long
    # retry-after: the gateway waits inside the step, holding a completed, billed call
    # that is in no result yet. The worker dies there; another replica runs the step.
    openai.script(
        openai_error(
            429,
            "Rate limit reached for tokens",
            type="tokens",
            code="rate_limit_exceeded",
            headers={"retry-after-ms": "60000"},
            usage={"prompt_tokens": 1000, "completion_tokens": 0},
        ),
        openai_completion("Oslo.", prompt_tokens=2000, completion_tokens=500),
    )
    catalog = tmp_path / "models.toml"
    shipped = resources.files("jetagent").joinpath("models.toml").read_text()
    catalog.write_text(
        shipped
        + f"""
[models.gpt-billed]
provider = "openai"
base_url = "{openai.base_url}"
api_key_env = "{KEY_ENV}"
context_window = 8192
max_output_tokens = 512
input_per_mtok = 1
output_per_mtok = 2
typical_latency_s = 5.0

[models.gpt-billed.retry]
max_attempts = 5
max_wait_s = 120
max_total_s = 300
"""
    )
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={
            "JETAGENT_MODELS": str(catalog),
            "JETAGENT_STEP_ACK_WAIT_S": "2",
            "JETAGENT_SHUTDOWN_GRACE_S": "1",
        },
    )
    procs.start("orchestrator", "orchestrator")
    procs.start("reasoning-a", "worker", "reasoning")
    procs.start("reasoning-b", "worker", "reasoning")
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        # Both replicas pull (so either may take the step, and the other take it over).
        await eventually(lambda: _pulling(client, settings, "cap-reasoning", 2), timeout=60)
        wid = await client.submit(
            instruction="What is the capital of Norway?",
            tenant="acme",
            model_preferences={"models": ["gpt-billed"]},
        )

        async def waiting_out_the_429() -> str | None:
            # The gateway logs the wait once the 429 is settled (and reported).
            for name in ("reasoning-a", "reasoning-b"):
                if "gpt-billed rate limited (attempt 1 of 5)" in procs.log(name):
                    return name
            return None

        holder = await eventually(waiting_out_the_429, timeout=60)
        assert len(openai.requests) == 1
        procs.kill(holder)  # SIGKILL: the billed 429 is in no result yet

        result = await client.result(wid, timeout=90)
        assert result.ok, procs.log("orchestrator")
        assert result.output == "Oslo."
        assert await assert_one_result_per_step(client, settings, [wid]) == 1
        await assert_no_decision_recorded_twice(client, settings, wid)

        [step] = await client.step_results(wid)
        assert step.deliveries == 2
        assert step.interrupted_runs == 1
        # Every request the provider received is a call of the step, each once.
        assert len(step.calls) == len(openai.requests) == 2, step.calls
        assert [(c.model, c.outcome) for c in step.calls] == [
            ("gpt-billed", "rate_limited"),
            ("gpt-billed", "ok"),
        ]
        assert step.spend().tokens == 1000 + 2000 + 500
        assert step.spend().usd == Decimal("0.004")  # 1000 + 2000 in at $1, 500 out at $2

        # The cost metrics, rebuilt from the events, count both runs' calls.
        projections = ProjectionService(client.nc, settings)
        await projections.rebuild()
        metrics = projections.metrics
        assert sum(v for k, v in metrics.tokens.items() if "gpt-billed" in k) == 3500
        cost = sum(v for k, v in metrics.cost_usd.items() if "gpt-billed" in k)
        assert cost == Decimal("0.004")
        assert metrics.repeated_runs.get("reasoning") == 1
    finally:
        await client.close()
        procs.stop_all()


async def _pulling(client: Client, settings: Settings, consumer: str, count: int) -> bool:
    try:
        info = await client.js.consumer_info(settings.names.workflows_stream, consumer)
    except NatsError:
        return False  # not provisioned yet
    return info.num_waiting >= count
