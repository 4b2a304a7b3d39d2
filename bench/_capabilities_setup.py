"""What the ``capabilities`` suite drives, and how.

Workers are real ``jetagent worker`` processes (``bench._services``); nothing else of
the platform runs. :class:`StepDriver` plays the orchestrator's part: it publishes
``StepScheduled`` events to ``JA_WORKFLOWS`` as the orchestrator writes them (subject
``<prefix>.wf.<workflow_id>.StepScheduled.<capability>[.<tool>]``, body
``encode_events([step])``, the ``Ja-Event`` / ``Ja-Workflow`` headers) and counts the
``StepResult`` messages the worker writes to ``JA_STEPS`` with one core subscription.
Reasoning steps are made by the pure ``decide`` from a request, so their input is
exactly what the orchestrator would schedule (conversation, tool specs, budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from capabilities.tools.capability import tools_capability
from jetagent.config import Settings
from jetagent.contract import ContextMessage, ModelPreferences, SessionContext, WorkflowRequest
from jetagent.events import (
    Spend,
    StepResult,
    StepScheduled,
    decode_step_result,
    encode_events,
    subject_tail,
)
from jetagent.jetstream.provision import provision
from jetagent.models import ModelCatalog
from jetagent.testing import SupervisedProcess, eventually, tools_registered
from jetagent.workflow import Begin, DecideContext, WorkflowState, decide

from ._history import SYSTEM_PROMPT
from ._services import Loop
from ._serving import ROOT, start_server

__all__ = [
    "MODEL",
    "BareWorker",
    "LlmServer",
    "StepDriver",
    "bare_worker",
    "catalog_toml",
    "llm_server",
    "reasoning_step",
    "tool_step",
    "wait_for_worker",
]

MODEL = "bench-zero"


def tool_step(tool: str, arguments: dict[str, Any], *, tenant: str = "bench") -> StepScheduled:
    """A tool step as the orchestrator schedules it (``_next_tool``'s input)."""
    workflow_id = str(uuid.uuid4())
    return StepScheduled(
        workflow_id=workflow_id,
        at=datetime.now(UTC),
        step_id="s2",
        capability="tools",
        tool=tool,
        iteration=1,
        input={
            "call_id": "call_1_1",
            "tool": tool,
            "arguments": arguments,
            "session_id": workflow_id,  # a request without a session id is its own session
        },
        reservation=Spend(),
        tenant=tenant,
    )


def _request_for_reasoning() -> WorkflowRequest:
    return WorkflowRequest(
        tenant="bench",
        instruction="What do Contoso's two open invoices add up to?",
        session_context=SessionContext(
            messages=[
                ContextMessage(role="system", content=SYSTEM_PROMPT),
                ContextMessage(role="user", content="Which invoices of Contoso are still open?"),
                ContextMessage(
                    role="assistant",
                    content="Contoso has two open invoices: INV-2291 (EUR 1,240.00, due "
                    "2026-12-01) and INV-2304 (EUR 380.50, due 2026-12-15).",
                ),
            ],
            facts={"customer": "Contoso Ltd", "account manager": "J. Alvarez"},
        ),
        model_preferences=ModelPreferences(models=[MODEL]),
    )


def reasoning_step(catalog: ModelCatalog) -> StepScheduled:
    """The first reasoning step of a new workflow, as ``decide`` schedules it, with the
    built-in tools registered."""
    request = _request_for_reasoning()
    tools = {t.spec.name: t.info() for t in tools_capability().tools}
    ctx = DecideContext(models=catalog.models, tools=tools)
    begin = Begin(
        workflow_id=str(uuid.uuid4()),
        tenant=request.tenant,
        request=request.model_dump(mode="json"),
        at=datetime.now(UTC),
    )
    events = decide(WorkflowState(), begin, ctx)
    step = events[-1]
    if not isinstance(step, StepScheduled) or step.capability != "reasoning":
        raise RuntimeError(f"decide scheduled no reasoning step: {events!r}")
    return step


def catalog_toml(port: int) -> str:
    """A model catalog whose one model is served by the local zero-latency server."""
    return f"""
[models.{MODEL}]
provider = "openai"
base_url = "http://127.0.0.1:{port}/v1"
context_window = 128000
max_output_tokens = 1024
input_per_mtok = 0.15
output_per_mtok = 0.60
cached_per_mtok = 0.075
typical_latency_s = 1.0
"""


@dataclass
class _Waiting:
    started: float
    future: asyncio.Future[tuple[float, StepResult]]


@dataclass
class StepDriver:
    """Publishes steps for one prefix and collects their results (on ``loop``)."""

    loop: Loop
    settings: Settings
    _waiting: dict[str, _Waiting] = field(default_factory=dict)
    _sub: Any = None
    _remaining: int = 0
    _all_done: asyncio.Event | None = None
    _last_arrival: float = 0.0
    _failed: list[StepResult] = field(default_factory=list)

    async def open(self) -> None:
        names = self.settings.names
        self._sub = await self.loop.nc.subscribe(names.all_step_results, cb=self._on_result)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_result(self, msg: Msg) -> None:
        arrived = time.perf_counter()
        result = decode_step_result(msg.data)
        if not _succeeded(result):
            self._failed.append(result)
        waiting = self._waiting.pop(result.workflow_id, None)
        if waiting is not None and not waiting.future.done():
            waiting.future.set_result((arrived, result))
        if self._all_done is not None:
            self._remaining -= 1
            self._last_arrival = arrived
            if self._remaining <= 0:
                self._all_done.set()

    async def _publish(self, step: StepScheduled) -> None:
        names = self.settings.names
        subject = f"{names.workflow_root}.{step.workflow_id}.{subject_tail(step)}"
        headers = {"Ja-Event": "StepScheduled", "Ja-Workflow": step.workflow_id}
        await self.loop.js.publish(subject, encode_events([step]), headers=headers)

    def _check(self) -> None:
        if self._failed:
            failed, self._failed = self._failed, []
            raise RuntimeError(f"{len(failed)} step(s) failed, e.g. {failed[0]!r}")

    async def one(self, step: StepScheduled, timeout: float = 30.0) -> tuple[float, StepResult]:
        """Publish one step; (ms from publishing to its result arriving, the result)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[float, StepResult]] = loop.create_future()
        started = time.perf_counter()
        self._waiting[step.workflow_id] = _Waiting(started, future)
        await self._publish(step)
        arrived, result = await asyncio.wait_for(future, timeout)
        self._check()
        return (arrived - started) * 1000, result

    async def throughput(
        self, steps: Sequence[StepScheduled], *, window: int = 256, timeout: float = 120.0
    ) -> float:
        """Publish every step (``window`` publishes in flight); steps per second from the
        first publish to the last result."""
        self._remaining = len(steps)
        self._all_done = asyncio.Event()
        try:
            started = time.perf_counter()
            for first in range(0, len(steps), window):
                await asyncio.gather(*(self._publish(s) for s in steps[first : first + window]))
            await asyncio.wait_for(self._all_done.wait(), timeout)
        finally:
            self._all_done = None
        self._check()
        return len(steps) / (self._last_arrival - started)


def _succeeded(result: StepResult) -> bool:
    if not result.ok:
        return False
    answer = result.output.get("result")
    if isinstance(answer, dict) and "ok" in answer:  # the python tool's report
        return bool(answer["ok"])
    return "error" not in result.output


async def wait_for_worker(
    loop: Loop,
    settings: Settings,
    consumer: str,
    alive: Callable[[], None],
    *,
    tools: bool = False,
    timeout: float = 60.0,
) -> None:
    """Until the worker's durable consumer exists (and, with ``tools``, the registry
    has the tools); ``alive`` raises if the worker died."""
    names = settings.names

    async def up() -> bool:
        try:
            await loop.js.consumer_info(names.workflows_stream, consumer)
        except NotFoundError:
            return False
        return not tools or await tools_registered(loop.js, settings, "python")

    await eventually(up, timeout=timeout, alive=alive, what=f"{consumer} up")


# ------------------------------------------------------------------ processes


class LlmServer:
    """``bench._llm_server`` as a process of its own."""

    def __init__(self, folder: Path) -> None:
        self.process, self.port = start_server("bench._llm_server", folder, "llm-server")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._http = httpx.Client(timeout=10.0, trust_env=False)

    def server_times_us(self) -> list[float]:
        """The server's own time per completion since the last call, in arrival order."""
        response = self._http.get(f"http://127.0.0.1:{self.port}/stats")
        response.raise_for_status()
        times: list[float] = msgspec.json.decode(response.content)["server_us"]
        return times

    def close(self) -> None:
        self._http.close()
        self.process.close(timeout=10)


@contextlib.contextmanager
def llm_server(folder: Path) -> Iterator[LlmServer]:
    server = LlmServer(folder)
    try:
        yield server
    finally:
        server.close()


class BareWorker:
    """``bench._bare_tool_worker`` on a provisioned prefix of its own."""

    def __init__(self, loop: Loop, settings: Settings, log: Path) -> None:
        loop.run(provision(loop.nc, settings))
        self.process = SupervisedProcess(
            "bare worker",
            [sys.executable, "-m", "bench._bare_tool_worker", settings.nats_url, settings.prefix],
            log_file=log,
            cwd=ROOT,
        ).start()

    def alive(self) -> None:
        self.process.check_alive()

    def close(self) -> None:
        self.process.close(timeout=10)


@contextlib.contextmanager
def bare_worker(loop: Loop, settings: Settings, log: Path) -> Iterator[BareWorker]:
    worker = BareWorker(loop, settings, log)
    try:
        yield worker
    finally:
        worker.close()
