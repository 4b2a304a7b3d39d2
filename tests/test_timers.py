"""Durable timers on nats-server's message scheduler (ADR-51): they fire at their time,
re-arming replaces, and a timer survives a SIGKILL of the server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from nats.js.client import JetStreamContext

from jetagent.config import Settings
from jetagent.embedded import EmbeddedCluster, EmbeddedServer, find_server_binary
from jetagent.jetstream.provision import provision
from jetagent.orchestrator.timers import DEADLINE, INPUTS, DueTimer, Timers, due_timer
from jetagent.testing import eventually


def test_the_bundled_nats_server_supports_message_schedules() -> None:
    import subprocess

    out = subprocess.run(
        [str(find_server_binary()), "--version"], capture_output=True, text=True, check=True
    ).stdout
    version = tuple(int(p) for p in out.split("v")[-1].strip().split(".")[:2])
    assert version >= (2, 12), out  # ADR-51 message scheduling arrived in 2.12


class _DueReader:
    """The orchestrator-timers consumer, read the way the orchestrator reads it (one
    subscription: a pull left behind by another would take messages nobody acks)."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self.js = js
        self.settings = settings
        self.sub: Any = None

    async def __call__(self, timeout: float) -> list[DueTimer]:
        if self.sub is None:
            self.sub = await self.js.pull_subscribe_bind(
                "orchestrator-timers", stream=self.settings.names.timers_stream
            )
        try:
            msgs = await self.sub.fetch(10, timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        for msg in msgs:
            await msg.ack()
        return [due_timer(m) for m in msgs]


async def test_a_timer_fires_at_its_time_and_re_arming_replaces_it(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        await provision(nc, settings)
        js = nc.jetstream()
        timers = Timers(js, settings.names)
        read_due = _DueReader(js, settings)
        due = datetime.now(UTC) + timedelta(seconds=4)
        await timers.arm("wf-1", DEADLINE, due - timedelta(seconds=2))
        await timers.arm("wf-1", DEADLINE, due)  # replaces the first schedule
        await timers.arm("wf-2", INPUTS, datetime.now(UTC) - timedelta(seconds=5))  # overdue
        fired: list[DueTimer] = []
        deadline = time.monotonic() + 20
        while len(fired) < 2 and time.monotonic() < deadline:
            for timer in await read_due(timeout=1):
                fired.append(timer)
                if timer.workflow_id == "wf-1":
                    # At the second time, never early: the first schedule was replaced.
                    assert timer.due == due
                    assert datetime.now(UTC) >= due - timedelta(milliseconds=50)
        assert sorted((t.workflow_id, t.kind) for t in fired) == [
            ("wf-1", DEADLINE),
            ("wf-2", INPUTS),
        ]
        assert await read_due(timeout=1) == []  # the replaced one never fires
        # Work-queue retention: nothing is left once the fired timers were handled.
        await eventually(lambda: _stream_empty(js, settings), timeout=10)
    finally:
        await nc.close()


async def _stream_empty(js: JetStreamContext, settings: Settings) -> bool:
    info = await js.stream_info(settings.names.timers_stream)
    return info.state.messages == 0


@pytest.mark.parametrize("overdue", [False, True])
async def test_a_timer_survives_a_server_kill(
    fresh_server: EmbeddedServer, unique: str, overdue: bool
) -> None:
    settings = Settings(nats_url=fresh_server.url, prefix=unique.lower()[:12], tenants="*")
    nc = await nats.connect(fresh_server.url)
    await provision(nc, settings)
    due = datetime.now(UTC) + timedelta(seconds=2)
    await Timers(nc.jetstream(), settings.names).arm("wf-x", DEADLINE, due)
    await nc.close()
    fresh_server.kill()
    if overdue:
        # Down while it was due: the server fires it once it is back.
        await eventually(lambda: _true(datetime.now(UTC) > due), timeout=10)
    await asyncio.to_thread(fresh_server.start)
    nc = await nats.connect(fresh_server.url)
    try:
        read_due = _DueReader(nc.jetstream(), settings)
        fired: list[DueTimer] = []
        deadline = time.monotonic() + 20
        while not fired and time.monotonic() < deadline:
            fired = await read_due(timeout=1)
        assert [(t.workflow_id, t.kind) for t in fired] == [("wf-x", DEADLINE)]
        assert datetime.now(UTC) >= due
    finally:
        await nc.close()


async def _true(value: bool) -> bool:
    return value


@pytest.mark.cluster
async def test_a_timer_fires_on_a_replicated_stream_after_its_leader_is_killed(
    nats_cluster: EmbeddedCluster, unique: str
) -> None:
    settings = Settings(
        nats_url=",".join(nats_cluster.urls), prefix=unique.lower()[:12], tenants="*", replicas=3
    )
    nc = await nats.connect(nats_cluster.urls)
    try:
        await provision(nc, settings, timeout=15)
        js = nc.jetstream(timeout=15)
        due = datetime.now(UTC) + timedelta(seconds=3)
        await Timers(js, settings.names).arm("wf-r3", DEADLINE, due)
        info = await js.stream_info(settings.names.timers_stream)
        assert info.cluster is not None
        leader = next(s for s in nats_cluster.servers if s.server_name == info.cluster.leader)
        leader.kill()  # the schedule is replicated: a new leader fires it
        read_due = _DueReader(js, settings)
        fired: list[DueTimer] = []
        deadline = time.monotonic() + 60
        while not fired and time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.Error):
                fired = await read_due(timeout=2)
        assert [(t.workflow_id, t.kind) for t in fired] == [("wf-r3", DEADLINE)]
    finally:
        await nc.close()


def test_a_timers_stream_without_message_schedules_is_refused() -> None:
    from jetagent.jetstream._streams import stream_problems
    from jetagent.jetstream.provision import stream_configs

    wanted = next(c for c in stream_configs(Settings()) if c["name"] == "JA_TIMERS")
    assert wanted["allow_msg_schedules"] is True
    # What a server older than 2.12 creates from the same definition: the flag dropped.
    made = {k: v for k, v in wanted.items() if k != "allow_msg_schedules"}
    assert stream_problems(made, wanted) == ["allow_msg_schedules is off (it must be true)"]
