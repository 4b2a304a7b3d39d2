"""Suite ``engine``: the workflow engine's step loop against a bare loop and raw nats-py.

The subject is the platform as deployed: ``jetagent orchestrator`` and ``jetagent worker
reasoning tools`` as separate processes (``bench._engine_service``: the CLI, profilable
on a signal) on the suite's nats-server, each run under a prefix of its own, fed by
``jetagent.client.Client``. Every workflow is the same 7-step request served by the
offline deterministic provider and the calculator (both instant), so what is measured is
the platform.

Baselines, in the same run on the same server (``_engine_baselines``): the raw nats-py
publish → pull consumer → ack round trip, and a bare step loop (one process, in-memory
state, no event store). After the benchmarks the suite's appendix (``_engine_analysis``)
says where a step's time goes: a timeline from the streams' own timestamps, CPU per step
of each process, and cProfile inside the orchestrator and the worker.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from ._against import CommitBuild, build_commit
from ._engine_analysis import Sizes, step_breakdown
from ._engine_baselines import BareLoop, raw_round_trips
from ._engine_platform import ROOT, STEPS_PER_WORKFLOW, EnginePlatform, engine_platform, percentile
from ._engine_versus import versus_commits
from ._fixtures import RawNats, raw_nats
from ._harness import Benchmark, Contenders, Env, Round, Suite, Target
from ._profile import unwatch_remote, watch_remote
from ._services import THIS_CODE, ServiceCode

__all__ = ["SUITE"]

PLATFORM = "jetagent, 1 orchestrator + 1 worker"
BARE = "bare loop"
RAW = "nats-py publish → pull → ack"
CONCURRENT = 200
P99_TARGET_MS = 5.0
RATE_TARGET = 2000.0
BARE_FACTOR = 2.5
"""The issue's budget: the platform may cost at most about 2.5x the bare loop."""


def _sequential_workflows(env: Env) -> int:
    return env.size(100, 10)


def _concurrent_workflows(env: Env) -> int:
    return env.size(CONCURRENT, 50)


def _name(orchestrators: int, workers: int) -> str:
    o = "orchestrator" if orchestrators == 1 else "orchestrators"
    w = "worker" if workers == 1 else "workers"
    return f"jetagent, {orchestrators} {o} + {workers} {w}"


@contextmanager
def _services(
    env: Env, orchestrators: int, workers: int, code: ServiceCode = THIS_CODE
) -> Iterator[EnginePlatform]:
    """A platform of its own prefix; profiled with the subject's rounds (``--profile``)."""
    prefix = f"e{orchestrators}x{workers}{uuid.uuid4().hex[:8]}"
    with engine_platform(
        env.nats_url,
        prefix,
        env.tmp / "logs",
        orchestrators=orchestrators,
        workers=workers,
        profile_dir=env.tmp / "profiles",
        warm_up=env.size(10, 2),
        code=code,
    ) as platform:
        platform.concurrent(env.size(50, 10))  # warm-up at load too
        watch_remote(prefix, platform.profile_start, platform.profile_stop)
        try:
            yield platform
        finally:
            unwatch_remote(prefix)


def _platform(env: Env) -> EnginePlatform:
    """The 1 + 1 platform every benchmark and the appendix share."""
    return env.shared("engine:1x1", lambda: _services(env, 1, 1))


def _commits(env: Env) -> list[CommitBuild]:
    """The ``--against`` commits, built (once per commit, cached), one per distinct sha."""

    def build() -> list[CommitBuild]:
        builds: dict[str, CommitBuild] = {}
        for ref in env.config.against:
            commit = build_commit(ref)
            builds.setdefault(commit.sha, commit)
        return list(builds.values())

    return env.shared("engine:commits", lambda: nullcontext(build()))


def _commit_platform(env: Env, commit: CommitBuild) -> EnginePlatform:
    """The 1 + 1 platform of another commit's services (``--against``)."""
    return env.shared(f"engine:{commit.sha}", lambda: _services(env, 1, 1, commit.code))


def _raw(env: Env) -> RawNats:
    return env.shared("engine:raw", lambda: raw_nats(env))


