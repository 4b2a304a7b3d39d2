"""The platform for tests: in-process services, or real processes that tests can SIGKILL."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.jetstream import connect
from jetagent.models import ModelCatalog
from jetagent.orchestrator import Orchestrator
from jetagent.testing import ServiceProcesses, eventually, tools_registered
from jetagent.worker import CapabilitySpec
from jetagent.worker._runtime import Worker
from tests.support.tools import TEST_TOOLS

ROOT = Path(__file__).resolve().parents[2]


def specs_for_tests(catalog: ModelCatalog) -> list[CapabilitySpec]:
    from capabilities.reasoning.capability import reasoning_capabilities
    from capabilities.tools.capability import tools_capability

    reasoning, summarize, _ = reasoning_capabilities(catalog)
    return [reasoning, tools_capability(TEST_TOOLS), summarize]


@dataclass
class InProcessPlatform:
    """Orchestrator replicas and workers as tasks of the test's event loop."""

    settings: Settings
    orchestrators: int = 1
    workers: int = 1
    catalog: ModelCatalog | None = None
    client: Client = field(init=False)
    services: list[Orchestrator | Worker] = field(default_factory=list)
    """The orchestrators and workers started, in that order."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _connections: list[Any] = field(default_factory=list)

    async def start(self) -> InProcessPlatform:
        catalog = self.catalog or ModelCatalog.load()
        for _ in range(self.orchestrators):
            nc = await connect(self.settings.nats_url, name="test-orchestrator")
            self._connections.append(nc)
            orchestrator = Orchestrator(nc, self.settings, catalog=catalog)
            self.services.append(orchestrator)
            self._tasks.append(asyncio.create_task(orchestrator.run(self._stop)))
        for _ in range(self.workers):
            nc = await connect(self.settings.nats_url, name="test-worker")
            self._connections.append(nc)
            worker = Worker(nc, self.settings, specs_for_tests(catalog))
            self.services.append(worker)
            await worker.setup()  # tools registered before the first request
            self._tasks.append(asyncio.create_task(worker.run(self._stop)))
        self.client = await Client.connect(self.settings.nats_url, settings=self.settings)
        await eventually(lambda: tools_registered(self.client.js, self.settings, "calculator"))
        return self

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            if task.done() and task.exception():
                raise task.exception()  # type: ignore[misc]
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 30)
        await self.client.close()
        for nc in self._connections:
            await nc.close()


def service_processes(
    url: str, prefix: str, log_dir: Path, env: dict[str, str] | None = None
) -> ServiceProcesses:
    """jetagent services as processes that tests can SIGKILL, serving the test tools."""
    return ServiceProcesses(
        url,
        prefix,
        log_dir,
        env={"JETAGENT_TOOLS": "tests.support.tools:TEST_TOOLS", **(env or {})},
        cwd=ROOT,
    )
