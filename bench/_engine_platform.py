"""The workflow engine as the ``engine`` suite runs it: real service processes, one client.

:class:`EnginePlatform` starts ``k`` orchestrator and ``m`` worker processes (through
``bench._engine_service``, i.e. the ``jetagent`` CLI) under a prefix of their own on the
suite's nats-server, and a :class:`jetagent.client.Client` on an event loop owned by the
calling thread. Workflows are submitted with ``Client.submit``; their ends are noticed by
one core-NATS subscription on ``<prefix>.wf.*.*`` (every event but ``StepScheduled``),
which is lighter for the server than ``Client.result``'s ordered consumer per workflow.
Step timings are read back from the stream after a run, so the measured window has no
client-side decoding in it. (Over 400 lines: one class and its records — the platform
as the ``engine``, ``cluster`` and ``scaling`` suites drive it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import signal
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.contract import WorkflowRequest
from jetagent.events import (
    Finalized,
    Started,
    StepCompleted,
    StepResult,
    StepScheduled,
    decode_events,
    decode_step_result,
)
from jetagent.jetstream import DirectGetter, Record
from jetagent.testing import eventually, tools_registered, wait_until

from ._engine_service import PROFILE_ENV
from ._profile import process_cpu
from ._services import THIS_CODE, ServiceCode, bench_services

__all__ = [
    "ENGINE_WORKLOAD",
    "INSTRUCTION",
    "SEGMENTS",
    "STEPS_PER_WORKFLOW",
    "EnginePlatform",
    "RoundTimeout",
    "StepTiming",
    "ThroughputRun",
    "Workload",
    "engine_platform",
    "percentile",
    "server_time",
]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = "What is 3 * 4? Then add 2 to the result then add 5 to the result"
"""reasoning → calculator → reasoning → calculator → reasoning → calculator → reasoning."""
STEPS_PER_WORKFLOW = 7
ANSWER = "Final answer: 19"
_READ_BACK_TRIES = 40
"""Reads of a run's steps before its count is trusted short: on a replicated stream a
direct get may be answered by a follower a few messages behind (docs/ARCHITECTURE.md)."""
_FINAL_EVENTS = frozenset({"Finalized", "Terminated", "Cancelled", "RequestRejected"})


SEGMENTS = (
    "orchestrator: take the input, decide, append the 1st event (StepCompleted or Started)",
    "orchestrator: append StepScheduled (a 2nd round trip to the server)",
    "server → worker: deliver StepScheduled; the worker decodes it, starts the step",
    "worker: the handler (offline deterministic provider or calculator); StepResult built",
    "worker: publish StepResult until the server stored it",
    "server → orchestrator: deliver StepResult; the orchestrator takes it",
)
"""A step's round trip, cut at each time recorded in the streams (in order)."""


def server_time(record: Record) -> dt.datetime:
    """The time the server stored a record (``Nats-Time-Stamp``, ns → µs)."""
    stamp = record.headers["Nats-Time-Stamp"].removesuffix("Z")
    whole, _, fraction = stamp.partition(".")
    return dt.datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")


def _ms(a: dt.datetime, b: dt.datetime) -> float:
    return (b - a).total_seconds() * 1000


@dataclass(frozen=True)
class Workload:
    """What every workflow of a run asks, the end its final output must have, and how
    many steps that takes (the offline deterministic provider and the calculator)."""

    instruction: str
    answer: str
    steps: int


ENGINE_WORKLOAD = Workload(instruction=INSTRUCTION, answer=ANSWER, steps=STEPS_PER_WORKFLOW)
"""The ``engine`` suite's 7-step workflow."""


class RoundTimeout(RuntimeError):
    """Not every workflow of a run ended within its time; how many did is kept."""

    def __init__(self, message: str, *, ended: int, expected: int, steps: int) -> None:
        super().__init__(message)
        self.ended = ended
        self.expected = expected
        self.steps = steps
        """Steps completed when the time ran out."""


