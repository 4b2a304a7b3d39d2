"""Suite ``capabilities``: tool-worker throughput, sandbox cost, reasoning-worker overhead.

Every subject is a real ``jetagent worker`` process (``worker tools``, ``worker
reasoning``) on the suite's nats-server, driven directly, without the orchestrator: the
bench publishes ``StepScheduled`` events to ``JA_WORKFLOWS`` as the orchestrator writes
them and counts the ``StepResult`` messages the worker writes to ``JA_STEPS``
(``bench._capabilities_setup.StepDriver``), so only the worker's own cost is measured.
The reasoning worker talks to a zero-latency OpenAI-compatible server on 127.0.0.1
(``bench._llm_server``, a process of its own that times itself) through a model catalog
(``JETAGENT_MODELS``) that points a model at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from capabilities.reasoning.providers.openai import OpenAIProvider
from capabilities.tools.sandbox import SandboxLimits, protections, run_python
from jetagent.config import Settings
from jetagent.events import StepScheduled
from jetagent.llm import Message, ToolSpec
from jetagent.models import ModelCatalog

from ._capabilities_setup import (
    MODEL,
    LlmServer,
    StepDriver,
    bare_worker,
    catalog_toml,
    llm_server,
    reasoning_step,
    tool_step,
    wait_for_worker,
)
from ._harness import Benchmark, Contenders, Env, Round, Suite
from ._profile import process_cpu
from ._report import code_state
from ._services import Loop, bench_services, loop_with_nats

__all__ = ["SUITE"]

TOOLS = "jetagent worker tools"
BARE = "bare nats-py worker"
SANDBOX_ALONE = "run_python, 16 at a time, no worker"
SANDBOX = "run_python('pass')"
PLAIN = "python -c pass"
ISOLATED = "python -I -S -c pass (as the sandbox starts it)"
REASONING = "jetagent worker reasoning"
HTTPX = "bare httpx call"
CONCURRENCY = 16
"""The worker's default ``worker_concurrency`` (steps at once per capability)."""
EXPRESSION = "(1234 + 5678) * 3 / 7 - 2 ** 5"
SNIPPET = "print(sum(range(10)))"


def _calculator_steps(env: Env) -> int:
    return env.size(5000, 300)


def _python_steps(env: Env) -> int:
    return env.size(160, 32)


def _sandbox_calls(env: Env) -> int:
    return env.size(40, 5)


def _reasoning_steps(env: Env) -> int:
    return env.size(100, 10)


def _loop(env: Env) -> Loop:
    return env.shared("capabilities:loop", lambda: loop_with_nats(env.nats_url, "bench-caps"))


def _settings(env: Env, kind: str) -> Settings:
    return Settings(nats_url=env.nats_url, prefix=f"{kind}{uuid.uuid4().hex[:8]}", tenants="*")


@dataclass
class _Observed:
    """What rounds saw beyond their medians, for the appendix."""

    cpu_ms_per_step: dict[str, list[float]] = field(default_factory=dict)
    reasoning: list[dict[str, float]] = field(default_factory=list)
    """Per reasoning step of every round-trip round: its times in ms."""
    bare_http: list[tuple[float, float]] = field(default_factory=list)
    """Per bare httpx call of every round-trip round: (round trip, server time) in ms."""


@contextlib.contextmanager
def _observed_cm() -> Iterator[_Observed]:
    yield _Observed()


def _observed(env: Env) -> _Observed:
    return env.shared("capabilities:observed", _observed_cm)


# ------------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Worker:
    """A worker process (or the bare one) and a driver for its prefix."""

    driver: StepDriver
    pid: int


@contextlib.contextmanager
def _driver(on: Loop, settings: Settings) -> Iterator[StepDriver]:
    driver = StepDriver(on, settings)
    on.run(driver.open())
    try:
        yield driver
    finally:
        on.run(driver.close())


