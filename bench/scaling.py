"""Suite ``scaling``: how the platform's cost grows with work, on one node.

At 10, 100, 1,000 and 10,000 concurrent workflows (``bench._scaling``: a fresh platform
per size — orchestrator, ``worker reasoning``, ``worker tools`` and ``projections run``
as processes — each workflow the 3-step offline request *“What is 3 * 4?”*), measured
in the same rounds: steps per second and the p99 step round trip against the bare step
loop (``bench._engine_baselines``) at the same size, and the services' peak resident
memory against the same services idle. The appendix holds the whole curve — every
process's memory, CPU per step, the projections' lag, how long each size took — as a
table and a plot in text. A size that does not finish within the bound (10 min a round)
is reported as such with what did finish, never skipped.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TypeVar

from ._engine_baselines import BareLoop, LoopRun
from ._engine_platform import percentile
from ._fixtures import RawNats
from ._harness import Benchmark, Contenders, Env, Round, Suite, fmt
from ._report import code_state
from ._scaling import PROCESSES, SUBMIT_WINDOW, WORKLOAD, Point, PointRound, open_point

__all__ = ["SUITE"]

T = TypeVar("T")

SIZES = (10, 100, 1_000, 10_000)
QUICK_SIZES = (10, 100, 1_000)
BOUND_S = 600.0
"""The most one round at one size may take before it is recorded as not finished."""
PLATFORM = "jetagent, 1 orchestrator + 2 workers + projections"
BARE = "bare loop"
IDLE = "the same services, idle"
_SERVICES = ("orchestrator", "worker reasoning", "worker tools", "projections")


def _sizes(env: Env) -> tuple[int, ...]:
    return QUICK_SIZES if env.quick else SIZES


def _rounds(n: int) -> int:
    return 1 if n >= 10_000 else 3


class _Points:
    """One platform at a time: opening the next size stops the one before (its results
    are kept for the appendix)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.done: list[Point] = []
        self._current: Point | None = None
        self._stack = ExitStack()

    def get(self, n: int) -> Point:
        if self._current is not None and self._current.workflows == n:
            return self._current
        self.close()
        env = self.env
        url = env.nats_url
        self._current = self._stack.enter_context(
            open_point(url, env.tmp / "logs", n, server_pid=env.server_pid, bound_s=BOUND_S)
        )
        self.done.append(self._current)
        return self._current

    def close(self) -> None:
        self._stack.close()
        self._current = None


def _points(env: Env) -> _Points:
    @contextmanager
    def make() -> Iterator[_Points]:
        points = _Points(env)
        try:
            yield points
        finally:
            points.close()

    return env.shared("scaling:points", make)


@contextmanager
def _bare_loop(env: Env) -> Iterator[tuple[RawNats, BareLoop]]:
    raw = RawNats(env.nats_url)
    bare = BareLoop(raw, env.nats_url, steps_per_workflow=WORKLOAD.steps)
    try:
        raw.run(bare.open())
        raw.run(bare.run(20, concurrent=False))  # warm-up
        yield raw, bare
        raw.run(bare.close())
    finally:
        raw.close()


def _bare(env: Env) -> tuple[RawNats, BareLoop]:
    return env.shared("scaling:bare", lambda: _bare_loop(env))


def _nth(
    rounds: Callable[[], Sequence[T]], fresh: Callable[[], None], value: Callable[[T], float]
) -> Round:
    """A round function that reads the i-th round the throughput row of the same size
    already ran (and runs one more only if there is none)."""
    taken = 0

    def run() -> float:
        nonlocal taken
        i, taken = taken, taken + 1
        if i >= len(rounds()):
            fresh()
        return value(rounds()[i])

    return run


def _services_peak(r: PointRound) -> float:
    return sum(r.peak_mib.get(s, 0.0) for s in _SERVICES)


