"""The memory capability on a real nats-server: scopes, tenants, idempotence, ranking.

Most tests call the capability's handler with real ``StepContext``s on a real connection
(each step carries its workflow's session in its input, as the orchestrator puts it
there); the first two run whole workflows through the platform.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NoKeysError

from capabilities.memory import (
    RETRIEVER_ENV,
    MemoryStore,
    memory_capability,
    memory_tools,
)
from capabilities.memory import load_retriever_factory as load_factory
from jetagent import (
    CapabilitySpec,
    ConfigError,
    Settings,
    Status,
    StepContext,
)
from jetagent.events import (
    Spend,
    StepCompleted,
    StepScheduled,
    encode,
    subject_tail,
)
from jetagent.jetstream import connect
from jetagent.jetstream.provision import provision
from jetagent.testing import eventually, step_context
from jetagent.worker._runtime import Worker
from jetagent.worker.tools import ToolBox
from tests.support.platform import InProcessPlatform

# ----------------------------------------------------------------------------- helpers


@dataclass
class Steps:
    """Builds real step contexts, each carrying its session as the orchestrator's would."""

    nc: NATS
    settings: Settings
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    js: Any = None

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()  # one context, as a worker has

    async def context(
        self,
        *,
        tenant: str,
        workflow: str,
        call: str,
        tool: str,
        arguments: dict[str, Any],
        session: str | None = None,
    ) -> StepContext:
        # The request's session id, else the workflow's own (jetagent.workflow's rule).
        session_id = session or workflow
        return step_context(
            workflow_id=workflow,
            step_id=f"step-{next(self.ids)}",
            capability="memory",
            tool=tool,
            tenant=tenant,
            input={
                "call_id": call,
                "tool": tool,
                "arguments": arguments,
                "session_id": session_id,
            },
            nc=self.nc,
            settings=self.settings,
        )


@pytest.fixture
async def steps(settings: Settings) -> AsyncIterator[Steps]:
    nc = await connect(settings.nats_url, name="test-memory")
    await provision(nc, settings)
    try:
        yield Steps(nc, settings)
    finally:
        await nc.close()


async def call(spec: CapabilitySpec, ctx: StepContext) -> Any:
    """Run one step through the capability's handler; the tool's answer."""
    out = await spec.handler(ctx)
    output = out.output if not isinstance(out, dict) else out
    answer = json.loads(output["content"]) if "content" in output else output
    assert "error" not in answer, answer
    return answer["result"]


async def remember(
    spec: CapabilitySpec,
    steps: Steps,
    text: str,
    *,
    tenant: str = "acme",
    workflow: str = "wf-1",
    session: str | None = None,
    call_id: str | None = None,
    **arguments: Any,
) -> Any:
    ctx = await steps.context(
        tenant=tenant,
        workflow=workflow,
        session=session,
        call=call_id or f"call-{next(steps.ids)}",
        tool="remember",
        arguments={"text": text, **arguments},
    )
    return await call(spec, ctx)


async def recall(
    spec: CapabilitySpec,
    steps: Steps,
    query: str,
    *,
    tenant: str = "acme",
    workflow: str = "wf-1",
    session: str | None = None,
    **arguments: Any,
) -> list[dict[str, Any]]:
    ctx = await steps.context(
        tenant=tenant,
        workflow=workflow,
        session=session,
        call=f"call-{next(steps.ids)}",
        tool="recall",
        arguments={"query": query, **arguments},
    )
    result: list[dict[str, Any]] = await call(spec, ctx)
    return result


async def memory_keys(steps: Steps) -> list[str]:
    kv = await steps.js.key_value(steps.settings.names.bucket("MEMORY"))
    try:
        return sorted(await kv.keys())
    except Exception:  # nats-py raises NoKeysError for an empty bucket
        return []


# ------------------------------------------------------------------- through the platform


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[InProcessPlatform]:
    """The in-process platform plus a memory worker (registered before the orchestrator
    starts, so it knows the memory tools from its first request)."""
    nc = await connect(settings.nats_url, name="test-memory-worker")
    worker = Worker(nc, settings, [memory_capability()])
    await worker.setup()
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.run(stop))
    engine = await InProcessPlatform(settings).start()
    try:
        yield engine
    finally:
        await engine.stop()
        stop.set()
        await asyncio.wait_for(serving, 30)
        await nc.close()


