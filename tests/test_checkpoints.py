"""Projection checkpoints of any size, on a server with the default 1 MiB max_payload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client as NATS

from jetagent.config import Settings
from jetagent.jetstream import connect
from jetagent.jetstream.provision import provision
from projections.checkpoints import CheckpointError, CheckpointStore
from projections.service import CHECKPOINT_KEY, ProjectionService


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    nc = await connect(settings.nats_url, name="test-checkpoints")
    await provision(nc, settings, consumers=False)
    yield nc
    await nc.close()


async def _store(nc: NATS, settings: Settings, part_bytes: int) -> CheckpointStore:
    kv = await nc.jetstream().key_value(settings.names.bucket("PROJECTIONS"))
    return CheckpointStore(kv, "test", part_bytes=part_bytes)


async def test_large_checkpoints_are_written_in_parts_and_read_back(
    nc: NATS, settings: Settings
) -> None:
    store = await _store(nc, settings, part_bytes=1000)
    assert await store.load() is None
    small = b'{"positions": {}}'
    await store.save(small)
    assert await CheckpointStore(store.kv, "test").load() == small
    for n in range(3):  # alternating slots, each save readable by a fresh reader
        value = bytes(range(256)) * (10 + n)
        await store.save(value)
        assert await CheckpointStore(store.kv, "test", part_bytes=1000).load() == value
    await store.save(small)  # back to one value
    assert await CheckpointStore(store.kv, "test").load() == small


async def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(
    nc: NATS, settings: Settings
) -> None:
    store = await _store(nc, settings, part_bytes=1000)
    first = b"x" * 3500
    await store.save(first)
    # A writer killed after some parts of the next checkpoint, before its head:
    await store.kv.put("test.b.0", b"y" * 1000)
    assert await CheckpointStore(store.kv, "test").load() == first
    # Parts that do not match the head (two writers on one checkpoint) are refused.
    await store.kv.put("test.a.1", b"z" * 1000)
    with pytest.raises(CheckpointError, match="does not match its digest"):
        await CheckpointStore(store.kv, "test").load()


async def test_a_service_with_ten_thousand_live_sessions_checkpoints_and_resumes(
    nc: NATS, settings: Settings
) -> None:
    service = ProjectionService(nc, settings)
    now = datetime.now(UTC)
    for i in range(10_000):
        wid = f"workflow-{i:05d}-{'x' * 30}"
        service.metrics.open_workflows[wid] = f"tenant-{i % 20}"
        service.metrics.open_steps[wid] = {"step-0001": now}
    service.positions = {settings.names.workflows_stream: 50_000}
    await service.checkpoint()  # over 1 MiB encoded: one KV value would be refused

    resumed = ProjectionService(nc, settings)
    await resumed.load_checkpoint()
    assert resumed.positions == service.positions
    assert msgspec.to_builtins(resumed.metrics) == msgspec.to_builtins(service.metrics)
    kv = await nc.jetstream().key_value(settings.names.bucket("PROJECTIONS"))
    assert len((await kv.get(CHECKPOINT_KEY)).value or b"") < 200  # the head only
