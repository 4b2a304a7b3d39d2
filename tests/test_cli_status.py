"""``jetagent status`` (issue 14): streams, consumers with their backlog, the workers
connected per capability with their versions, projection lag, circuit states.

A known backlog: an orchestrator schedules reasoning steps while no reasoning worker
runs (its consumer exists: a worker set it up and never served); then workers start.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import pytest

from jetagent.config import Settings
from jetagent.jetstream import connect
from jetagent.models import ModelCatalog
from jetagent.orchestrator import Orchestrator
from jetagent.testing import eventually
from jetagent.worker._runtime import Worker
from tests.support.known import env_for, run_many, running_projection
from tests.support.platform import specs_for_tests

BACKLOG = 3


class _Services:
    """Services in this event loop, each stoppable on its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = ModelCatalog.load()
        self.stops: list[asyncio.Event] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.connections: list[Any] = []

    async def nc(self, name: str) -> Any:
        nc = await connect(self.settings.nats_url, name=name)
        self.connections.append(nc)
        return nc

    def run(self, service: Any) -> asyncio.Event:
        stop = asyncio.Event()
        self.stops.append(stop)
        self.tasks.append(asyncio.create_task(service.run(stop)))
        return stop

    async def worker(self, *capabilities: str) -> Worker:
        specs = [s for s in specs_for_tests(self.catalog) if s.name in capabilities]
        return Worker(await self.nc("test-worker"), self.settings, specs)

    async def close(self) -> None:
        for stop in self.stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)
        for nc in self.connections:
            await nc.close()


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[_Services]:
    services = _Services(settings)
    try:
        yield services
    finally:
        await services.close()


def _capability(document: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in document["capabilities"] if c["name"] == name]
    assert len(found) == 1, document["capabilities"]
    return found[0]


async def test_status_shows_backlog_workers_and_projection(
    services: _Services, settings: Settings
) -> None:
    env = env_for(settings)
    (provisioned,) = await run_many([["provision"]], env)
    assert provisioned.returncode == 0, provisioned.stderr

    # The reasoning consumer exists, but no reasoning worker serves it.
    await (await services.worker("reasoning")).setup()
    services.run(Orchestrator(await services.nc("test-orchestrator"), settings))
    client_nc = await services.nc("test-client")
    from jetagent.client import Client

    client = Client(client_nc, settings)
    for i in range(BACKLOG):
        await client.submit(instruction=f"What is {i} + 1?", tenant="acme")

    async def backlog() -> bool:
        info = await client.js.consumer_info(settings.names.workflows_stream, "cap-reasoning")
        return info.num_pending == BACKLOG

    await eventually(backlog, timeout=30)

    # A tools worker runs (in this process); reasoning has none.
    services.run(await services.worker("tools"))

    async def reported() -> dict[str, Any] | None:
        (result,) = await run_many([["status", "--json"]], env)
        assert result.returncode == 0, result.stdout + result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document if _capability(document, "tools")["workers"] else None

    document = await eventually(reported, timeout=30)
    reasoning = _capability(document, "reasoning")
    assert reasoning["consumer"]["pending"] == BACKLOG
    assert reasoning["consumer"]["ack_pending"] == 0
    assert reasoning["workers"] == []
    (worker,) = _capability(document, "tools")["workers"]
    assert worker["version"] == version("jetagent")
    assert worker["pid"] == os.getpid()
    assert worker["host"] == socket.gethostname()
    streams = {s["name"]: s for s in document["streams"]}
    workflows = streams[settings.names.workflows_stream]
    assert workflows["messages"] >= BACKLOG
    assert workflows["bytes"] > 0
    assert workflows["replicas"] == 1
    consumers = {(c["stream"], c["name"]): c for c in document["consumers"]}
    assert consumers[(settings.names.workflows_stream, "cap-reasoning")]["pending"] == BACKLOG
    assert document["projection"]["running"] is False

    # The readable form says the same in words.
    (text,) = await run_many([["status"]], env)
    assert text.returncode == 0, text.stderr
    assert "cap-reasoning" in text.stdout
    assert "reasoning: no worker connected" in text.stdout, text.stdout
    assert f"{BACKLOG} steps waiting" in text.stdout, text.stdout
    assert f"jetagent {version('jetagent')}" in text.stdout
    assert "projection service: not running" in text.stdout

    # The reasoning worker starts: the backlog drains, it is listed with its version, and
    # the projection, once running, reports no lag.
    services.run(await services.worker("reasoning", "summarize"))
    async with running_projection(settings):

        async def drained() -> dict[str, Any] | None:
            (result,) = await run_many([["status", "--json"]], env)
            document: dict[str, Any] = json.loads(result.stdout)
            reasoning = _capability(document, "reasoning")
            projection = document["projection"]
            done = (
                reasoning["consumer"]["pending"] == 0
                and reasoning["consumer"]["ack_pending"] == 0
                and reasoning["workers"]
                and projection["running"]
                and projection["lag"].get(settings.names.workflows_stream) == 0
            )
            return document if done else None

        document = await eventually(drained, timeout=60)
        (worker,) = _capability(document, "reasoning")["workers"]
        assert worker["version"] == version("jetagent")
        # The reasoning worker reports its providers' circuit breakers.
        assert document["circuits"], document
        assert {c["state"] for c in document["circuits"]} == {"closed"}
