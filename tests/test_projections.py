"""Projections: session views and metrics live, after a rebuild, and after a SIGKILL."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jetagent import RequestRejectedError
from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.jetstream import connect
from jetagent.sessions import SessionView
from jetagent.testing import eventually
from projections.checkpoints import CheckpointStore
from projections.costs import Histogram
from projections.service import CHECKPOINT_KEY, Checkpoint, ProjectionService
from tests.support.platform import InProcessPlatform, service_processes

ALLOWED_LABELS = {
    "capability", "model", "provider", "tenant", "kind", "outcome", "reason", "stream",
    "consumer", "base_url", "source", "le",
}  # fmt: skip


async def _run_workflows(platform: InProcessPlatform) -> list[str]:
    client = platform.client
    ids = []
    for i in range(6):
        ids.append(
            await client.submit(instruction=f"What is {i} * 9? Then add 1 to it", tenant="acme")
        )
    ids.append(
        await client.submit(
            instruction="Compute 1 + 1 then 2 + 2 then 3 + 3 then 4 + 4 then 5 + 5",
            tenant="beta",
            capability_limits={"token_cap": 700},
            allowed_tools=["calculator"],
        )
    )
    ids.append(
        await client.submit(instruction="Remember my city is Oslo, then recall city", tenant="beta")
    )
    for wid in ids:
        await client.result(wid, timeout=30)
    # A rejected request counts as an outcome too.
    await client.js.publish(
        platform.settings.names.request("acme"), b"{nope", headers={"Nats-Msg-Id": "broken-1"}
    )
    with pytest.raises(RequestRejectedError):
        await client.result("broken-1", timeout=20)
    return ids


async def _caught_up(service: ProjectionService) -> bool:
    last = await service._last_sequences()
    return all(service.positions.get(s, 0) >= seq for s, seq in last.items() if seq)


async def _views(settings: Settings, nc: Any) -> dict[str, dict[str, Any]]:
    bucket = settings.names.bucket("SESSIONS")
    kv = await nc.jetstream().key_value(bucket)
    # The keys from the bucket's stream in one request: kv.keys() is a watcher that, on
    # a loaded box, can give up before its first message and raise NoKeysError.
    prefix = f"$KV.{bucket}."
    info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
    views = {}
    for key in (subject[len(prefix) :] for subject in info.state.subjects or {}):
        views[key] = msgspec.to_builtins(
            msgspec.json.decode((await kv.get(key)).value, type=SessionView)
        )
    return views


async def test_live_views_and_totals_equal_a_rebuild(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_port": free_port()})
    platform = await InProcessPlatform(settings).start()
    nc = await connect(settings.nats_url, name="test-projections")
    stop = asyncio.Event()
    live = ProjectionService(nc, settings)
    task = asyncio.create_task(live.run(stop))
    try:
        ids = await _run_workflows(platform)
        await eventually(lambda: _caught_up(live), timeout=30)
        await live.refresh_live_gauges()
        # /metrics is valid Prometheus text, with bounded labels only.
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for family in families.values():
            if family.name.startswith(("process_", "python_", "jetagent_build")):
                continue  # the process collectors and the build info: fixed label sets
            for sample in family.samples:
                assert set(sample.labels) <= ALLOWED_LABELS, sample
                assert not set(sample.labels.values()) & set(ids), "a workflow id as a label"
        tokens = sum(s.value for s in families["jetagent_tokens"].samples)
        assert tokens > 0
        outcomes = {
            (s.labels["tenant"], s.labels["outcome"]): s.value
            for s in families["jetagent_workflows"].samples
        }
        assert outcomes[("acme", "finalized")] == 6
        assert outcomes[("beta", "terminated")] == 1
        assert outcomes[("acme", "rejected")] == 1
        assert any(s.value > 0 for s in families["jetagent_step_duration_seconds"].samples)
        # The client reads the projected view.
        view = await platform.client.session(ids[0])
        assert view.status.value == "finalized"
        assert view.steps[0].model == "offline-planner"
        assert view.steps[0].turnaround_s is not None
        assert view.tokens > 0
    finally:
        stop.set()
        await task
    live_views = await _views(settings, nc)
    live_totals = live.metrics.totals()

    rebuilt = ProjectionService(nc, settings)
    events = await rebuilt.rebuild()
    assert events > 0
    assert await _views(settings, nc) == live_views
    assert rebuilt.metrics.totals() == live_totals
    await nc.close()
    await platform.stop()


async def test_a_projection_killed_and_restarted_keeps_its_totals(
    settings: Settings, tmp_path: Path
) -> None:
    platform = await InProcessPlatform(settings).start()
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_METRICS_PORT": str(free_port())},
    )
    nc = await connect(settings.nats_url, name="test-projections")
    try:
        procs.start("projections-1", "projections", "run")
        first = await _run_workflows(platform)

        async def checkpointed() -> bool:
            return await _checkpoint(settings, nc) is not None

        await eventually(checkpointed, timeout=30)
        procs.kill("projections-1")  # SIGKILL, between checkpoints or in the middle of one
        more = [
            await platform.client.submit(instruction=f"What is {i} + 2?", tenant="acme")
            for i in range(5)
        ]
        for wid in more:
            await platform.client.result(wid, timeout=30)
        procs.start("projections-2", "projections", "run")
        last = await _stream_ends(settings, nc)

        async def resumed_to_the_end() -> bool:
            saved = await _checkpoint(settings, nc)
            return saved is not None and all(
                saved.positions.get(s, 0) >= n for s, n in last.items() if n
            )

        await eventually(resumed_to_the_end, timeout=30)
        procs.stop_all()
        after_restart = await _checkpoint(settings, nc)
        assert after_restart is not None
        rebuilt = ProjectionService(nc, settings)
        await rebuilt.rebuild()
        assert msgspec.to_builtins(after_restart.metrics) == msgspec.to_builtins(rebuilt.metrics)
        assert len(first) + len(more) == sum(
            v for k, v in rebuilt.metrics.workflows.items() if not k.endswith("rejected")
        )
    finally:
        procs.stop_all()
        await nc.close()
        await platform.stop()


async def _checkpoint(settings: Settings, nc: Any) -> Checkpoint | None:
    kv = await nc.jetstream().key_value(settings.names.bucket("PROJECTIONS"))
    value = await CheckpointStore(kv, CHECKPOINT_KEY).load()
    return msgspec.json.decode(value, type=Checkpoint) if value else None


async def _stream_ends(settings: Settings, nc: Any) -> dict[str, int]:
    js = nc.jetstream()
    names = settings.names
    ends = {}
    for stream in (names.workflows_stream, names.steps_stream, names.dlq_stream):
        ends[stream] = (await js.stream_info(stream)).state.last_seq
    return ends


_ = json


def test_duration_totals_do_not_depend_on_the_order_results_are_folded() -> None:
    # A live service folds a result that arrived before its step's schedule later than
    # a rebuild does; the totals must still be equal to the last digit.
    durations = [timedelta(microseconds=m) for m in (100_003, 251_628, 7, 123_456_789, 1)]
    forward, backward = Histogram(), Histogram()
    for elapsed in durations:
        forward.observe(elapsed)
    for elapsed in reversed(durations):
        backward.observe(elapsed)
    assert forward == backward
    assert forward.total_us == sum(d // timedelta(microseconds=1) for d in durations)
    # A checkpoint written before total_us existed is read as it was.
    old = msgspec.json.decode(b'{"total": 0.351631, "count": 1}', type=Histogram)
    assert old.total_us == 351_631