@dataclass(frozen=True)
class StepTiming:
    """One step's timeline: orchestrator decision times, server store times, handler times."""

    capability: str
    first: bool
    """The workflow's first step: its decision also loaded the new workflow."""
    scheduled_at: dt.datetime
    """``StepScheduled.at``: when the orchestrator took the input that scheduled it."""
    previous_stored: dt.datetime
    """When the server stored the workflow's event before ``StepScheduled`` (the
    ``StepCompleted`` of the step before, or ``Started``): the decision's first append."""
    scheduled_stored: dt.datetime
    """When the server stored ``StepScheduled``."""
    started_at: dt.datetime
    """``StepResult.started_at``: the worker began the step (decoded, before the handler)."""
    finished_at: dt.datetime
    """``StepResult.finished_at``: the handler's result was built."""
    result_stored: dt.datetime
    """When the server stored the ``StepResult``."""
    completed_at: dt.datetime
    """``StepCompleted.at``: when the orchestrator took the result."""

    @property
    def total_ms(self) -> float:
        return _ms(self.scheduled_at, self.completed_at)

    def segments(self) -> dict[str, float]:
        """The step's round trip cut at each recorded time (ms)."""
        return {
            SEGMENTS[0]: _ms(self.scheduled_at, self.previous_stored),
            SEGMENTS[1]: _ms(self.previous_stored, self.scheduled_stored),
            SEGMENTS[2]: _ms(self.scheduled_stored, self.started_at),
            SEGMENTS[3]: _ms(self.started_at, self.finished_at),
            SEGMENTS[4]: _ms(self.finished_at, self.result_stored),
            SEGMENTS[5]: _ms(self.result_stored, self.completed_at),
        }


@dataclass(frozen=True)
class ThroughputRun:
    steps: int
    wall: float
    timings: Sequence[StepTiming] = ()
    """Every step's timeline, when the run was asked to read them back."""

    @property
    def rate(self) -> float:
        return self.steps / self.wall


@dataclass
class _Round:
    """What the core subscription saw during one run."""

    expected: set[str]
    finals: dict[str, str] = field(default_factory=dict)
    """Workflow id → its final event's name."""
    completed_steps: int = 0
    waiter: asyncio.Future[None] | None = None
    awaited: str | None = None