@contextlib.contextmanager
def _tools_worker(env: Env) -> Iterator[_Worker]:
    on, settings = _loop(env), _settings(env, "ct")
    services = bench_services(env.nats_url, settings.prefix, env.tmp / "logs")
    try:
        services.start("tools", "worker", "tools")
        on.run(wait_for_worker(on, settings, "cap-tools", services.check_alive, tools=True))
        with _driver(on, settings) as driver:
            warm = [tool_step("calculator", {"expression": EXPRESSION}) for _ in range(200)]
            on.run(driver.throughput(warm))
            on.run(driver.throughput([tool_step("python", {"code": SNIPPET}) for _ in range(16)]))
            yield _Worker(driver=driver, pid=services["tools"].pid)
    finally:
        services.stop_all()


def _tools(env: Env) -> _Worker:
    return env.shared("capabilities:tools", lambda: _tools_worker(env))


@contextlib.contextmanager
def _bare_worker(env: Env) -> Iterator[_Worker]:
    on, settings = _loop(env), _settings(env, "cb")
    with bare_worker(on, settings, env.tmp / "logs" / f"{settings.prefix}-bare.log") as bare:
        on.run(wait_for_worker(on, settings, "bare-tools", bare.alive))
        with _driver(on, settings) as driver:
            warm = [tool_step("calculator", {"expression": EXPRESSION}) for _ in range(200)]
            on.run(driver.throughput(warm))
            yield _Worker(driver=driver, pid=bare.process.pid)


def _bare(env: Env) -> _Worker:
    return env.shared("capabilities:bare", lambda: _bare_worker(env))


# ---------------------------------------------------------- tool throughput


def _throughput_round(
    env: Env, worker: _Worker, name: str, make: Callable[[], StepScheduled], n: int
) -> Round:
    on = _loop(env)
    observed = _observed(env)

    def run() -> float:
        steps = [make() for _ in range(n)]
        before = process_cpu(worker.pid)
        rate = on.run(worker.driver.throughput(steps))
        after = process_cpu(worker.pid)
        if before is not None and after is not None:
            observed.cpu_ms_per_step.setdefault(name, []).append((after - before) * 1000 / n)
        return rate

    return run


def _calculator() -> StepScheduled:
    return tool_step("calculator", {"expression": EXPRESSION})


def _python() -> StepScheduled:
    return tool_step("python", {"code": SNIPPET})


@contextlib.contextmanager
def _calculator_contenders(env: Env) -> Iterator[Contenders]:
    n = _calculator_steps(env)
    yield {
        TOOLS: _throughput_round(env, _tools(env), "calculator: " + TOOLS, _calculator, n),
        BARE: _throughput_round(env, _bare(env), "calculator: " + BARE, _calculator, n),
    }


def _sandbox_alone(env: Env, n: int) -> Round:
    on = _loop(env)

    async def many() -> float:
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with slots:
                result = await run_python(SNIPPET, limits=SandboxLimits())
            if not result.ok:
                raise RuntimeError(f"the sandbox failed: {result.error}")

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - started)

    def run() -> float:
        return on.run(many())

    return run


@contextlib.contextmanager
def _python_contenders(env: Env) -> Iterator[Contenders]:
    n = _python_steps(env)
    yield {
        TOOLS: _throughput_round(env, _tools(env), "python: " + TOOLS, _python, n),
        SANDBOX_ALONE: _sandbox_alone(env, n),
    }


# ------------------------------------------------------------ sandbox per call


