"""Suite ``comparison``: the source article's table, measured — a monolith vs jetagent.

One multi-step agent workload (``bench._comparison_workload``: scripted model behind a
local OpenAI-format server with lognormal latency and injected faults, slow I/O and
CPU-bound tools) run two ways on the same machine in the same run:

- **monolith** (``bench._comparison_monolith``): one asyncio process with in-memory
  state, written fairly (httpx, timeouts, retries, the CPU tool in a process pool);
- **jetagent** (``bench._comparison_platform``): the services as deployed — separate
  processes, worker replicas, a dedicated pool for the CPU tool.

Each at a low and a high Poisson arrival rate, each with faults on and off (off: the
workload's intrinsic floor). The table in the appendix has, per run, P50, P99, failed
and corrupted sessions, sessions/s, provider calls per logical call, tool runs per tool
call, and cost per capability. ``python -m bench comparison [--quick]`` runs it alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._comparison_platform import Deployment
from ._comparison_runs import (
    JETAGENT,
    MONOLITH,
    MONOLITH_TIMEOUT_S,
    TYPICAL_LATENCY_S,
    Comparison,
    RunStats,
    calibrate_crunch,
    comparison,
)
from ._comparison_workload import Params
from ._harness import EN_DASH, TIMES, Benchmark, Contenders, Env, Round, Suite, Target
from ._report import code_state

__all__ = ["SUITE", "full_params", "quick_deployment", "quick_params"]

LOW_RATE = 5.0
HIGH_RATE = 30.0
GOAL_FACTOR = 1.1
"""The issue's goal: with faults, jetagent's P99 within 10% of the fault-free floor."""
ARTICLE = f"monolith P99 4.2{EN_DASH}8.7 s, event-driven 0.8{EN_DASH}1.4 s"
SIGMA = "\u03c3"


def full_params(crunch_iterations: int) -> Params:
    return Params(sessions=300, crunch_iterations=crunch_iterations)


def quick_params(crunch_iterations: int) -> Params:
    """Few sessions, every time divided by 10, more faults (so a short run meets some)."""
    return Params(
        sessions=16,
        crunch_iterations=max(10_000, crunch_iterations // 10),
        time_scale=0.1,
        hang_p=0.1,
        rate_limit_p=0.1,
        crunch_share=0.25,
    )


def quick_deployment() -> Deployment:
    return Deployment(reasoning=1, tools=1, crunch=1, crunch_processes=1, concurrency=32)


@dataclass
class _Results:
    runs: dict[tuple[str, float, bool], RunStats] = field(default_factory=dict)


@contextlib.contextmanager
def _results_cm() -> Iterator[_Results]:
    yield _Results()


def _results(env: Env) -> _Results:
    return env.shared("comparison:results", _results_cm)


def _runner(env: Env) -> Comparison:
    def make() -> contextlib.AbstractContextManager[Comparison]:
        iterations = calibrate_crunch()
        params = quick_params(iterations) if env.quick else full_params(iterations)
        deployment = quick_deployment() if env.quick else Deployment()
        return comparison(env.nats_url, env.tmp / "comparison", params, deployment)

    return env.shared("comparison:runner", make)


def _label(arch: str, faults: bool) -> str:
    return arch if faults else f"{arch}, no faults"


def _rates(env: Env) -> tuple[float, float]:
    return (LOW_RATE, HIGH_RATE) if not env.quick else (LOW_RATE, HIGH_RATE / 3)


def _contenders(env: Env, rate: float) -> Contenders:
    runner, results = _runner(env), _results(env)

    def round_fn(arch: str, faults: bool) -> Round:
        def run() -> float:
            stats = runner.run(arch, rate, faults=faults)
            results.runs[arch, rate, faults] = stats
            return stats.p99_s

        return run

    return {
        _label(arch, faults): round_fn(arch, faults)
        for arch in (JETAGENT, MONOLITH)
        for faults in (True, False)
    }


def _benchmarks(env: Env) -> list[Benchmark]:
    out = []
    for rate in _rates(env):

        @contextlib.contextmanager
        def contenders(env: Env, rate: float = rate) -> Iterator[Contenders]:
            yield _contenders(env, rate)

        out.append(
            Benchmark(
                name=f"session P99 with faults, {rate:g} sessions/s",
                unit="s",
                better="lower",
                subject=JETAGENT,
                baselines=(_label(JETAGENT, False), MONOLITH, _label(MONOLITH, False)),
                contenders=contenders,
                target=Target("<=", baseline=_label(JETAGENT, False), factor=GOAL_FACTOR),
                rounds=1,
                quick_rounds=1,
                profile_miss=False,
                note=f"one run of {_runner(env).params.sessions} sessions per contender "
                "(Poisson arrivals); latency from a session's scheduled arrival to its "
                "answer. The full table is below.",
            )
        )
    return out


def _money(value: float) -> str:
    return f"${value:.4f}"


def _row(stats: RunStats) -> str:
    cost = ", ".join(f"{k} {_money(v)}" for k, v in sorted(stats.cost_usd.items())) or "—"
    return (
        f"| {stats.label} | {stats.rate:g}/s | {stats.p50_s:.2f} | {stats.p99_s:.2f} "
        f"| {stats.failed} / {stats.corrupted} | {stats.sessions_per_s:.2f} "
        f"| {stats.calls_per_logical:.3f} ({stats.provider_calls}/{stats.logical_calls}) "
        f"| {stats.runs_per_tool_call:.3f} ({stats.tool_runs}/{stats.tool_calls}) "
        f"| {cost} | {_money(stats.billed_usd)} |"
    )


def table(runs: list[RunStats]) -> str:
    """The results, one row per run (markdown)."""
    lines = [
        "| run | arrivals | P50 s | P99 s | failed / corrupted | sessions/s "
        "| provider calls per logical call | tool runs per tool call "
        "| cost attributed per capability | billed by the provider |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    lines += [_row(r) for r in runs]
    return "\n".join(lines)


def _goals(results: _Results, rates: tuple[float, float]) -> list[str]:
    lines = []
    for rate in rates:
        with_faults = results.runs.get((JETAGENT, rate, True))
        floor = results.runs.get((JETAGENT, rate, False))
        mono = results.runs.get((MONOLITH, rate, True))
        if with_faults is None or floor is None:
            continue
        ratio = with_faults.p99_s / floor.p99_s if floor.p99_s else 0.0
        lines.append(
            f"- {rate:g}/s: jetagent P99 with faults is {ratio:.2f}{TIMES} its fault-free floor "
            f"(goal ≤ {GOAL_FACTOR:g}{TIMES}: {'met' if ratio <= GOAL_FACTOR else 'missed'}); "
            f"failed {with_faults.failed}, corrupted {with_faults.corrupted} (goal 0); "
            f"tool runs per call {with_faults.runs_per_tool_call:.3f} (goal 1.00); "
            f"provider calls per logical call {with_faults.calls_per_logical:.3f}"
            + (
                f"; monolith P99 {mono.p99_s:.2f} s, "
                f"{mono.p99_s / floor.p99_s:.2f}{TIMES} jetagent's floor"
                if mono is not None and floor.p99_s
                else ""
            )
            + "."
        )
    return lines


def _appendix(env: Env) -> str:
    runner, results = _runner(env), _results(env)
    params = runner.params
    order = [
        (arch, rate, faults)
        for rate in _rates(env)
        for arch in (MONOLITH, JETAGENT)
        for faults in (True, False)
    ]
    runs = [results.runs[k] for k in order if k in results.runs]
    problems = [f"- {r.label} at {r.rate:g}/s: {e}" for r in runs for e in r.errors]
    tool_errors = [
        f"- {r.label} at {r.rate:g}/s: {n}{TIMES} {what}"
        for r in runs
        for what, n in sorted(r.tool_errors.items(), key=lambda item: -item[1])[:3]
    ]
    lines = [
        code_state("bench", "platform", "capabilities"),
        "",
        "### The table",
        "",
        table(runs),
        "",
        f"The article's numbers: {ARTICLE}.",
        "",
        "### Goals (issue #12)",
        "",
        *_goals(results, _rates(env)),
        "",
        "### Workload and deployment",
        "",
        f"- sessions per run: {params.sessions}; Poisson arrivals at {_rates(env)[0]:g} and "
        f"{_rates(env)[1]:g} sessions/s; 1{EN_DASH}{params.max_turns} reasoning turns, "
        f"1{EN_DASH}{params.max_calls_per_turn} tool calls per tool turn; "
        f"{params.crunch_share:.0%} of tool calls are `crunch` "
        f"({params.crunch_iterations:,} loop iterations, calibrated to ~300 ms here), the "
        f"rest `slow_lookup` ({params.lookup_s[0]:g}{EN_DASH}{params.lookup_s[1]:g} s "
        "of I/O);",
        f"- provider latency lognormal, median {params.median_latency_s * 1000:.0f} ms, "
        f"{SIGMA} {params.latency_sigma:g}; faults per call: {params.hang_p:.0%} hang, "
        f"{params.rate_limit_p:.0%} 429 with `retry-after: {params.retry_after_s:g}`"
        + (
            f"; every time {TIMES} {params.time_scale:g} (quick run)"
            if params.time_scale != 1
            else ""
        )
        + ";",
        f"- monolith: one asyncio process, httpx with a {MONOLITH_TIMEOUT_S:g} s per-attempt "
        "timeout, up to 5 attempts (429: wait `retry-after`; timeout: retry at once; 5xx: "
        f"backoff), `crunch` in a {runner.processes}-process pool;",
        f"- jetagent: {runner.deployment.describe()}; the scripted model's "
        f"`typical_latency_s` {TYPICAL_LATENCY_S:g} (a call is hedged after twice that), "
        f"`timeouts.total_s` {MONOLITH_TIMEOUT_S:g} s (the monolith's per-attempt timeout).",
    ]
    if problems:
        lines += ["", "### Failed or corrupted sessions (first few per run)", "", *problems]
    if tool_errors:
        lines += [
            "",
            "### Tool errors the model was shown (why an answer is off; commonest per run)",
            "",
            *tool_errors,
        ]
    return "\n".join(lines)


SUITE = Suite(
    name="comparison",
    title="the article's table: a monolithic agent vs jetagent, with and without faults",
    description=(
        "One multi-step agent workload — a scripted model behind a local OpenAI-format "
        "server (`bench/_comparison_server.py`: lognormal latency, hung calls and 429s "
        "drawn per session, turn and attempt), a slow I/O tool and a CPU-bound tool — run "
        "by a monolithic asyncio agent (`bench/_comparison_monolith.py`) and by jetagent's "
        "services as separate processes, at two arrival rates, with faults on and off "
        "(off: the workload's floor). Every answer is checked; provider calls are counted "
        "by the server, tool runs by the tools themselves."
    ),
    benchmarks=_benchmarks,
    appendix=_appendix,
)