@contextmanager
def _bare_loop(env: Env, raw: RawNats) -> Iterator[BareLoop]:
    bare = BareLoop(raw, env.nats_url, steps_per_workflow=STEPS_PER_WORKFLOW)
    raw.run(bare.open())
    try:
        raw.run(bare.run(env.size(20, 2), concurrent=False))  # warm-up
        yield bare
    finally:
        raw.run(bare.close())


def _bare(env: Env) -> BareLoop:
    raw = _raw(env)
    return env.shared("engine:bare", lambda: _bare_loop(env, raw))


# ------------------------------------------------------------ step latency


def _latency_contenders(env: Env, q: float) -> Contenders:
    platform, raw, bare = _platform(env), _raw(env), _bare(env)
    workflows = _sequential_workflows(env)
    samples = workflows * STEPS_PER_WORKFLOW

    def platform_round() -> float:
        return percentile([t.total_ms for t in platform.sequential(workflows)], q)

    def bare_round() -> float:
        return percentile(raw.run(bare.run(workflows, concurrent=False)).latencies, q)

    def raw_round() -> float:
        return percentile(raw.run(raw_round_trips(raw, samples)), q)

    def commit_round(other: EnginePlatform) -> Round:
        return lambda: percentile([t.total_ms for t in other.sequential(workflows)], q)

    commits = {c.label: commit_round(_commit_platform(env, c)) for c in _commits(env)}
    return {PLATFORM: platform_round, BARE: bare_round, RAW: raw_round, **commits}


@contextmanager
def _p50_contenders(env: Env) -> Iterator[Contenders]:
    yield _latency_contenders(env, 0.5)


@contextmanager
def _p99_contenders(env: Env) -> Iterator[Contenders]:
    yield _latency_contenders(env, 0.99)


# -------------------------------------------------------------- throughput


def _platform_rate(platform: EnginePlatform, workflows: int) -> Round:
    def run() -> float:
        return platform.concurrent(workflows).rate

    return run


def _bare_rate(raw: RawNats, bare: BareLoop, workflows: int) -> Round:
    def run() -> float:
        result = raw.run(bare.run(workflows, concurrent=True))
        return result.steps / result.wall

    return run


@contextmanager
def _throughput_contenders(env: Env) -> Iterator[Contenders]:
    workflows = _concurrent_workflows(env)
    yield {
        PLATFORM: _platform_rate(_platform(env), workflows),
        BARE: _bare_rate(_raw(env), _bare(env), workflows),
        **{c.label: _platform_rate(_commit_platform(env, c), workflows) for c in _commits(env)},
    }


def _scaled_contenders(orchestrators: int, workers: int) -> Benchmark:
    name = _name(orchestrators, workers)

    @contextmanager
    def contenders(env: Env) -> Iterator[Contenders]:
        workflows = _concurrent_workflows(env)
        with _services(env, orchestrators, workers) as scaled:
            yield {
                name: _platform_rate(scaled, workflows),
                PLATFORM: _platform_rate(_platform(env), workflows),
            }

    return Benchmark(
        name=f"{CONCURRENT} concurrent workflows, scaled out",
        unit="steps/s",
        better="higher",
        subject=name,
        baselines=(PLATFORM,),
        contenders=contenders,
        target=Target(">=", value=RATE_TARGET),
        rounds=3,
        profile_miss=False,
        note=f"{name}: the same {CONCURRENT}-workflow rounds against a second set of service "
        f"processes, next to the 1 + 1 platform (3 rounds each).",
    )


# ---------------------------------------------------------------- appendix


def _appendix(env: Env) -> str:
    sizes = Sizes(
        timeline=env.size(60, 5), profiled=env.size(40, 5), concurrent=_concurrent_workflows(env)
    )
    text = step_breakdown(
        _platform(env),
        _raw(env),
        _bare(env),
        env.server_pid,
        sizes,
        env.config.profile_dir,
    )
    parts = [_code_state(), text]
    commits = _commits(env)
    if commits:
        others = {c.label: _commit_platform(env, c) for c in commits}
        parts.append(
            versus_commits(
                (f"this tree ({_head()})", _platform(env)),
                others,
                env.server_pid,
                sizes,
                repeats=env.size(5, 1),
                idle_s=env.size(10, 2),
            )
        )
    return "\n\n".join(parts)


def _head() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout.strip() or "unknown commit"