def _interpreter() -> str:
    """The interpreter the sandbox runs (the base one, not the venv's)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


async def _spawn(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{args} exited with {process.returncode}")


async def _sandbox_pass() -> None:
    result = await run_python("pass")
    if not result.ok:
        raise RuntimeError(f"the sandbox failed: {result.error}")


def _per_call_round(on: Loop, call: Callable[[], Any], n: int) -> Round:
    async def timed() -> float:
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    def run() -> float:
        return on.run(timed())

    return run


@contextlib.contextmanager
def _sandbox_contenders(env: Env) -> Iterator[Contenders]:
    on, n, exe = _loop(env), _sandbox_calls(env), _interpreter()
    on.run(_sandbox_pass())  # the first run pays for imports and the probe
    yield {
        SANDBOX: _per_call_round(on, _sandbox_pass, n),
        PLAIN: _per_call_round(on, lambda: _spawn(sys.executable, "-c", "pass"), n),
        ISOLATED: _per_call_round(on, lambda: _spawn(exe, "-I", "-S", "-c", "pass"), n),
    }


# ---------------------------------------------------------------- reasoning


@dataclass(frozen=True)
class _Reasoning:
    server: LlmServer
    catalog: ModelCatalog
    template: StepScheduled
    driver: StepDriver
    http: httpx.AsyncClient
    body: bytes
    headers: dict[str, str]
    url: str

    def step(self) -> StepScheduled:
        return msgspec.structs.replace(self.template, workflow_id=str(uuid.uuid4()))


def _request_body(catalog: ModelCatalog, step: StepScheduled) -> bytes:
    """The body the worker's OpenAI adapter sends for ``step``."""
    data = step.input
    messages = [msgspec.convert(m, Message) for m in data["messages"]]
    tools = [msgspec.convert(t, ToolSpec) for t in data.get("tools") or []]
    provider = OpenAIProvider()
    body = provider.request_body(catalog.get(MODEL), messages, tools, int(data["max_tokens"]))
    return msgspec.json.encode(body)


@contextlib.contextmanager
def _reasoning_worker(env: Env) -> Iterator[_Reasoning]:
    on, settings = _loop(env), _settings(env, "cr")
    folder = env.tmp / "llm"
    with llm_server(folder) as server:
        path = folder / "models.toml"
        path.write_text(catalog_toml(server.port))
        catalog = ModelCatalog.load(path)
        services = bench_services(
            env.nats_url, settings.prefix, env.tmp / "logs", {"JETAGENT_MODELS": str(path)}
        )
        http = httpx.AsyncClient(timeout=30.0, trust_env=False)
        try:
            services.start("reasoning", "worker", "reasoning")
            on.run(wait_for_worker(on, settings, "cap-reasoning", services.check_alive))
            with _driver(on, settings) as driver:
                template = reasoning_step(catalog)
                provider_headers = OpenAIProvider().headers(None)
                reasoning = _Reasoning(
                    server=server,
                    catalog=catalog,
                    template=template,
                    driver=driver,
                    http=http,
                    body=_request_body(catalog, template),
                    headers=provider_headers,
                    url=f"{server.base_url}/chat/completions",
                )
                for _ in range(20):  # warm-up: connections, imports, caches
                    on.run(driver.one(reasoning.step()))
                    on.run(_bare_call(reasoning))
                server.server_times_us()
                yield reasoning
        finally:
            on.run(http.aclose())
            services.stop_all()


def _reasoning(env: Env) -> _Reasoning:
    return env.shared("capabilities:reasoning", lambda: _reasoning_worker(env))


async def _bare_call(r: _Reasoning) -> float:
    """One POST of the worker's request body with httpx; its round trip in ms (timed
    with ``perf_counter``: uvloop's ``loop.time()`` has millisecond resolution)."""
    started = time.perf_counter()
    response = await r.http.post(r.url, content=r.body, headers=r.headers)
    response.raise_for_status()
    msgspec.json.decode(response.content)
    return (time.perf_counter() - started) * 1000


def _paired(values: list[float], server_ms: list[float]) -> list[float]:
    """``values`` minus the server's own time, matched call by call (in order); if the
    counts differ (a retried call), minus the median server time."""
    if len(values) == len(server_ms):
        return [v - s for v, s in zip(values, server_ms, strict=True)]
    middle = statistics.median(server_ms) if server_ms else 0.0
    return [v - middle for v in values]


def _reasoning_round(env: Env, *, overhead: bool) -> Round:
    on, r, n = _loop(env), _reasoning(env), _reasoning_steps(env)
    observed = _observed(env)

    def run() -> float:
        r.server.server_times_us()
        trips, results = [], []
        for _ in range(n):
            trip, result = on.run(r.driver.one(r.step()))
            trips.append(trip)
            results.append(result)
        server_ms = [us / 1000 for us in r.server.server_times_us()]
        durations = [(x.finished_at - x.started_at).total_seconds() * 1000 for x in results]
        if not overhead:
            observed.reasoning += [
                {
                    "round trip": trip,
                    "handler": duration,
                    "provider call": x.calls[0].latency_s * 1000 if x.calls else 0.0,
                    "server": server,
                }
                for trip, duration, x, server in zip(
                    trips, durations, results, server_ms or [0.0] * n, strict=False
                )
            ]
            return statistics.median(trips)
        return statistics.median(_paired(durations, server_ms))

    return run


