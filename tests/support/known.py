"""Known workflows for the command-line tests: two tenants, four statuses, known costs.

Ids are chosen so that prefixes are known: ``cafe000`` matches two workflows (ambiguous),
``cafe0001`` one, ``dead`` none.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

from rich.cells import cell_len

from jetagent.config import Settings
from jetagent.contract import Status, WorkflowRequest
from jetagent.embedded import free_port
from jetagent.sessions import SessionView
from jetagent.testing import eventually
from tests.support.cli import arun_cli, cli_env
from tests.support.platform import InProcessPlatform

SIX_SEVEN = "cafe0001-0000-4000-8000-000000000001"
"""acme, finalized, reasoning and tools (the calculator), costs something."""
TOKEN_CAP = "cafe0002-0000-4000-8000-000000000002"
"""acme, terminated by its token cap before any step: costs nothing."""
HELLO = "beef0003-0000-4000-8000-000000000003"
"""beta, finalized, reasoning only, costs something."""
CANCELLED = "beef0004-0000-4000-8000-000000000004"
"""beta, cancelled before it started: costs nothing."""
ALL = [SIX_SEVEN, TOKEN_CAP, HELLO, CANCELLED]
"""In the order they were submitted (oldest first)."""


@dataclass
class Known:
    """The platform, the known workflows' session views, and the CLI's environment."""

    engine: InProcessPlatform
    views: dict[str, SessionView]
    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return self.engine.settings


async def submit_known(engine: InProcessPlatform) -> None:
    """Submit the four workflows one after the other, each to its end."""
    client = engine.client
    await client.submit(
        WorkflowRequest(request_id=SIX_SEVEN, instruction="What is 6 * 7?", tenant="acme")
    )
    await client.result(SIX_SEVEN, timeout=30)
    await client.submit(
        WorkflowRequest(
            request_id=TOKEN_CAP,
            instruction="What is 1 + 1?",
            tenant="acme",
            capability_limits={"token_cap": 100},
        )
    )
    await client.result(TOKEN_CAP, timeout=30)
    await client.submit(
        WorkflowRequest(request_id=HELLO, instruction="Say hello to the team", tenant="beta")
    )
    await client.result(HELLO, timeout=30)
    # A cancel that arrives first is kept; the workflow is cancelled as it starts.
    await client.cancel(CANCELLED, reason="changed my mind")
    await client.submit(
        WorkflowRequest(request_id=CANCELLED, instruction="What is 9 * 9?", tenant="beta")
    )
    await client.result(CANCELLED, timeout=30)


@contextlib.asynccontextmanager
async def running_projection(settings: Settings) -> AsyncIterator[None]:
    """The projection service, live in this event loop (its own /metrics port)."""
    from projections.service import ProjectionService

    own = settings.model_copy(update={"metrics_port": free_port()})
    from jetagent.jetstream import connect

    nc = await connect(own.nats_url, name="test-projections")
    stop = asyncio.Event()
    task = asyncio.create_task(ProjectionService(nc, own).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await nc.close()


async def views_of(engine: InProcessPlatform, ids: list[str]) -> dict[str, SessionView]:
    """The stored session views of ``ids``, once the projection wrote them final."""
    import msgspec
    from nats.js.errors import KeyNotFoundError

    kv = await engine.client.js.key_value(engine.settings.names.bucket("SESSIONS"))

    async def stored() -> dict[str, SessionView] | None:
        found = {}
        for wid in ids:
            try:
                entry = await kv.get(wid)
            except KeyNotFoundError:
                return None
            view = msgspec.json.decode(entry.value or b"{}", type=SessionView)
            if not view.status.is_final:
                return None
            found[wid] = view
        return found

    views: dict[str, SessionView] = await eventually(stored, timeout=30)
    return views


def expected_statuses() -> dict[str, Status]:
    return {
        SIX_SEVEN: Status.FINALIZED,
        TOKEN_CAP: Status.TERMINATED,
        HELLO: Status.FINALIZED,
        CANCELLED: Status.CANCELLED,
    }


def costs(views: dict[str, SessionView]) -> dict[str, Decimal]:
    return {wid: view.cost_usd for wid, view in views.items()}


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return cli_env(settings.nats_url, settings.prefix, **extra)


async def run_many(
    commands: list[list[str]], env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI commands two at a time (the box has two cores)."""
    gate = asyncio.Semaphore(2)

    async def one(args: list[str]) -> subprocess.CompletedProcess[str]:
        async with gate:
            return await arun_cli(*args, env=env, timeout=60)

    return list(await asyncio.gather(*(one(c) for c in commands)))


_BOX = re.compile(r"[\u2500-\u257f]")
"""Box-drawing characters: table borders and rules, not words."""


def assert_readable(output: str, width: int, what: object = "") -> None:
    """No line wider than ``width`` cells; no line that is a single word (what a table
    squeezed into a narrow terminal prints, cell by cell); table borders are not words."""
    for line in output.splitlines():
        assert cell_len(line) <= width, f"{what}: {cell_len(line)} > {width}: {line!r}\n{output}"
        words = _BOX.sub(" ", line).split()
        assert len(words) != 1, f"{what}: a line of one word: {line!r}\n{output}"


def one_error_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for text in expected:
        assert text in lines[0], output
    return lines[0]
