"""The ``engine`` suite's appendix: where a step's time goes.

Measured on the suite's running platform after its benchmarks, three ways:

1. a timeline of each step from the times the streams themselves record (the
   orchestrator's decision times in the events, the server's store times of
   ``StepScheduled`` and ``StepResult``, the worker's ``started_at`` / ``finished_at``):
   no profiler, so the shares are real wall time;
2. CPU time per step of every process (from ``/proc``), next to the bare loop's;
3. cProfile inside the orchestrator and the worker process for exactly the measured
   window (``bench._engine_service``), one workflow at a time and 200 at once.
"""

from __future__ import annotations

import os
import pstats
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._engine_baselines import BareLoop
from ._engine_platform import ROOT, SEGMENTS, EnginePlatform, StepTiming, percentile
from ._fixtures import RawNats
from ._harness import fmt
from ._profile import ThreadProfile, process_cpu, summarise

__all__ = ["Meter", "Sizes", "Usage", "process_lines", "step_breakdown"]


@dataclass(frozen=True)
class Sizes:
    timeline: int
    """Workflows run one at a time, unprofiled, for the timeline and CPU per step."""
    profiled: int
    """Workflows run one at a time under cProfile."""
    concurrent: int
    """Workflows submitted at once (CPU per step at saturation, and its profile)."""


@dataclass(frozen=True)
class Usage:
    """What a process used during a run: CPU time, and time spent runnable but waiting
    for a CPU (the run-queue delay; ``None`` where the kernel does not report it)."""

    cpu: float
    waited: float | None


def _sched(pid: int) -> Usage | None:
    """CPU and run-queue time (seconds) of every thread of ``pid`` so far.

    From ``/proc/<pid>/task/*/schedstat`` (nanoseconds: on CPU, waiting on a run queue,
    timeslices), else ``/proc/<pid>/stat`` (clock ticks, no run-queue time).
    """
    cpu = waited = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            on_cpu, on_queue, _ = (task / "schedstat").read_text().split()
            cpu += int(on_cpu)
            waited += int(on_queue)
    except (OSError, ValueError):
        used = process_cpu(pid)
        return None if used is None else Usage(used, None)
    return Usage(cpu / 1e9, waited / 1e9)