def _code_state() -> str:
    """Which engine code was measured: the commit, and whether it had local changes."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            return ""
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "platform", "capabilities")
    changed = len(dirty.splitlines()) if dirty else 0
    state = (
        f"with uncommitted changes in {changed} file(s) of `platform/` and `capabilities/`"
        if changed
        else "with no uncommitted changes in `platform/` or `capabilities/`"
    )
    return f"Engine code measured: commit `{commit}`, {state}."


# -------------------------------------------------------------- the suite


def _commits_note(env: Env) -> str:
    commits = _commits(env)
    if not commits:
        return ""
    names = ", ".join(c.label for c in commits)
    return (
        f" {names}: the same rounds against that commit's own `jetagent orchestrator` and "
        "`jetagent worker reasoning tools` (its tree and a virtualenv with it installed, "
        "`--against`), on the same server, fed by the same client, interleaved round by "
        "round with this tree's."
    )


def _benchmarks(env: Env) -> list[Benchmark]:
    labels = tuple(c.label for c in _commits(env))
    commits_note = _commits_note(env)
    workflows = _sequential_workflows(env)
    steps = workflows * STEPS_PER_WORKFLOW
    concurrent = _concurrent_workflows(env)
    latency_note = (
        f"{workflows} workflows one after another, {steps} steps per round; a step is "
        "`StepScheduled.at` → `StepCompleted.at` (both the orchestrator's decision times: "
        "event appended → worker pulls it → handler → `StepResult` → orchestrator takes it). "
        f"{BARE}: the same {STEPS_PER_WORKFLOW}-step workflows through the bare loop, result "
        "taken → next schedule published → ... → result taken. "
        f"{RAW}: {steps} messages one at a time, pull request already waiting." + commits_note
    )
    return [
        Benchmark(
            name="step round trip p50, 1 workflow at a time",
            unit="ms",
            better="lower",
            subject=PLATFORM,
            baselines=(BARE, RAW, *labels),
            contenders=_p50_contenders,
            target=Target("<=", baseline=BARE, factor=BARE_FACTOR),
            profile_miss=False,
            note=latency_note,
        ),
        Benchmark(
            name="step round trip p99, 1 workflow at a time",
            unit="ms",
            better="lower",
            subject=PLATFORM,
            baselines=(BARE, RAW, *labels),
            contenders=_p99_contenders,
            target=Target("<=", value=P99_TARGET_MS),
            profile_miss=False,
            note=f"the same rounds as p50, the 99th percentile (nearest rank) of {steps} steps.",
        ),
        Benchmark(
            name=f"{CONCURRENT} concurrent workflows",
            unit="steps/s",
            better="higher",
            subject=PLATFORM,
            baselines=(BARE, *labels),
            contenders=_throughput_contenders,
            target=Target(">=", value=RATE_TARGET),
            profile_miss=False,
            note=f"{concurrent} workflows submitted at once (`Client.submit`, gathered), "
            f"{concurrent * STEPS_PER_WORKFLOW} steps; rate = steps / (first submit → last "
            f"final event). {BARE}: {concurrent} bare-loop workflows at once." + commits_note,
        ),
        _scaled_contenders(1, 2),
        _scaled_contenders(2, 1),
        _scaled_contenders(2, 2),
    ]


SUITE = Suite(
    name="engine",
    title="workflow engine: step latency and throughput vs a bare loop and raw nats-py",
    description=(
        "The platform as deployed: `jetagent orchestrator` and `jetagent worker reasoning "
        "tools` as separate processes on a local nats-server (file storage), fed by "
        "`jetagent.client.Client`; each workflow is the 7-step request *“What is 3 * 4? "
        "Then add 2 to the result then add 5 to the result”* (reasoning → calculator → "
        "reasoning → calculator → reasoning → calculator → reasoning), served by the "
        "offline deterministic provider and the calculator, both instant: what "
        "is measured is the platform's own cost per step. Baselines on the same server: the "
        "raw nats-py publish → durable pull consumer → ack round trip, and a bare step loop "
        "(one process, in-memory state, no event store, no aggregate, no tracking: "
        "`bench/_engine_baselines.py`). Workflow ends are noticed with one core-NATS "
        "subscription; step times are read from the stream after each round."
    ),
    benchmarks=_benchmarks,
    appendix=_appendix,
    compares_commits=True,
)