class EnginePlatform:
    """Orchestrator and worker processes on their own prefix, and a client for them."""

    def __init__(
        self,
        url: str,
        prefix: str,
        log_dir: Path,
        *,
        orchestrators: int = 1,
        workers: int = 1,
        profile_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        workload: Workload = ENGINE_WORKLOAD,
        worker_groups: Sequence[Sequence[str]] = (("reasoning", "tools"),),
        code: ServiceCode = THIS_CODE,
    ) -> None:
        self.url = url
        self.workload = workload
        self.settings = Settings(nats_url=url, prefix=prefix, tenants="*")
        self.names = self.settings.names
        self.log_dir = log_dir
        self.profile_dir = profile_dir
        self.code = code
        self.services = bench_services(url, prefix, log_dir, env, code)
        self.loop = asyncio.new_event_loop()
        self._profile_files: dict[str, Path] = {}
        self._round: _Round | None = None
        self._subs: list[Subscription] = []
        self._dead_letters: list[str] = []
        self.client: Client | None = None
        try:
            for i in range(orchestrators):
                self._start(f"orchestrator-{i + 1}", "orchestrator")
            for i in range(workers):
                for group in worker_groups:
                    # One group (the default): ``worker-1``; else ``worker-tools-1``, ...
                    kind = "" if len(worker_groups) == 1 else "-" + "-".join(group)
                    self._start(f"worker{kind}-{i + 1}", "worker", *group)
            self.run(self._connect())
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- processes

    def _start(self, name: str, *args: str) -> None:
        env = {}
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            path = self.profile_dir / f"{self.settings.prefix}-{name}.prof"
            self._profile_files[name] = path
            env[PROFILE_ENV] = str(path)
        self.services.start(name, *args, env=env)

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.services.processes.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each service process."""
        out = {}
        for name, pid in self.pids.items():
            used = process_cpu(pid)
            if used is not None:
                out[name] = used
        return out

    # ---------------------------------------------------------------- profiling

    @property
    def profilable(self) -> bool:
        return bool(self._profile_files)

    def profile_start(self) -> None:
        """Start cProfile in every service process (and wait until each has)."""
        for name, path in self._profile_files.items():
            for stale in (path, path.with_name(path.name + ".on")):
                stale.unlink(missing_ok=True)
            self.services[name].send_signal(signal.SIGUSR1)
        for path in self._profile_files.values():
            _wait_for(path.with_name(path.name + ".on"))

    def profile_stop(self) -> dict[str, Path]:
        """Stop cProfile in every service process; their ``.prof`` files by process name."""
        for name in self._profile_files:
            self.services[name].send_signal(signal.SIGUSR2)
        for path in self._profile_files.values():
            _wait_for(path)
            path.with_name(path.name + ".on").unlink(missing_ok=True)
        return dict(self._profile_files)

    # ------------------------------------------------------------------- client

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _connect(self) -> None:
        self.client = await Client.connect(self.url, settings=self.settings)
        nc = self.client.nc
        self._subs = [
            await nc.subscribe(self.names.all_workflows, cb=self._on_event),
            await nc.subscribe(self.names.all_dead_letters, cb=self._on_dead_letter),
        ]
        js = self.client.js
        await eventually(
            lambda: tools_registered(js, self.settings, "calculator"),
            timeout=60,
            alive=self.services.check_alive,
            what="the workers registering the calculator",
        )

    async def _on_dead_letter(self, msg: Msg) -> None:
        """A service gave up on a message: the run cannot be right; say why at once."""
        self._dead_letters.append(msg.data.decode(errors="replace")[:2000])
        current = self._round
        if current is not None and current.waiter is not None and not current.waiter.done():
            current.waiter.set_result(None)

    async def _diagnose(self, workflow_ids: Sequence[str]) -> str:
        """What the streams and consumers say about workflows that did not end."""
        assert self.client is not None
        lines = []
        reader = DirectGetter(self.client.nc, self.names.workflows_stream, timeout=5)
        steps = DirectGetter(self.client.nc, self.names.steps_stream, timeout=5)
        try:
            for workflow_id in workflow_ids:
                events = await reader.scan(self.names.workflow(workflow_id))
                results = await steps.scan(self.names.step_results(workflow_id))
                tails = [r.subject.split(".", 3)[-1] for r in events]
                lines.append(f"workflow {workflow_id}: events {tails}; step results {len(results)}")
            consumers = [
                (self.names.requests_stream, "orchestrator-requests"),
                (self.names.steps_stream, "orchestrator-steps"),
                (self.names.workflows_stream, "cap-reasoning"),
                (self.names.workflows_stream, "cap-tools"),
            ]
            for stream, consumer in consumers:
                info = await self.client.js.consumer_info(stream, consumer)
                lines.append(
                    f"consumer {consumer}: pending {info.num_pending}, ack pending "
                    f"{info.num_ack_pending}, redelivered {info.num_redelivered}, "
                    f"waiting pulls {info.num_waiting}"
                )
        except Exception as exc:
            lines.append(f"(diagnosis failed: {exc!r})")
        finally:
            await reader.close()
            await steps.close()
        return "\n".join(lines)

    def _problems(self) -> str:
        tails = []
        for name, process in self.services.processes.items():
            tails.append(f"--- {name} log (last lines):\n{process.tail(15)}")
        return "\n".join(tails)

    async def _on_event(self, msg: Msg) -> None:
        current = self._round
        if current is None:
            return
        # A message holds one decision's events (e.g. StepCompleted + Finalized).
        for event in decode_events(msg.data):
            kind = type(event).__name__
            workflow_id = event.workflow_id
            if kind == "StepCompleted":
                current.completed_steps += 1
            elif kind in _FINAL_EVENTS and workflow_id in current.expected:
                ok = isinstance(event, Finalized) and event.output.endswith(self.workload.answer)
                current.finals[workflow_id] = kind if ok else f"{kind}: {event!r}"
                done = len(current.finals) == len(current.expected)
                waiter = current.waiter
                wanted = done or current.awaited == workflow_id
                if waiter is not None and wanted and not waiter.done():
                    waiter.set_result(None)

    async def _await(self, current: _Round, workflow_id: str | None, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        while True:
            if self._dead_letters:
                raise RuntimeError(
                    f"a message was dead-lettered: {self._dead_letters[0]}\n{self._problems()}"
                )
            if workflow_id is not None and workflow_id in current.finals:
                return
            if workflow_id is None and len(current.finals) == len(current.expected):
                return
            current.waiter = self.loop.create_future()
            current.awaited = workflow_id
            try:
                await asyncio.wait_for(current.waiter, max(deadline - self.loop.time(), 0.0))
            except TimeoutError:
                self.services.check_alive()
                missing = [w for w in current.expected if w not in current.finals]
                state = await self._diagnose(missing[:3])
                raise RoundTimeout(
                    f"{len(missing)} workflow(s) did not end within {timeout} s\n"
                    f"{state}\n{self._problems()}",
                    ended=len(current.finals),
                    expected=len(current.expected),
                    steps=current.completed_steps,
                ) from None

    @staticmethod
    def _check_outcomes(current: _Round) -> None:
        bad = {wid: how for wid, how in current.finals.items() if how != "Finalized"}
        if bad:
            wid, how = next(iter(bad.items()))
            raise RuntimeError(f"{len(bad)} workflow(s) did not finalize as expected: {wid} {how}")

    async def _submit(self, current: _Round) -> str:
        """Submit one workflow, expected before it is published: under load its final
        event can reach this process in the same read as the publish's acknowledgement."""
        assert self.client is not None
        request = WorkflowRequest(instruction=self.workload.instruction, tenant="bench")
        current.expected.add(request.request_id)
        return await self.client.submit(request)

    # ----------------------------------------------------------------- workloads

    def warm_up(self, workflows: int = 10) -> None:
        self.sequential(workflows)

    def sequential(
        self, workflows: int, *, ended: Callable[[], object] | None = None
    ) -> list[StepTiming]:
        """Run ``workflows`` workflows one after another; every step's timeline.

        ``ended`` is called when the last workflow has ended, before the timelines are
        read back from the streams (to stop a meter there).
        """
        return self.run(self._sequential(workflows, ended))

    async def _sequential(
        self, workflows: int, ended: Callable[[], object] | None = None
    ) -> list[StepTiming]:
        start_wf, start_steps = await self._last_seqs()
        current = _Round(expected=set())
        self._round = current
        try:
            for _ in range(workflows):
                # The id is known only once submitted; the final event comes much later.
                workflow_id = await self._submit(current)
                await self._await(current, workflow_id, 30)
        finally:
            self._round = None
        if ended is not None:
            ended()
        self._check_outcomes(current)
        return await self._all_timings(start_wf, start_steps, current.expected)

    async def _all_timings(
        self, start_wf: int, start_steps: int, workflow_ids: set[str]
    ) -> list[StepTiming]:
        """Every step of ``workflow_ids``, read again while a replica answers short."""
        expected = len(workflow_ids) * self.workload.steps
        for _ in range(_READ_BACK_TRIES):
            timings = await self._timings(start_wf, start_steps, workflow_ids)
            if len(timings) == expected:
                return timings
            await asyncio.sleep(0.05)
        raise RuntimeError(f"expected {expected} steps, read {len(timings)}")

    def concurrent(
        self,
        workflows: int,
        *,
        timeout: float = 60.0,
        window: int | None = None,
        timed: bool = False,
    ) -> ThroughputRun:
        """Submit ``workflows`` workflows at once; steps done until the last one ends.

        ``window``: at most this many submits in flight (``None``: all at once); every
        workflow is submitted without waiting for others to end. ``timeout``: for the
        whole run (:class:`RoundTimeout` when it runs out). ``timed``: read every step's
        timeline back from the streams afterwards (:attr:`ThroughputRun.timings`).
        """
        return self.run(self._concurrent(workflows, timeout=timeout, window=window, timed=timed))

    async def _concurrent(
        self, workflows: int, *, timeout: float, window: int | None, timed: bool
    ) -> ThroughputRun:
        start_wf, start_steps = await self._last_seqs() if timed else (0, 0)
        current = _Round(expected=set())
        self._round = current
        try:
            started = time.perf_counter()
            if window is None:
                await asyncio.gather(*(self._submit(current) for _ in range(workflows)))
            else:
                gate = asyncio.Semaphore(window)

                async def submit() -> None:
                    async with gate:
                        await self._submit(current)

                await asyncio.gather(*(submit() for _ in range(workflows)))
            await self._await(current, None, timeout - (time.perf_counter() - started))
            wall = time.perf_counter() - started
        finally:
            self._round = None
        self._check_outcomes(current)
        steps = current.completed_steps
        if steps != workflows * self.workload.steps:
            raise RuntimeError(f"expected {workflows * self.workload.steps} steps, saw {steps}")
        timings: list[StepTiming] = []
        if timed:
            timings = await self._all_timings(start_wf, start_steps, current.expected)
        return ThroughputRun(steps=steps, wall=wall, timings=timings)

    async def _last_seqs(self) -> tuple[int, int]:
        assert self.client is not None
        js = self.client.js
        wf = await js.stream_info(self.names.workflows_stream)
        steps = await js.stream_info(self.names.steps_stream)
        return wf.state.last_seq, steps.state.last_seq

    async def _timings(
        self, start_wf: int, start_steps: int, workflow_ids: set[str]
    ) -> list[StepTiming]:
        assert self.client is not None
        nc = self.client.nc
        wf_reader = DirectGetter(nc, self.names.workflows_stream, timeout=10)
        step_reader = DirectGetter(nc, self.names.steps_stream, timeout=10)
        await wf_reader.open()
        await step_reader.open()
        try:
            events = await wf_reader.scan(self.names.all_workflows, start_seq=start_wf + 1)
            every_result = self.names.all_step_results
            results = await step_reader.scan(every_result, start_seq=start_steps + 1)
        finally:
            await wf_reader.close()
            await step_reader.close()
        scheduled: dict[tuple[str, str], tuple[StepScheduled, dt.datetime, dt.datetime, bool]]
        scheduled = {}
        completed: dict[tuple[str, str], StepCompleted] = {}
        last: dict[str, tuple[dt.datetime, bool]] = {}
        for record in events:
            decoded = decode_events(record.data)
            if decoded[0].workflow_id not in workflow_ids:
                continue
            stored = server_time(record)
            wid = decoded[0].workflow_id
            previous, after_start = last.get(wid, (stored, False))
            last[wid] = (stored, any(isinstance(e, Started) for e in decoded))
            for event in decoded:
                if isinstance(event, StepScheduled):
                    key = (event.workflow_id, event.step_id)
                    # Written with the decision's other events in one message: there is
                    # no separate earlier append to measure against.
                    before = stored if len(decoded) > 1 else previous
                    scheduled[key] = (event, before, stored, after_start)
                elif isinstance(event, StepCompleted):
                    completed[event.workflow_id, event.step_id] = event
        step_results: dict[tuple[str, str], tuple[StepResult, dt.datetime]] = {}
        for record in results:
            result = decode_step_result(record.data)
            step_results[result.workflow_id, result.step_id] = (result, server_time(record))
        timings = []
        for key, (step, previous, step_stored, first) in scheduled.items():
            if key not in completed or key not in step_results:
                continue
            result, result_stored = step_results[key]
            timings.append(
                StepTiming(
                    capability=step.capability,
                    first=first,
                    scheduled_at=step.at,
                    previous_stored=previous,
                    scheduled_stored=step_stored,
                    started_at=result.started_at,
                    finished_at=result.finished_at,
                    result_stored=result_stored,
                    completed_at=completed[key].at,
                )
            )
        return timings

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        try:
            if self.client is not None and not self.loop.is_closed():
                client, self.client = self.client, None
                with contextlib.suppress(Exception):
                    self.run(client.close())
        finally:
            self.services.stop_all()
            if not self.loop.is_closed():
                self.loop.close()


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    wait_until(path.exists, timeout=timeout, interval=0.01, what=f"{path} appearing")


@contextlib.contextmanager
def engine_platform(
    url: str,
    prefix: str,
    log_dir: Path,
    *,
    orchestrators: int = 1,
    workers: int = 1,
    profile_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    warm_up: int = 10,
    workload: Workload = ENGINE_WORKLOAD,
    worker_groups: Sequence[Sequence[str]] = (("reasoning", "tools"),),
    code: ServiceCode = THIS_CODE,
) -> Iterator[EnginePlatform]:
    platform = EnginePlatform(
        url,
        prefix,
        log_dir,
        orchestrators=orchestrators,
        workers=workers,
        profile_dir=profile_dir,
        env=env,
        workload=workload,
        worker_groups=worker_groups,
        code=code,
    )
    try:
        platform.warm_up(warm_up)
        yield platform
    finally:
        platform.close()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]