async def recalled_in(engine: InProcessPlatform, workflow: str) -> list[dict[str, Any]]:
    """The results of the workflow's (one) recall step, from its StepCompleted event."""
    result = await engine.client.result(workflow, timeout=30)
    assert result.status is Status.FINALIZED, result
    completed = [
        e
        for e in await engine.client.events(workflow)
        if isinstance(e, StepCompleted) and e.tool == "recall"
    ]
    assert len(completed) == 1
    assert completed[0].capability == "memory"
    found: list[dict[str, Any]] = completed[0].output["result"]
    return found


async def test_recall_finds_what_was_remembered_in_the_same_workflow(
    platform: InProcessPlatform,
) -> None:
    wid = await platform.client.submit(
        instruction=(
            'call remember {"text": "the launch code is 1234"} '
            'then call recall {"query": "launch code"}'
        ),
        tenant="acme",
    )
    found = await recalled_in(platform, wid)
    assert [r["text"] for r in found] == ["the launch code is 1234"]
    assert found[0]["scope"] == "session"
    assert found[0]["score"] > 0
    # The offline provider's final answer carries the recalled text back to the caller.
    assert "1234" in (await platform.client.result(wid)).output


async def test_sessions_and_tenants_see_only_their_memories(platform: InProcessPlatform) -> None:
    client = platform.client
    # Session s1 of acme remembers one thing for itself and one for the whole tenant.
    first = await client.submit(
        instruction=(
            'call remember {"text": "the deploy window is Friday"} and '
            'call remember {"text": "the office wifi password is hunter2", "scope": "tenant"}'
        ),
        tenant="acme",
        session_context={"session_id": "s1"},
    )
    assert (await client.result(first, timeout=30)).status is Status.FINALIZED

    query = 'call recall {"query": "deploy window and wifi password"}'
    same_session = await client.submit(
        instruction=query, tenant="acme", session_context={"session_id": "s1"}
    )
    other_session = await client.submit(
        instruction=query, tenant="acme", session_context={"session_id": "s2"}
    )
    no_session = await client.submit(instruction=query, tenant="acme")
    other_tenant = await client.submit(
        instruction=query, tenant="globex", session_context={"session_id": "s1"}
    )

    texts = {
        wid: sorted(r["text"] for r in await recalled_in(platform, wid))
        for wid in (same_session, other_session, no_session, other_tenant)
    }
    wifi, deploy = "the office wifi password is hunter2", "the deploy window is Friday"
    assert texts[same_session] == [deploy, wifi]
    # Another session of the tenant sees the tenant's memory, not the session's.
    assert texts[other_session] == [wifi]
    assert texts[no_session] == [wifi]
    # Another tenant, even with the same session id, sees nothing at all.
    assert texts[other_tenant] == []


# -------------------------------------------------------------- the capability's handler


async def test_a_redelivered_remember_stores_one_memory(steps: Steps) -> None:
    spec = memory_capability()
    arguments = {"text": "the backup runs at 02:00", "scope": "tenant"}
    ctx = await steps.context(
        tenant="acme", workflow="wf-r", call="call_1_1", tool="remember", arguments=arguments
    )
    first = await call(spec, ctx)
    # The same delivery again (a lost ack), and a retry of the call as a new step.
    again = await call(spec, ctx)
    retry = await steps.context(
        tenant="acme", workflow="wf-r", call="call_1_1", tool="remember", arguments=arguments
    )
    assert retry.step_id != ctx.step_id
    third = await call(spec, retry)
    assert first == again == third
    assert len(await memory_keys(steps)) == 1
    assert [r["text"] for r in await recall(spec, steps, "backup", workflow="wf-r")] == [
        arguments["text"]
    ]
    # Another call of the same workflow saying the same is a memory of its own.
    await remember(spec, steps, arguments["text"], workflow="wf-r", call_id="call_2_1")
    assert len(await memory_keys(steps)) == 2


async def test_a_step_delivered_twice_to_a_worker_stores_one_memory(steps: Steps) -> None:
    settings, names = steps.settings, steps.settings.names
    worker_nc = await connect(settings.nats_url, name="test-memory-worker")
    worker = Worker(worker_nc, settings, [memory_capability()])
    await worker.setup()
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.run(stop))
    try:
        # The same StepScheduled twice, as a republished or redelivered step arrives.
        step = StepScheduled(
            workflow_id="wf-twice",
            at=datetime.now(UTC),
            step_id="s1",
            capability="memory",
            tool="remember",
            iteration=1,
            input={
                "call_id": "call_1_1",
                "tool": "remember",
                "arguments": {"text": "the rollout is paused", "scope": "tenant"},
            },
            reservation=Spend(),
            tenant="acme",
        )
        subject = f"{names.workflow_root}.wf-twice.{subject_tail(step)}"
        await steps.js.publish(subject, encode(step))
        await steps.js.publish(subject, encode(step))

        async def both_handled() -> bool:
            info = await steps.js.consumer_info(names.workflows_stream, "cap-memory")
            return info.num_pending == 0 and info.num_ack_pending == 0 and worker.completed >= 2

        await eventually(both_handled)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
        await worker_nc.close()
    # Both deliveries ran the tool; the second found the memory the first stored.
    assert worker.completed == 2
    assert len(await memory_keys(steps)) == 1