def _contenders(env: Env, n: int, kind: str) -> Contenders:
    point = _points(env).get(n)
    raw, bare = _bare(env)

    def platform_round() -> None:
        point.run()

    def bare_round() -> None:
        run = bare.run(n, concurrent=True, timeout=BOUND_S, window=SUBMIT_WINDOW)
        point.bare.append(raw.run(run))

    def platform_rounds() -> list[PointRound]:
        return point.rounds

    def bare_rounds() -> list[LoopRun]:
        return point.bare

    if kind == "rate":

        def platform_rate() -> float:
            platform_round()
            return point.rounds[-1].rate

        def bare_rate() -> float:
            bare_round()
            return point.bare[-1].steps / point.bare[-1].wall

        return {PLATFORM: platform_rate, BARE: bare_rate}
    if kind == "p99":
        return {
            PLATFORM: _nth(platform_rounds, platform_round, lambda r: r.p99_ms),
            BARE: _nth(bare_rounds, bare_round, lambda r: percentile(r.latencies, 0.99)),
        }
    idle = sum(point.idle_mib.get(s, 0.0) for s in _SERVICES)
    return {PLATFORM: _nth(platform_rounds, platform_round, _services_peak), IDLE: lambda: idle}


def _row(n: int, kind: str) -> Callable[[Env], AbstractContextManager[Contenders]]:
    @contextmanager
    def contenders(env: Env) -> Iterator[Contenders]:
        yield _contenders(env, n, kind)

    return contenders


def _benchmarks(env: Env) -> list[Benchmark]:
    rows = []
    for n in _sizes(env):
        rounds = _rounds(n)
        steps = n * WORKLOAD.steps
        rows += [
            Benchmark(
                name=f"{n:,} concurrent workflows: throughput",
                unit="steps/s",
                better="higher",
                subject=PLATFORM,
                baselines=(BARE,),
                contenders=_row(n, "rate"),
                rounds=rounds,
                profile_miss=False,
                note=f"{n:,} workflows submitted at once ({steps:,} steps); rate = steps / "
                f"(first submit → last final event); a round may take {BOUND_S:.0f} s at most.",
            ),
            Benchmark(
                name=f"{n:,} concurrent workflows: p99 step round trip",
                unit="ms",
                better="lower",
                subject=PLATFORM,
                baselines=(BARE,),
                contenders=_row(n, "p99"),
                rounds=rounds,
                profile_miss=False,
            ),
            Benchmark(
                name=f"{n:,} concurrent workflows: peak memory of the services",
                unit="MiB RSS",
                better="lower",
                subject=PLATFORM,
                baselines=(IDLE,),
                contenders=_row(n, "memory"),
                rounds=rounds,
                profile_miss=False,
                words=("smaller", "larger"),
            ),
        ]
    return rows


