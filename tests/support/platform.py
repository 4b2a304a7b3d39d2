"""The platform for tests: in-process services, or real processes that tests can SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nats.js.errors import NoKeysError

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.jetstream import connect
from jetagent.models import ModelCatalog
from jetagent.orchestrator import Orchestrator
from jetagent.worker import CapabilitySpec
from jetagent.worker._runtime import Worker
from tests.support.tools import TEST_TOOLS

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns a truthy value (or raise after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


async def tool_registered(client: Client, settings: Settings, name: str) -> bool:
    """Whether a tools worker has announced the tool ``name`` (services started)."""
    try:
        kv = await client.js.key_value(settings.names.bucket("REGISTRY"))
        return f"tool.{name}" in await kv.keys()
    except Exception:  # not provisioned yet, or no keys yet
        return False


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
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _connections: list[Any] = field(default_factory=list)

    async def start(self) -> InProcessPlatform:
        catalog = self.catalog or ModelCatalog.load()
        for _ in range(self.orchestrators):
            nc = await connect(self.settings.nats_url, name="test-orchestrator")
            self._connections.append(nc)
            orchestrator = Orchestrator(nc, self.settings, catalog=catalog)
            self._tasks.append(asyncio.create_task(orchestrator.run(self._stop)))
        for _ in range(self.workers):
            nc = await connect(self.settings.nats_url, name="test-worker")
            self._connections.append(nc)
            worker = Worker(nc, self.settings, specs_for_tests(catalog))
            await worker.setup()  # tools registered before the first request
            self._tasks.append(asyncio.create_task(worker.run(self._stop)))
        self.client = await Client.connect(self.settings.nats_url, settings=self.settings)
        await eventually(self._tools_known)
        return self

    async def _tools_known(self) -> bool:
        kv = await self.client.js.key_value(self.settings.names.bucket("REGISTRY"))
        try:
            return "tool.calculator" in await kv.keys()
        except NoKeysError:
            return False

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            if task.done() and task.exception():
                raise task.exception()  # type: ignore[misc]
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 30)
        await self.client.close()
        for nc in self._connections:
            await nc.close()


@dataclass
class ServiceProcesses:
    """jetagent services as real processes (``python -m jetagent.cli ...``)."""

    url: str
    prefix: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "NATS_URL": self.url,
            "JETAGENT_PREFIX": self.prefix,
            "JETAGENT_TENANTS": "*",
            "JETAGENT_TOOLS": "tests.support.tools:TEST_TOOLS",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "jetagent.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL: the process dies mid-work, as a crash would."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