async def test_keys_put_the_tenant_first(steps: Steps) -> None:
    spec = memory_capability()
    await remember(spec, steps, "acme fact", tenant="acme", workflow="wf-a", scope="tenant")
    await remember(spec, steps, "acme note", tenant="acme", workflow="wf-a")
    await remember(spec, steps, "globex fact", tenant="globex", workflow="wf-g", scope="tenant")
    keys = await memory_keys(steps)
    assert len(keys) == 3
    acme = [k for k in keys if k.startswith("acme.")]
    assert sorted(k.split(".")[1] for k in acme) == ["s-wf-a", "t"]
    assert [k.split(".")[:2] for k in keys if not k.startswith("acme.")] == [["globex", "t"]]
    (found,) = await recall(spec, steps, "fact", tenant="globex", workflow="wf-g2")
    assert (found["text"], found["scope"], found["tags"]) == ("globex fact", "tenant", [])
    assert datetime.fromisoformat(found["remembered_at"]) <= datetime.now(UTC)


async def test_a_workflow_without_a_session_id_is_its_own_session(steps: Steps) -> None:
    spec = memory_capability()
    await remember(spec, steps, "the draft is in the blue folder", workflow="req-1")
    # A later request continues that session by naming the first request's id.
    assert await recall(spec, steps, "draft folder", workflow="req-2", session="req-1")
    assert await recall(spec, steps, "draft folder", workflow="req-3") == []