# ------------------------------------------------------------ appendix


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _curve(points: list[Point]) -> str:
    head = (
        "| concurrent workflows | rounds | finished | a round (s) | steps/s | p50 step (ms) "
        "| p99 step (ms) | bare loop steps/s | bare loop p99 (ms) | "
        + " | ".join(f"{p} peak MiB" for p in PROCESSES)
        + " | CPU ms per step, services | cores busy, services + server | projections caught "
        "up after (s) | time at this size (s) |"
    )
    lines = [head, "|" + "--:|" * (head.count("|") - 1)]
    if points:
        idle = points[0].idle_mib
        cells = ["idle (after start-up)", "—", "—", "—", "—", "—", "—", "—", "—"]
        cells += [fmt(idle[p]) if p in idle else "—" for p in PROCESSES]
        lines.append("| " + " | ".join([*cells, "—", "—", "—", "—"]) + " |")
    for point in points:
        rounds = point.rounds
        finished = sum(r.finished for r in rounds)
        ended = ", ".join(f"{r.ended:,}/{r.workflows:,}" for r in rounds if not r.finished)
        steps = sum(r.steps for r in rounds)
        cpu = sum(sum(r.cpu_s.get(s, 0.0) for s in _SERVICES) for r in rounds)
        lags = [r.projections_lag_s for r in rounds if r.projections_lag_s is not None]
        cells = [
            f"{point.workflows:,}",
            str(len(rounds)),
            f"{finished}/{len(rounds)}" + (f" (ended: {ended})" if ended else ""),
            fmt(_median([r.wall_s for r in rounds])),
            fmt(_median([r.rate for r in rounds])),
            fmt(_median([r.p50_ms for r in rounds])),
            fmt(_median([r.p99_ms for r in rounds])),
            fmt(_median([b.steps / b.wall for b in point.bare])),
            fmt(_median([percentile(b.latencies, 0.99) for b in point.bare])),
        ]
        cells += [
            fmt(_median([r.peak_mib.get(p, float("nan")) for r in rounds])) for p in PROCESSES
        ]
        cells += [
            fmt(cpu * 1000 / steps) if steps else "—",
            fmt(_median([sum(r.cpu_s.values()) / r.wall_s for r in rounds if r.wall_s])),
            fmt(_median(lags)) if lags else "—",
            f"{point.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_table(points: list[Point]) -> str:
    """CPU per step of each process: where the work of a step is done, by size."""
    lines = [
        "| concurrent workflows | " + " | ".join(f"{p} CPU ms/step" for p in PROCESSES) + " |",
        "|" + "--:|" * (len(PROCESSES) + 1),
    ]
    for point in points:
        steps = sum(r.steps for r in point.rounds)
        cells = [
            fmt(sum(r.cpu_s.get(p, 0.0) for r in point.rounds) * 1000 / steps) if steps else "—"
            for p in PROCESSES
        ]
        lines.append(f"| {point.workflows:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bars(title: str, unit: str, values: list[tuple[str, float]], width: int = 40) -> list[str]:
    top = max((v for _, v in values if v == v), default=0.0)
    lines = [title]
    for label, value in values:
        bar = "█" * (round(width * value / top) if top and value == value else 0)
        lines.append(f"{label:>7} │{bar} {fmt(value)} {unit}")
    return lines


def _plot(points: list[Point]) -> str:
    def med(point: Point, get: Callable[[PointRound], float]) -> float:
        return _median([get(r) for r in point.rounds])

    labels = [f"{p.workflows:,}" for p in points]
    lines = ["```"]
    lines += _bars(
        "steps/s by concurrent workflows",
        "steps/s",
        [(lab, med(p, lambda r: r.rate)) for lab, p in zip(labels, points, strict=True)],
    )
    lines += [""]
    lines += _bars(
        "p99 step round trip",
        "ms",
        [(lab, med(p, lambda r: r.p99_ms)) for lab, p in zip(labels, points, strict=True)],
    )
    lines += [""]
    lines += _bars(
        "peak memory, all four services",
        "MiB",
        [(lab, med(p, _services_peak)) for lab, p in zip(labels, points, strict=True)],
    )
    lines.append("```")
    return "\n".join(lines)


def _appendix(env: Env) -> str:
    points = _points(env)
    points.close()  # the last size's time is complete
    done = points.done
    unfinished = [p for p in done if any(not r.finished for r in p.rounds)]
    parts = [
        code_state("platform", "capabilities", "projections"),
        "**The curve** (medians of each size's rounds; memory is each process's peak "
        "resident set during a round, sampled from /proc at 10 Hz; CPU is all four "
        "services' CPU time from /proc over the rounds / the steps; cores busy is the CPU "
        "time of the services and the nats-server / a round's wall time — on a machine "
        "shared with other work, the share this run got; the projections' lag includes "
        "their 1 s checkpoint interval):",
        _curve(done),
        "**CPU per step, by process** (all rounds of each size; /proc):",
        _cpu_table(done),
        _plot(done),
    ]
    for point in unfinished:
        late = [r for r in point.rounds if not r.finished]
        parts.append(
            f"**{point.workflows:,} concurrent workflows did not finish within "
            f"{BOUND_S:.0f} s** in {len(late)} round(s): "
            + "; ".join(f"{r.ended:,} ended, {r.steps:,} steps" for r in late)
            + "."
        )
    return "\n\n".join(parts)


SUITE = Suite(
    name="scaling",
    title="how cost grows with work: 10 to 10,000 concurrent workflows on one node",
    description=(
        "The platform as deployed, started fresh for each size on the suite's nats-server: "
        "`jetagent orchestrator`, `jetagent worker reasoning`, `jetagent worker tools` and "
        "`jetagent projections run`, each a process. Each workflow is the 3-step offline "
        "request *“What is 3 * 4?”* (reasoning → calculator → reasoning, all instant), so "
        "what grows is the platform's own work. A round submits every workflow at once "
        f"(at most {SUBMIT_WINDOW} submits in flight, none waiting for a workflow to end) "
        f"and waits for all to end, {BOUND_S:.0f} s at most. In the same rounds: steps per second "
        "and the p99 step round trip (`StepScheduled.at` → `StepCompleted.at`, read from "
        "the streams) against the bare step loop at the same size, and the four services' "
        "peak resident memory (sum) against the same services idle. Rounds: 3 per size, 1 "
        "at 10,000. The whole curve, process by process, is in the appendix."
    ),
    benchmarks=_benchmarks,
    appendix=_appendix,
)