def _bare_round(env: Env, *, overhead: bool) -> Round:
    on, r, n = _loop(env), _reasoning(env), _reasoning_steps(env)
    observed = _observed(env)

    def run() -> float:
        r.server.server_times_us()
        trips = [on.run(_bare_call(r)) for _ in range(n)]
        server_ms = [us / 1000 for us in r.server.server_times_us()]
        if not overhead:
            observed.bare_http += list(zip(trips, server_ms or [0.0] * n, strict=False))
        return statistics.median(_paired(trips, server_ms) if overhead else trips)

    return run


@contextlib.contextmanager
def _overhead_contenders(env: Env) -> Iterator[Contenders]:
    yield {
        REASONING: _reasoning_round(env, overhead=True),
        HTTPX: _bare_round(env, overhead=True),
    }


@contextlib.contextmanager
def _round_trip_contenders(env: Env) -> Iterator[Contenders]:
    yield {
        REASONING: _reasoning_round(env, overhead=False),
        HTTPX: _bare_round(env, overhead=False),
    }


# ----------------------------------------------------------------- appendix


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows) if rows else 0.0


def _appendix(env: Env) -> str:
    observed = _observed(env)
    lines = [code_state("capabilities", "platform"), ""]
    lines += ["### Where a reasoning step's time goes", ""]
    rows = observed.reasoning
    if rows and observed.bare_http:
        trip, handler = _median(rows, "round trip"), _median(rows, "handler")
        call, server = _median(rows, "provider call"), _median(rows, "server")
        bare = statistics.median(t for t, _ in observed.bare_http)
        lines += [
            f"Medians over the {len(rows)} steps of every round of `reasoning step round "
            f"trip` (one step at a time) and the {len(observed.bare_http)} bare calls of "
            "its baseline's rounds, in ms:",
            "",
            "| segment | ms |",
            "|---|--:|",
            f"| server's own time per request (first byte in → answer out) | {server:.3f} |",
            f"| bare httpx call (same body, same server; includes the server's time) "
            f"| {bare:.3f} |",
            f"| the gateway's provider call (`CallRecord.latency_s`, recorded rounded to "
            f"0.1 ms) | {call:.3f} |",
            f"| handler window (`StepResult.finished_at - started_at`) | {handler:.3f} |",
            f"| full step round trip (`StepScheduled` published → `StepResult` received) "
            f"| {trip:.3f} |",
            "",
            f"So: the gateway's call costs {call - bare:.2f} ms more than a bare httpx "
            f"call; the worker spends {handler - call:.2f} ms in the handler around the "
            f"call (messages and tools converted, routing, breaker, records); and "
            f"{trip - handler:.2f} ms outside the handler (the step delivered to the "
            "worker and decoded, the `StepResult` encoded, published with a write-once "
            "check, acknowledged and delivered back).",
        ]
    cpu = observed.cpu_ms_per_step
    if cpu:
        lines += ["", "### CPU per step of the worker process", ""]
        lines += ["| workload | CPU ms per step (median of rounds) |", "|---|--:|"]
        for name, values in cpu.items():
            lines.append(f"| {name} | {statistics.median(values):.3f} |")
    layers = protections()
    active = ", ".join(k for k, v in layers.items() if v is True)
    off = [k for k, v in layers.items() if v is False]
    lines += [
        "",
        f"Sandbox layers active on this machine (`protections()`): {active}"
        + (f"; off: {', '.join(off)} ({layers.get('notes')})" if off else "")
        + ".",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------- suite


def _benchmarks(env: Env) -> list[Benchmark]:
    calc, py, calls, steps = (
        _calculator_steps(env),
        _python_steps(env),
        _sandbox_calls(env),
        _reasoning_steps(env),
    )
    return [
        Benchmark(
            name="calculator tool throughput",
            unit="steps/s",
            better="higher",
            subject=TOOLS,
            baselines=(BARE,),
            contenders=_calculator_contenders,
            note=f"{calc:,} `StepScheduled.tools.calculator` steps (`{EXPRESSION}`) published "
            "at once (256 publishes in flight); rate = steps / (first publish → last "
            f"`StepResult` received). {TOOLS}: the CLI's worker, default concurrency "
            f"({CONCURRENCY} steps at once). {BARE}: `bench/_bare_tool_worker.py`, a "
            "process of its own on its own prefix: pull, decode, the same calculator, "
            "encode and publish a `StepResult`, ack; nothing else.",
        ),
        Benchmark(
            name="python tool (sandbox) throughput",
            unit="steps/s",
            better="higher",
            subject=TOOLS,
            baselines=(SANDBOX_ALONE,),
            contenders=_python_contenders,
            note=f"{py} `StepScheduled.tools.python` steps (`{SNIPPET}`) at once, rate as "
            f"above. {SANDBOX_ALONE}: `run_python` of the same snippet called directly in "
            f"this process, {CONCURRENCY} at a time: the sandbox's own ceiling. Before the "
            "kernel-enforced sandbox (namespaces and a per-run uid, as root; main at "
            "0ba55d2) the worker reached 67.7 steps/s here.",
        ),
        Benchmark(
            name="sandbox, per call",
            unit="ms",
            better="lower",
            subject=SANDBOX,
            baselines=(PLAIN, ISOLATED),
            contenders=_sandbox_contenders,
            note=f"median of {calls} sequential calls per round, in this process's event "
            f"loop. Baselines: `asyncio.create_subprocess_exec`, waited for, of {PLAIN} "
            "with the venv's interpreter (what `python` is in this project), and of the "
            "interpreter the sandbox runs (the base installation's) with the sandbox's "
            "isolation flags: the floor of any fresh-interpreter sandbox. The base "
            "installation's own site-packages on this machine is large (its plain "
            "`python -c pass` takes 20-40 ms), which `-I -S` skips. Before the "
            "kernel-enforced sandbox (main at 0ba55d2) a call took 25.2 ms here. The "
            "bench runs as root: the snippet process also drops every capability.",
        ),
        Benchmark(
            name="reasoning call overhead",
            unit="ms",
            better="lower",
            subject=REASONING,
            baselines=(HTTPX,),
            contenders=_overhead_contenders,
            note=f"{steps} reasoning steps one at a time per round; per step: its handler "
            "window (`StepResult.finished_at - started_at`) minus the server's own time "
            f"for that request (the provider's time), median. {HTTPX}: the body the "
            "worker's OpenAI adapter sends for the same step, POSTed with a pooled "
            "`httpx.AsyncClient` in this process; round trip minus the server's time. "
            "Each step is the first reasoning turn `decide` schedules for a request with "
            "a ~1.2 KB system prompt, an earlier exchange and the 6 built-in tools' specs.",
        ),
        Benchmark(
            name="reasoning step round trip",
            unit="ms",
            better="lower",
            subject=REASONING,
            baselines=(HTTPX,),
            contenders=_round_trip_contenders,
            note=f"the same {steps} steps: `StepScheduled` published → its `StepResult` "
            f"received by this process. {HTTPX}: the full round trip of the bare call.",
        ),
    ]


SUITE = Suite(
    name="capabilities",
    title="capability workers: tool throughput, sandbox cost, reasoning overhead",
    description=(
        "Real `jetagent worker tools` and `jetagent worker reasoning` processes, driven "
        "directly rather than through the whole platform: the bench publishes "
        "`StepScheduled` events to `JA_WORKFLOWS` as the orchestrator writes them and "
        "counts the `StepResult`s the worker writes to `JA_STEPS` (one core "
        "subscription), so no orchestrator cost is in the numbers. The reasoning worker "
        "calls a zero-latency OpenAI Chat Completions server on 127.0.0.1 "
        "(`bench/_llm_server.py`, its own process, timing itself per request) named by a "
        "model catalog (`JETAGENT_MODELS`); the sandbox runs in this process. Driver "
        "and in-process baselines run on uvloop, as the services do."
    ),
    benchmarks=_benchmarks,
    appendix=_appendix,
)