class Meter:
    """What each process used between its creation and :meth:`used`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.before = self._now()

    def _now(self) -> dict[str, Usage]:
        out = {}
        for name, pid in self.pids.items():
            usage = _sched(pid)
            if usage is not None:
                out[name] = usage
        return out

    def used(self) -> dict[str, Usage]:
        after = self._now()
        out = {}
        for name, end in after.items():
            start = self.before.get(name)
            if start is None:
                continue
            waited = None
            if end.waited is not None and start.waited is not None:
                waited = end.waited - start.waited
            out[name] = Usage(end.cpu - start.cpu, waited)
        return out


@dataclass(frozen=True)
class _Run:
    """One measured run: what each process used, the steps done, the wall time."""

    used: Mapping[str, Usage]
    steps: int
    wall: float

    def cpu_ms(self, name: str) -> str:
        usage = self.used.get(name)
        return "—" if usage is None else f"{1000 * usage.cpu / self.steps:.3f}"

    def waited_ms(self, name: str) -> str:
        usage = self.used.get(name)
        if usage is None or usage.waited is None:
            return "—"
        return f"{1000 * usage.waited / self.steps:.3f}"

    def cores(self, name: str) -> str:
        usage = self.used.get(name)
        return "—" if usage is None else f"{usage.cpu / self.wall:.2f}"

    @property
    def total_cpu_ms(self) -> float:
        return 1000 * sum(u.cpu for u in self.used.values()) / self.steps

    @property
    def total_cores(self) -> float:
        return sum(u.cpu for u in self.used.values()) / self.wall


def _timeline(timings: Sequence[StepTiming]) -> list[str]:
    columns: dict[str, list[float]] = defaultdict(list)
    for timing in timings:
        for name, value in timing.segments().items():
            columns[name].append(value)
    totals = [t.total_ms for t in timings]
    mean_total = statistics.fmean(totals)
    lines = [
        "| segment of one step | p50 ms | p99 ms | mean ms | share of the mean step |",
        "|---|--:|--:|--:|--:|",
    ]
    for name in SEGMENTS:
        values = columns[name]
        mean = statistics.fmean(values)
        lines.append(
            f"| {name} | {percentile(values, 0.5):.3f} | {percentile(values, 0.99):.3f} "
            f"| {mean:.3f} | {100 * mean / mean_total:.0f}% |"
        )
    lines.append(
        f"| **whole step** (`StepScheduled.at` → `StepCompleted.at`) "
        f"| **{percentile(totals, 0.5):.3f}** | **{percentile(totals, 0.99):.3f}** "
        f"| **{mean_total:.3f}** | 100% |"
    )
    firsts = [t.segments()[SEGMENTS[0]] for t in timings if t.first]
    others = [t.segments()[SEGMENTS[0]] for t in timings if not t.first]
    if firsts and others:
        lines += [
            "",
            f"The first segment, p50 / p99: {percentile(firsts, 0.5):.3f} / "
            f"{percentile(firsts, 0.99):.3f} ms for a workflow's first step (its decision "
            "also loads the new workflow: a snapshot lookup and a read of its events), "
            f"{percentile(others, 0.5):.3f} / {percentile(others, 0.99):.3f} ms for the "
            "others. Whole first steps: "
            f"{percentile([t.total_ms for t in timings if t.first], 0.5):.3f} ms p50.",
        ]
    handler = SEGMENTS[3]
    by_capability: dict[str, list[float]] = defaultdict(list)
    for timing in timings:
        by_capability[timing.capability].append(timing.segments()[handler])
    split = ", ".join(
        f"{cap} {percentile(values, 0.5):.3f} ms" for cap, values in sorted(by_capability.items())
    )
    lines += ["", f"The handler segment by capability (p50): {split}."]
    return lines


def _cpu_table(platform: tuple[_Run, _Run], bare: tuple[_Run, _Run], concurrent: int) -> list[str]:
    seq, conc = platform
    bare_seq, bare_conc = bare
    lines = [
        "| process | 1 at a time: CPU ms/step | 1 at a time: waited for a CPU ms/step "
        f"| {concurrent} at once: CPU ms/step | {concurrent} at once: waited ms/step "
        f"| {concurrent} at once: cores busy |",
        "|---|--:|--:|--:|--:|--:|",
    ]

    def rows(runs: tuple[_Run, _Run], label: str) -> None:
        first, second = runs
        for name in second.used:
            lines.append(
                f"| {label}{name} | {first.cpu_ms(name)} | {first.waited_ms(name)} "
                f"| {second.cpu_ms(name)} | {second.waited_ms(name)} | {second.cores(name)} |"
            )

    rows(platform, "")
    lines.append(
        f"| **jetagent, all processes** | **{seq.total_cpu_ms:.3f}** | "
        f"| **{conc.total_cpu_ms:.3f}** | | **{conc.total_cores:.2f}** |"
    )
    rows(bare, "bare loop: ")
    lines.append(
        f"| **bare loop, all processes** | **{bare_seq.total_cpu_ms:.3f}** | "
        f"| **{bare_conc.total_cpu_ms:.3f}** | | **{bare_conc.total_cores:.2f}** |"
    )
    return lines


_OWN_CODE = ("/platform/jetagent/", "/capabilities/")
_NATS_PY = "/site-packages/nats/"


def _short(filename: str, line: int, func: str) -> str:
    for root in _OWN_CODE:
        if root in filename:
            module = filename.split(root, 1)[1].removesuffix(".py").replace("/", ".")
            package = "jetagent" if root == _OWN_CODE[0] else "capabilities"
            return f"{package}.{module}:{line}({func})"
    if _NATS_PY in filename:
        module = filename.split(_NATS_PY, 1)[1].removesuffix(".py").replace("/", ".")
        return f"nats.{module}:{line}({func})"
    return f"{Path(filename).name}:{line}({func})"


def _cumulative(path: Path, steps: int, limit: int) -> list[tuple[str, float]]:
    """jetagent's and capabilities' functions by cumulative time, µs per step."""
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    rows = [
        (_short(filename, line, func), cum)
        for (filename, line, func), (_, _, _, cum, _) in raw.items()
        if any(root in filename for root in _OWN_CODE)
    ]
    rows.sort(key=lambda r: r[1], reverse=True)
    return [(name, 1e6 * cum / steps) for name, cum in rows[:limit]]


def process_lines(name: str, thread: ThreadProfile, path: Path, steps: int, wall: float) -> str:
    busy = thread.busy or 1e-9
    shares = ", ".join(
        f"{category} {100 * t / busy:.0f}%"
        for category, t in thread.categories
        if not category.startswith("waiting")
    )
    shares = ", ".join(shares.split(", ")[:8])
    top = ", ".join(
        f"`{fn}` {100 * own / busy:.0f}%"
        for fn, own, _, _ in thread.top
        if "epoll" not in fn and "acquire" not in fn
    )
    top = ", ".join(top.split(", ")[:8])
    cumulative = ", ".join(f"`{fn}` {us:.0f}" for fn, us in _cumulative(path, steps, 10))
    return "\n".join(
        [
            f"- **{name}**: busy {thread.busy:.2f} s of {wall:.2f} s "
            f"({1e6 * thread.busy / steps:.0f} µs per step, profiled); of the busy time: "
            f"{shares}",
            f"  - top own time (share of busy): {top}",
            f"  - jetagent code by cumulative time, profiled µs per step: {cumulative}",
        ]
    )


def _profiled(
    platform: EnginePlatform,
    run: Callable[[], int],
    label: str,
    *,
    tag: str,
    keep_dir: Path | None,
) -> tuple[list[str], list[Path]]:
    """Run ``run`` (it returns the steps done) with every service process profiled;
    the summary lines and the ``.prof`` files kept in ``keep_dir``."""
    platform.profile_start()
    started = time.perf_counter()
    try:
        steps = run()
    finally:
        wall = time.perf_counter() - started
        files = platform.profile_stop()
    lines = [f"*{label}* — {steps} steps in {wall:.2f} s under the profiler:", ""]
    for name, path in files.items():
        thread = summarise(name, path)
        lines.append(process_lines(name, thread, path, steps, wall))
    kept = []
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            kept.append(keep_dir / f"engine-step-breakdown.{tag}.{name}.prof")
            shutil.copyfile(path, kept[-1])
    return lines, kept


def step_breakdown(
    platform: EnginePlatform,
    raw: RawNats,
    bare: BareLoop,
    server_pid: int | None,
    sizes: Sizes,
    keep_dir: Path | None,
) -> str:
    """The appendix's markdown."""
    server = {"nats-server": server_pid} if server_pid is not None else {}
    pids = {"bench client (this process)": os.getpid(), **platform.pids, **server}

    meter = Meter(pids)
    started = time.perf_counter()
    at_end: list[tuple[dict[str, Usage], float]] = []
    timings = platform.sequential(
        sizes.timeline,
        ended=lambda: at_end.append((meter.used(), time.perf_counter() - started)),
    )
    seq = _Run(at_end[0][0], len(timings), at_end[0][1])
    meter = Meter(pids)
    run = platform.concurrent(sizes.concurrent)
    conc = _Run(meter.used(), run.steps, run.wall)

    bare_pids = {"this process (both roles)": os.getpid(), **server}
    meter = Meter(bare_pids)
    loop = raw.run(bare.run(sizes.timeline, concurrent=False))
    bare_seq = _Run(meter.used(), loop.steps, loop.wall)
    # The bare loop is quick: run more workflows so that CPU times are well above noise.
    meter = Meter(bare_pids)
    loop = raw.run(bare.run(5 * sizes.concurrent, concurrent=True))
    bare_conc = _Run(meter.used(), loop.steps, loop.wall)

    seq_lines, seq_files = _profiled(
        platform,
        lambda: len(platform.sequential(sizes.profiled)),
        f"{sizes.profiled} workflows one at a time",
        tag="sequential",
        keep_dir=keep_dir,
    )
    conc_lines, conc_files = _profiled(
        platform,
        lambda: platform.concurrent(sizes.concurrent).steps,
        f"{sizes.concurrent} workflows at once",
        tag="concurrent",
        keep_dir=keep_dir,
    )
    kept = [_shown(p) for p in [*seq_files, *conc_files]]

    lines = [
        "### Where a step's time goes (measured by the suite after its benchmarks)",
        "",
        f"**Timeline of a step**, {len(timings)} steps of {sizes.timeline} workflows run one "
        "at a time on the 1 + 1 platform, no profiler. Each step is cut at the times the "
        "streams record: the orchestrator's decision times (`StepScheduled.at`, "
        "`StepCompleted.at`), the server's store time of the event before `StepScheduled`, "
        "of `StepScheduled` and of the `StepResult` (`Nats-Time-Stamp`), and the worker's "
        "`started_at` / `finished_at` in the `StepResult`. One host, one clock.",
        "",
        *_timeline(timings),
        "",
        "**CPU per step** of every process (on-CPU time of all its threads, and the time "
        "they were runnable but waiting for a CPU, from `/proc/<pid>/task/*/schedstat`, "
        f"divided by the steps done): the same {sizes.timeline} workflows one at a time, "
        f"then {sizes.concurrent} at once; the bare loop on the same server right after "
        f"({sizes.timeline} workflows one at a time, {5 * sizes.concurrent} at once).",
        "",
        *_cpu_table((seq, conc), (bare_seq, bare_conc), sizes.concurrent),
        "",
        f"In that run: {fmt(conc.steps / conc.wall)} steps/s for the platform, "
        f"{fmt(bare_conc.steps / bare_conc.wall)} steps/s for the bare loop; "
        f"{os.cpu_count()} cores in all.",
        "",
        "**cProfile inside each service process** (`bench._engine_service` starts cProfile "
        "on SIGUSR1 and writes it on SIGUSR2, so the profile covers exactly the run; "
        "cProfile inflates Python-level costs several times over, so read the shares and "
        "the ratios, not the absolute µs):",
        "",
        *seq_lines,
        "",
        *conc_lines,
    ]
    if kept:
        lines += ["", "The `.prof` files: " + ", ".join(f"`{p}`" for p in kept) + "."]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path as a person at the repository root would type it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