async def test_a_step_without_a_session_id_reaches_only_the_tenant_scope(steps: Steps) -> None:
    # A step scheduled before steps carried their session: the tenant scope still works,
    # and a session-scope call answers why it cannot, instead of guessing a session.
    spec = memory_capability()

    async def step(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        ctx = await steps.context(
            tenant="acme", workflow="wf-old", call="c1", tool=tool, arguments=arguments
        )
        del ctx.input["session_id"]
        out = await spec.handler(ctx)
        output = out.output if not isinstance(out, dict) else out
        answer: dict[str, Any] = json.loads(str(output["content"]))
        return answer

    stored = await step("remember", {"text": "the printer is on floor 3", "scope": "tenant"})
    assert stored["result"]["scope"] == "tenant"
    found = await step("recall", {"query": "printer", "scope": "tenant"})
    assert [r["text"] for r in found["result"]] == ["the printer is on floor 3"]
    refused = await step("remember", {"text": "a session note"})
    assert "carries no session id" in refused["error"]
    assert len(await memory_keys(steps)) == 1


async def test_bm25_ranks_the_relevant_memory_first(steps: Steps) -> None:
    spec = memory_capability()
    facts = [
        "the cafeteria serves pasta on Mondays",
        "the staging database password rotates every month",
        "Alice prefers meetings in the afternoon",
        "the production database runs PostgreSQL 16 on three nodes",
        "the quarterly report is due on March 31",
    ]
    for fact in facts:
        await remember(spec, steps, fact, scope="tenant", tags=["ops"] if "data" in fact else [])
    found = await recall(spec, steps, "which database does production use?", limit=3)
    assert found[0]["text"] == "the production database runs PostgreSQL 16 on three nodes"
    assert len(found) == 2  # only memories that match at all
    assert found[0]["score"] > found[1]["score"] > 0
    assert found[0]["tags"] == ["ops"]
    # Stemming: "meeting" finds "meetings"; tags are searchable words too.
    assert (await recall(spec, steps, "meeting"))[0]["text"].startswith("Alice")
    assert {r["text"] for r in await recall(spec, steps, "ops")} == {facts[1], facts[3]}
    assert await recall(spec, steps, "kubernetes") == []


async def test_the_cache_follows_memories_stored_by_another_worker(steps: Steps) -> None:
    store = MemoryStore()
    mine = _spec_with(store)
    theirs = memory_capability()  # another replica, with a cache of its own
    await remember(theirs, steps, "the VPN gateway is vpn1", scope="tenant")
    assert len(await recall(mine, steps, "VPN gateway")) == 1
    assert store.reloads == 1  # the tenant scope, read whole (the session's has nothing)
    await remember(theirs, steps, "the backup VPN gateway is vpn2", scope="tenant")
    found = await recall(mine, steps, "VPN gateway")
    assert sorted(r["text"] for r in found) == [
        "the VPN gateway is vpn1",
        "the backup VPN gateway is vpn2",
    ]
    assert store.reloads == 1  # only the new memory was read
    # An operator deleting a memory (nats kv del) is seen too.
    kv = await steps.js.key_value(steps.settings.names.bucket("MEMORY"))
    vpn2 = next(k for k in await kv.keys() if k.startswith("acme.t."))
    await kv.delete(vpn2)
    assert len(await recall(mine, steps, "VPN gateway")) == 1


async def test_a_large_text_goes_to_the_object_store(steps: Steps) -> None:
    spec = memory_capability()
    threshold = steps.settings.payload_threshold_bytes
    text = "the runbook says: " + "restart the service and wait. " * (threshold // 25)
    assert len(text.encode()) > threshold
    await remember(spec, steps, text, scope="tenant")
    kv = await steps.js.key_value(steps.settings.names.bucket("MEMORY"))

    async def listed() -> list[str]:
        # nats-py lists keys with a watcher that may end before its first entry comes
        # (NoKeysError) on a loaded machine: asked again, the stored key is there.
        try:
            return list(await kv.keys())
        except NoKeysError:
            return []

    (key,) = await eventually(listed, timeout=10)
    stored = msgspec.json.decode((await kv.get(key)).value)
    assert stored["text_ref"]["size"] == len(text.encode())
    assert "text" not in stored
    found = await recall(spec, steps, "runbook", workflow="wf-other")
    assert [r["text"] for r in found] == [text]


async def test_bad_arguments_are_the_models_information(steps: Steps) -> None:
    spec = memory_capability()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("remember", {"text": "   "}),
        ("remember", {"text": "x", "scope": "everyone"}),
        ("remember", {"text": "x", "tags": [""]}),
        ("recall", {"query": "x", "limit": 0}),
        ("recall", {}),
    ]
    for tool, arguments in cases:
        ctx = await steps.context(
            tenant="acme", workflow="wf-b", call="c", tool=tool, arguments=arguments
        )
        out = await spec.handler(ctx)
        output = out.output if not isinstance(out, dict) else out
        assert "error" in output, (tool, arguments)


# ----------------------------------------------------------------------- the plug-in point


class NewestFirst:
    """A trivial retriever: documents containing the query's first word, newest first."""

    def __init__(self) -> None:
        self.docs: list[str] = []

    def index(self, docs: Sequence[str]) -> None:
        self.docs = list(docs)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        word = query.split()[0].lower()
        hits = [i for i, doc in enumerate(self.docs) if word in doc.lower()]
        return [(i, 1.0) for i in reversed(hits)][:k]


def newest_first() -> NewestFirst:
    return NewestFirst()


def not_a_retriever() -> object:
    return object()


async def test_a_custom_retriever_plugs_in(steps: Steps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRIEVER_ENV, f"{__name__}:newest_first")
    spec = memory_capability()
    for n in range(3):
        await remember(spec, steps, f"note {n}: the printer is broken", scope="tenant")
    found = await recall(spec, steps, "printer", limit=2)
    assert [r["text"] for r in found] == [
        "note 2: the printer is broken",
        "note 1: the printer is broken",
    ]
    assert [r["score"] for r in found] == [1.0, 1.0]


def test_a_bad_retriever_setting_stops_the_worker_at_start() -> None:
    assert load_factory("") is not None  # BM25 by default
    for entry in ("no_colon", "tests.nowhere:factory", f"{__name__}:missing"):
        with pytest.raises(ConfigError):
            load_factory(entry)
    with pytest.raises(ConfigError, match="lacks"):
        load_factory(f"{__name__}:not_a_retriever")


def _spec_with(store: MemoryStore) -> CapabilitySpec:
    """A capability spec around a given store (to look at its cache)."""
    box = ToolBox.of(memory_tools(store))

    async def run(step: StepContext) -> dict[str, Any]:
        return await box.run(str(step.tool), step.input["arguments"], step)

    return CapabilitySpec(name="memory", handler=run)


def test_the_capability_loads_as_a_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from jetagent.cli._services import capability_specs
    from jetagent.models import ModelCatalog

    monkeypatch.setenv("JETAGENT_CAPABILITIES", "capabilities.memory:memory_capabilities")
    (spec,) = capability_specs(["memory"], ModelCatalog.load())
    assert spec.name == "memory"
    assert sorted(t.spec.name for t in spec.tools) == ["recall", "remember"]
