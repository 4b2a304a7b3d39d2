"""Tokens streamed live while a reasoning step runs, outside the record: through the
platform to ``Client.stream`` and the gateway's SSE, winner-only under hedging, and a
stream cut mid-way never changes what is recorded."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from capabilities.reasoning import HttpSettings, ModelGateway
from capabilities.reasoning._streaming import StreamGate
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.events import StepCompleted
from jetagent.gateway import GatewayServer, GatewaySettings
from jetagent.llm import Message, Usage
from jetagent.models import ModelCatalog
from jetagent.testing import eventually
from jetagent.token_stream import TokenDelta
from tests.fakes.clock import ManualClock
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    anthropic_message,
    model_for,
    openai_completion,
)
from tests.support.gateway import TOKEN_SETTING, auth, sse_events
from tests.support.platform import InProcessPlatform

ROOT = Path(__file__).resolve().parents[1]

ANSWER = "Oslo is the capital of Norway and its largest city by far"


def shown(deltas: list[TokenDelta]) -> str:
    """What a subscriber displays after applying every delta (restart clears)."""
    text = ""
    for delta in deltas:
        text = "" if delta.restart else text + delta.text
    return text


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def platform(settings: Settings, openai: FakeOpenAI) -> AsyncIterator[InProcessPlatform]:
    model = model_for(openai, "gpt-stream", typical_latency_s=30.0)
    base = ModelCatalog.load()
    catalog = ModelCatalog(models={**base.models, model.name: model}, source="test")
    running = await InProcessPlatform(settings, catalog=catalog).start()
    try:
        yield running
    finally:
        await running.stop()


async def _collect(stream: AsyncIterator[TokenDelta]) -> list[TokenDelta]:
    return [delta async for delta in stream]


async def test_client_stream_shows_the_answer_and_the_record_is_the_plain_one(
    platform: InProcessPlatform, openai: FakeOpenAI
) -> None:
    client = platform.client
    openai.script(
        openai_completion(ANSWER, prompt_tokens=40, completion_tokens=12).paced(chunk_delay_s=0.02)
    )
    wid = "stream-1"
    deltas = asyncio.create_task(_collect(client.stream(wid)))
    await asyncio.sleep(0.1)  # subscribed before the request (core NATS has no history)
    await client.submit(
        request_id=wid,
        instruction="Capital of Norway?",
        tenant="acme",
        model_preferences={"models": ["gpt-stream"]},
    )
    result = await client.result(wid, timeout=30)
    got = await asyncio.wait_for(deltas, 30)
    assert result.output == ANSWER
    # Word by word, numbered without gaps, then done; nothing replaced.
    texts = [d for d in got if d.text]
    assert len(texts) == len(ANSWER.split(" "))
    assert shown(got) == ANSWER
    assert [d.index for d in got] == list(range(len(got)))
    assert got[-1].done
    assert not any(d.restart for d in got)
    # The record is what the plain answer gives: usage from the provider's final report.
    [step] = await client.step_results(wid)
    [call] = step.calls
    assert call.usage == Usage(input_tokens=40, output_tokens=12)
    assert openai.requests[0].json["stream"] is True


async def test_a_stream_cut_mid_way_never_changes_the_record(
    platform: InProcessPlatform, openai: FakeOpenAI
) -> None:
    client = platform.client
    full = openai_completion(ANSWER, prompt_tokens=40, completion_tokens=12)
    openai.script(full.paced(cut_after=5), full)
    wid = "stream-cut"
    deltas = asyncio.create_task(_collect(client.stream(wid)))
    await asyncio.sleep(0.1)
    await client.submit(
        request_id=wid,
        instruction="Capital of Norway?",
        tenant="acme",
        model_preferences={"models": ["gpt-stream"]},
    )
    result = await client.result(wid, timeout=60)
    got = await asyncio.wait_for(deltas, 30)
    # The broken call showed some words live; the answer that counts is the whole one.
    assert result.output == ANSWER
    assert shown(got) == ANSWER
    assert any(d.restart for d in got)
    completed = [e for e in await client.events(wid) if isinstance(e, StepCompleted)]
    assert [e.output["text"] for e in completed if e.capability == "reasoning"] == [ANSWER]
    calls = [c for r in await client.step_results(wid) for c in r.calls]
    ok = [c for c in calls if c.outcome == "ok"]
    assert [c.usage for c in ok] == [Usage(input_tokens=40, output_tokens=12)]
    # The step ran again (the cut is transient); the provider saw both calls.
    assert len(openai.requests) == 2


async def test_the_gateway_relays_tokens_in_the_same_sse_stream(
    platform: InProcessPlatform, openai: FakeOpenAI
) -> None:
    openai.script(openai_completion(ANSWER).paced(chunk_delay_s=0.05))
    server = GatewayServer(platform.client, GatewaySettings(port=0, tokens=TOKEN_SETTING))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            body = {"instruction": "Capital?", "model_preferences": {"models": ["gpt-stream"]}}
            response = await http.post("/v1/workflows", json=body, headers=auth("acme"))
            wid = response.json()["workflow_id"]
            frames = [
                e
                async for e in sse_events(http, f"/v1/workflows/{wid}/events", headers=auth("acme"))
            ]
    finally:
        await server.stop()
    kinds = [f.event for f in frames]
    tokens = [TokenDelta(**f.data) for f in frames if f.event == "token"]
    assert kinds[-1] == "Finalized"
    # Tokens arrive between the step's scheduling and its completion, without ids.
    first, last = kinds.index("token"), len(kinds) - 1 - kinds[::-1].index("token")
    assert kinds.index("StepScheduled") < first
    assert last < kinds.index("StepCompleted")
    assert all(f.id is None for f in frames if f.event == "token")
    assert shown(tokens) == ANSWER


class Recorder:
    def __init__(self) -> None:
        self.deltas: list[TokenDelta] = []

    async def delta(self, text: str, *, model: str = "") -> None:
        self.deltas.append(TokenDelta(workflow_id="w", step_id="s", text=text, model=model))

    async def restart(self) -> None:
        self.deltas.append(TokenDelta(workflow_id="w", step_id="s", restart=True))

    async def done(self) -> None:
        self.deltas.append(TokenDelta(workflow_id="w", step_id="s", done=True))


async def test_hedged_calls_stream_only_the_winner(openai: FakeOpenAI) -> None:
    with FakeAnthropic() as anthropic:
        models = [
            model_for(openai, "gpt-h", typical_latency_s=0.1, fallbacks=("claude-h",)),
            model_for(anthropic, "claude-h", typical_latency_s=0.1),
        ]
        catalog = ModelCatalog(models={m.name: m for m in models}, source="test")
        # The primary streams slowly (it takes the live stream first); the hedge, sent at
        # 0.1 s, answers at about 0.4 s and wins.
        slow = " ".join(f"w{i}" for i in range(40))
        openai.script(openai_completion(slow).paced(chunk_delay_s=0.05))
        anthropic.script(anthropic_message(ANSWER, delay_s=0.3))
        sink = Recorder()
        gate = StreamGate(sink)
        async with ModelGateway(
            catalog,
            hedge_factor=1.0,
            hedge_target="fallback",
            clock=ManualClock(),
            http_settings=HttpSettings(read_timeout_s=5.0, trust_env=False),
        ) as gateway:
            started = time.monotonic()
            result = await gateway.call(
                models=["gpt-h"],
                messages=[Message(role="user", content="hi")],
                tools=[],
                max_tokens=100,
                remaining_tokens=None,
                remaining_usd=None,
                stream=gate,
            )
            await gate.finish()
    assert time.monotonic() - started < 2.0
    assert result.completion.text == ANSWER
    assert [a.winner for a in result.attempts] == [False, True]
    # The loser's words were shown, then cleared; what remains is the winner's answer.
    assert any(d.text.startswith("w0") for d in sink.deltas)
    assert sum(d.restart for d in sink.deltas) == 1
    assert shown(sink.deltas) == ANSWER
    assert result.completion.usage == Usage(input_tokens=20, output_tokens=7)


async def test_watch_tokens_prints_the_text_as_it_is_produced(
    platform: InProcessPlatform, openai: FakeOpenAI, nats_server: EmbeddedServer
) -> None:
    settings = platform.settings
    openai.script(openai_completion(ANSWER).paced(chunk_delay_s=0.02))
    wid = "watch-tokens"
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url,
        "JETAGENT_PREFIX": settings.prefix,
        "COLUMNS": "200",
    }
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetagent.cli", "watch", wid, "--tokens",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        # Core NATS has no history: submit once the watcher's subscription is on the server.
        subject = f"{settings.prefix}.tokens.{wid}.*"
        await eventually(lambda: _subscribed(nats_server, subject), timeout=30)
        await platform.client.submit(
            request_id=wid,
            instruction="Capital of Norway?",
            tenant="acme",
            model_preferences={"models": ["gpt-stream"]},
        )
        output, _ = await asyncio.wait_for(watcher.communicate(), 60)
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
    text = output.decode()
    assert watcher.returncode == 0, text
    assert f"1 ▸ {ANSWER}" in text  # the streamed line, before the events that follow it
    assert text.index(f"1 ▸ {ANSWER}") < text.index("answer:")


async def _subscribed(server: EmbeddedServer, subject: str) -> bool:
    def read() -> bool:
        url = f"{server.monitor_url}/subsz?subs=1"
        with urllib.request.urlopen(url, timeout=2) as reply:
            data = json.load(reply)
        return any(s.get("subject") == subject for s in data.get("subscriptions_list") or [])

    return await asyncio.to_thread(read)
