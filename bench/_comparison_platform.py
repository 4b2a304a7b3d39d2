"""jetagent as the ``comparison`` suite deploys it: separate service processes, one client.

:class:`ComparisonPlatform` starts, under a prefix of its own on the suite's
nats-server, what a deployment of this workload runs (each a ``jetagent`` CLI process,
through ``bench._services``): the orchestrator, ``worker reasoning`` and ``worker
tools`` replicas, and ``worker tools --only crunch`` — the CPU-bound tool's dedicated
pool, with ``JETAGENT_TOOL_PROCESSES`` processes. The scripted model is a catalog entry
(``JETAGENT_MODELS``) pointing at ``bench._comparison_server``; the tools come from
``JETAGENT_TOOLS=bench._comparison_tools:TOOLS``.

:meth:`ComparisonPlatform.run` submits each session with ``Client.submit`` at its
arrival time and notices its end on one core-NATS subscription to the final events;
latency is from the scheduled arrival to the final event reaching this process. After
the run it reads every ``StepResult`` of the run back from ``JA_STEPS`` for the cost
each capability was attributed and the provider calls each step recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvloop
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.contract import CapabilityLimits, ModelPreferences, WorkflowRequest
from jetagent.events import Finalized, StepResult, decode_events, decode_step_result
from jetagent.jetstream import DirectGetter
from jetagent.testing import eventually, tools_registered

from ._comparison_workload import Session, instruction
from ._services import bench_services

__all__ = ["ComparisonPlatform", "Deployment", "PlatformRun", "comparison_platform"]

MODEL = "scripted"
_FINALS = ("Finalized", "Terminated", "Cancelled", "RequestRejected")


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """How many of each service (the suite's notes say why these numbers)."""

    orchestrators: int = 1
    reasoning: int = 2
    tools: int = 2
    crunch: int = 1
    crunch_processes: int = 2
    concurrency: int = 64
    """``JETAGENT_WORKER_CONCURRENCY``: steps one worker runs at once."""

    def describe(self) -> str:
        return (
            f"{self.orchestrators} orchestrator, {self.reasoning} `worker reasoning`, "
            f"{self.tools} `worker tools`, {self.crunch} `worker tools --only crunch` "
            f"({self.crunch_processes} pool processes); worker concurrency {self.concurrency}"
        )


def catalog_toml(port: int, typical_latency_s: float, timeout_s: float) -> str:
    """The scripted model: hedged after 2 x ``typical_latency_s`` (the default), and the
    same per-call timeout as the monolith's per-attempt one (``timeout_s``)."""
    return f"""
[models.{MODEL}]
provider = "openai"
base_url = "http://127.0.0.1:{port}/v1"
context_window = 128000
max_output_tokens = 1024
input_per_mtok = 0.15
output_per_mtok = 0.60
cached_per_mtok = 0.075
typical_latency_s = {typical_latency_s}

[models.{MODEL}.timeouts]
read_s = {timeout_s}
total_s = {timeout_s}
"""


@dataclass
class PlatformRun:
    """What one run of sessions gave."""

    outcomes: dict[str, dict[str, Any]]
    """Per session: ``answer`` (or ``None``), ``error``, ``latency_s``, ``done_s``."""
    cost_usd: dict[str, float] = field(default_factory=dict)
    """USD attributed per capability (from the StepResults' CallRecords)."""
    call_outcomes: dict[str, int] = field(default_factory=dict)
    """Provider calls recorded in StepResults, by outcome."""
    step_results: dict[str, int] = field(default_factory=dict)
    """StepResults per capability."""
    tool_errors: dict[str, int] = field(default_factory=dict)
    """Tool errors recorded in StepResults, by tool and message (digits elided)."""
    steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per session: its StepResults in brief (capability, tool, attempt, deliveries,
    wall-clock start and end, calls and routing kinds), to attribute a slow session."""
    arrivals: dict[str, float] = field(default_factory=dict)
    """Per session: its scheduled arrival, wall-clock (``time.time()``)."""


@dataclass
class _Run:
    due: dict[str, float]
    started: float
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)


class ComparisonPlatform:
    """The services and a client; :meth:`run` runs one schedule of sessions."""

    def __init__(
        self,
        url: str,
        prefix: str,
        log_dir: Path,
        env: Mapping[str, str],
        deployment: Deployment,
    ) -> None:
        self.settings = Settings(nats_url=url, prefix=prefix, tenants="*")
        self.names = self.settings.names
        self.deployment = deployment
        env = {**env, "JETAGENT_WORKER_CONCURRENCY": str(deployment.concurrency)}
        self.services = bench_services(url, prefix, log_dir, env)
        self.loop = uvloop.new_event_loop()
        self.client: Client | None = None
        self._run: _Run | None = None
        try:
            self.services.start("orchestrator", "orchestrator")
            for i in range(deployment.reasoning):
                self.services.start(f"reasoning-{i + 1}", "worker", "reasoning")
            for i in range(deployment.tools):
                self.services.start(f"tools-{i + 1}", "worker", "tools")
            processes = {"JETAGENT_TOOL_PROCESSES": str(deployment.crunch_processes)}
            for i in range(deployment.crunch):
                self.services.start(
                    f"crunch-{i + 1}", "worker", "tools", "--only", "crunch", env=processes
                )
            self.loop.run_until_complete(self._connect())
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> None:
        self.client = await Client.connect(self.settings.nats_url, settings=self.settings)
        nc = self.client.nc
        for final in _FINALS:
            await nc.subscribe(f"{self.names.workflow_root}.*.{final}", cb=self._on_final)
        await eventually(
            self._ready,
            timeout=120,
            interval=0.1,
            alive=self.services.check_alive,
            what="the services up",
        )

    async def _ready(self) -> bool:
        assert self.client is not None
        js = self.client.js
        try:
            for consumer in ("cap-reasoning", "cap-tools", "cap-tools-crunch"):
                await js.consumer_info(self.names.workflows_stream, consumer)
        except NotFoundError:
            return False
        return await tools_registered(js, self.settings, "slow_lookup", "crunch")

    async def _on_final(self, msg: Msg) -> None:
        current = self._run
        if current is None:
            return
        arrived = asyncio.get_running_loop().time()
        event = decode_events(msg.data)[-1]
        sid = event.workflow_id
        if sid not in current.due or sid in current.outcomes:
            return
        if isinstance(event, Finalized):
            answer, error = event.output, None
        else:
            answer, error = None, f"{type(event).__name__}: {_why(event)}"
        current.outcomes[sid] = {
            "answer": answer,
            "error": error,
            "latency_s": arrived - current.due[sid],
            "done_s": arrived - current.started,
        }
        if len(current.outcomes) == len(current.due):
            current.all_done.set()

    def run(self, sessions: list[Session], *, timeout_s: float) -> PlatformRun:
        return self.loop.run_until_complete(self._run_sessions(sessions, timeout_s))

    async def _run_sessions(self, sessions: list[Session], timeout_s: float) -> PlatformRun:
        assert self.client is not None
        client = self.client
        first_seq = (await client.js.stream_info(self.names.steps_stream)).state.last_seq + 1
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        current = _Run(due={s.sid: start + s.arrival_s for s in sessions}, started=start)
        self._run = current

        async def submit(session: Session) -> None:
            await asyncio.sleep(max(0.0, current.due[session.sid] - loop.time()))
            request = WorkflowRequest(
                request_id=session.sid,
                tenant="bench",
                instruction=instruction(session),
                model_preferences=ModelPreferences(models=[MODEL], max_output_tokens=256),
                allowed_tools=["slow_lookup", "crunch"],
                capability_limits=CapabilityLimits(max_iterations=12),
            )
            await client.submit(request)

        try:
            async with asyncio.TaskGroup() as tasks:
                for session in sessions:
                    tasks.create_task(submit(session))
            last_due = max(current.due.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    current.all_done.wait(), max(1.0, last_due + timeout_s - loop.time())
                )
        finally:
            self._run = None
        for session in sessions:
            current.outcomes.setdefault(
                session.sid,
                {"answer": None, "error": f"no end within {timeout_s:.0f} s", "latency_s": None},
            )
        run = PlatformRun(outcomes=current.outcomes)
        wall = time.time() - loop.time()
        run.arrivals = {sid: wall + due for sid, due in current.due.items()}
        await self._read_results(first_seq, set(current.due), run)
        return run

    async def _read_results(self, first_seq: int, sids: set[str], run: PlatformRun) -> None:
        assert self.client is not None
        reader = DirectGetter(self.client.nc, self.names.steps_stream, timeout=10)
        await reader.open()
        try:
            records = await reader.scan(self.names.all_step_results, start_seq=first_seq)
        finally:
            await reader.close()
        cost: dict[str, Decimal] = {}
        calls: Counter[str] = Counter()
        steps: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for record in records:
            result = decode_step_result(record.data)
            if result.workflow_id not in sids:
                continue
            steps[result.capability] += 1
            run.steps.setdefault(result.workflow_id, []).append(_brief(result))
            error = result.output.get("error") if result.capability == "tools" else None
            if error is not None or not result.ok:
                # A tool error the model was shown (or a failed step): why an answer is off.
                text = str(error) if error is not None else repr(result.error)
                errors[f"{result.tool}: {_shape(text)}"] += 1
            for call in result.calls:
                calls[call.outcome] += 1
                cost[result.capability] = cost.get(result.capability, Decimal(0)) + (
                    call.cost_usd or Decimal(0)
                )
            cost.setdefault(result.capability, Decimal(0))
        run.cost_usd = {k: float(v) for k, v in cost.items()}
        run.call_outcomes = dict(calls)
        run.step_results = dict(steps)
        run.tool_errors = dict(errors)

    def close(self) -> None:
        try:
            if self.client is not None and not self.loop.is_closed():
                client, self.client = self.client, None
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(client.close())
        finally:
            self.services.stop_all()
            if not self.loop.is_closed():
                self.loop.close()


def _brief(result: StepResult) -> dict[str, Any]:
    return {
        "capability": result.capability,
        "tool": result.tool,
        "attempt": result.attempt,
        "deliveries": result.deliveries,
        "ok": result.ok,
        "started": result.started_at.timestamp(),
        "finished": result.finished_at.timestamp(),
        "calls": [(c.outcome, c.latency_s) for c in result.calls],
        "routing": [d.reason[:90] for d in result.routing],
        "error": None if result.error is None else result.error.message[:200],
    }


def _shape(text: str) -> str:
    """A message with its numbers elided, so errors group by kind."""
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


def _why(event: Any) -> str:
    for name in ("reason", "reasons", "error"):
        value = getattr(event, name, None)
        if value:
            return str(value)[:300]
    return ""


@contextlib.contextmanager
def comparison_platform(
    url: str, prefix: str, log_dir: Path, env: Mapping[str, str], deployment: Deployment
) -> Iterator[ComparisonPlatform]:
    platform = ComparisonPlatform(url, prefix, log_dir, env, deployment)
    try:
        yield platform
    finally:
        platform.close()
