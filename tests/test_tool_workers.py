"""Tool workers a user can deploy: the process pool's size, dedicated tools' workers
started by ``jetagent up``, and a clear answer for a tool no running worker serves."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from capabilities.reasoning.capability import reasoning_capabilities
from capabilities.tools.capability import tools_capability
from jetagent.cli._services import capability_specs
from jetagent.client import Client, RequestRejectedError
from jetagent.config import Settings
from jetagent.jetstream import connect
from jetagent.models import ModelCatalog
from jetagent.orchestrator import Orchestrator
from jetagent.testing import SupervisedProcess, eventually
from jetagent.worker import CapabilitySpec
from jetagent.worker._runtime import Worker
from jetagent.worker.tools import ToolBox
from tests.support.cli import JETAGENT
from tests.support.dedicated_tools import TOOLS, heavy

ROOT = Path(__file__).resolve().parents[1]


def _box(spec: CapabilitySpec) -> ToolBox:
    box = getattr(spec.handler, "__self__", None)  # the handler is ToolBox.serve
    assert isinstance(box, ToolBox)
    return box


def test_the_tools_pool_size_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENT_TOOL_PROCESSES", "3")
    settings = Settings()
    assert settings.tool_processes == 3
    [spec] = capability_specs(
        ["tools"], ModelCatalog.load(), tool_processes=settings.tool_processes
    )
    assert _box(spec).processes == 3
    # Unset: one process per CPU, as before.
    assert _box(tools_capability()).processes == (os.cpu_count() or 2)
    monkeypatch.setenv("JETAGENT_TOOL_PROCESSES", "0")
    with pytest.raises(ValueError, match="tool_processes"):
        Settings()


def _start_up(tmp_path: Path, env: dict[str, str]) -> SupervisedProcess:
    return SupervisedProcess(
        "up",
        [str(JETAGENT), "up", "--data-dir", str(tmp_path / "data")],
        log_file=tmp_path / "up.log",
        env=env,
        cwd=tmp_path,  # not the repository: the tool module comes from PYTHONPATH
    ).start()


def _up_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "JETAGENT_PREFIX")}
    env.update(
        JETAGENT_METRICS_PORT="0",
        JETAGENT_TOOLS="tests.support.dedicated_tools:TOOLS",
        PYTHONPATH=str(ROOT),
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    return env


async def _consumer_exists(url: str, consumer: str) -> bool:
    nc = await connect(url, name="test")
    try:
        await nc.jetstream().consumer_info("JA_WORKFLOWS", consumer)
        return True
    except NotFoundError:
        return False
    finally:
        await nc.close()


def test_up_starts_a_worker_for_each_dedicated_tool(tmp_path: Path) -> None:
    assert JETAGENT.exists(), f"the console script is not installed at {JETAGENT}"
    with _start_up(tmp_path, _up_env()) as process:
        output = process.wait_for_output("jetagent is up", timeout=90)
        assert "jetagent is up" in output, output
        # The dedicated tool's worker is one of the services up started...
        assert "started tools-heavy" in output, output
        url = re.search(r"nats://127\.0\.0\.1:\d+", output)
        assert url is not None, output
        # ...and it serves: its own durable consumer exists.
        asyncio.run(eventually(lambda: _consumer_exists(url[0], "cap-tools-heavy"), timeout=60))
        process.send_signal(signal.SIGINT, group=True)
        process.wait(60)
        rest = process.output[len(output) :]
    assert process.returncode == 0, rest


def test_up_refuses_when_a_tool_module_cannot_be_imported(tmp_path: Path) -> None:
    env = _up_env()
    env["JETAGENT_TOOLS"] = "no_such_module_anywhere:TOOLS"
    with _start_up(tmp_path, env) as process:
        process.wait(60)
        output = process.output
    assert process.returncode == 2, output
    assert "no_such_module_anywhere" in output
    assert "PYTHONPATH" in output
    assert "started" not in output  # nothing was started, not even the server
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


async def _submit_heavy(client: Client) -> str:
    return await client.submit(
        instruction='call heavy {"x": 21}', tenant="t", allowed_tools=["heavy"]
    )


async def test_a_request_naming_an_unserved_dedicated_tool_says_which_worker_to_start(
    settings: Settings,
) -> None:
    catalog = ModelCatalog.load()
    stop = asyncio.Event()
    connections = [await connect(settings.nats_url, name="t") for _ in range(4)]
    reasoning, _, _ = reasoning_capabilities(catalog)
    # A shared tools worker knows the dedicated tool (and announces it) but does not serve it.
    shared = Worker(connections[1], settings, [reasoning, tools_capability(TOOLS)])
    await shared.setup()
    tasks = [
        asyncio.create_task(Orchestrator(connections[0], settings, catalog=catalog).run(stop)),
        asyncio.create_task(shared.run(stop)),
    ]
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        first = await _submit_heavy(client)
        with pytest.raises(RequestRejectedError) as rejected:
            await client.result(first, timeout=30)
        reasons = " ".join(rejected.value.reasons)
        assert "tool 'heavy' is known but no running worker serves it" in reasons, reasons
        assert "start `jetagent worker tools --only heavy`" in reasons, reasons

        # Its worker starts: the same request is now served.
        dedicated = Worker(connections[2], settings, [tools_capability(TOOLS, only=["heavy"])])
        tasks.append(asyncio.create_task(dedicated.run(stop)))

        async def served() -> object:
            workflow = await _submit_heavy(client)
            try:
                return await client.result(workflow, timeout=30)
            except RequestRejectedError:
                return None

        result = await eventually(served, timeout=30, interval=0.5)
        assert "42" in result.output, result  # type: ignore[attr-defined]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await client.close()
        for nc in connections:
            await nc.close()
    assert heavy.dedicated


async def test_with_a_tool_wait_a_request_waits_for_its_tools_worker(settings: Settings) -> None:
    settings = settings.model_copy(update={"tool_wait_s": 30.0})
    catalog = ModelCatalog.load()
    stop = asyncio.Event()
    connections = [await connect(settings.nats_url, name="t") for _ in range(3)]
    reasoning, _, _ = reasoning_capabilities(catalog)
    shared = Worker(connections[1], settings, [reasoning, tools_capability(TOOLS)])
    await shared.setup()
    tasks = [
        asyncio.create_task(Orchestrator(connections[0], settings, catalog=catalog).run(stop)),
        asyncio.create_task(shared.run(stop)),
    ]
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        # Submitted before the dedicated tool's worker runs: held, not refused...
        workflow = await _submit_heavy(client)
        with pytest.raises(TimeoutError):
            await client.result(workflow, timeout=2)
        # ...and served once the worker is up.
        dedicated = Worker(connections[2], settings, [tools_capability(TOOLS, only=["heavy"])])
        tasks.append(asyncio.create_task(dedicated.run(stop)))
        result = await client.result(workflow, timeout=40)
        assert result.ok, result
        assert "42" in result.output, result
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await client.close()
        for nc in connections:
            await nc.close()
