"""The ``engine`` suite's comparison with other commits (``--against``): where they differ.

The suite's table gives each commit's medians of wall-clock rounds. On a shared machine
those move with everything else that runs; the CPU time each process uses per step
moves much less, and says which process got dearer. So after the benchmarks, this tree's
1 + 1 platform and each other commit's are run again, alternately (the order rotated
each repeat), one workflow at a time and many at once, with every process metered
(on-CPU and run-queue time from ``/proc``), then profiled once each (cProfile in the
service processes, many workflows at once) to say in which packages the difference lies.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._engine_analysis import Meter, Sizes, Usage, process_lines
from ._engine_platform import SEGMENTS, EnginePlatform, StepTiming, percentile
from ._harness import fmt
from ._profile import ThreadProfile, summarise

__all__ = ["versus_commits"]

_CLIENT = "bench client"
_SERVER = "nats-server"


@dataclass
class _Side:
    """What one commit's platform used over every repeat."""

    name: str
    platform: EnginePlatform
    seq: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    seq_waited: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    seq_steps: int = 0
    conc: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    conc_waited: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    conc_steps: int = 0
    rates: list[float] = field(default_factory=list)
    timings: list[StepTiming] = field(default_factory=list)
    profiles: dict[str, tuple[ThreadProfile, Path]] = field(default_factory=dict)
    profiled_steps: int = 0
    profiled_wall: float = 0.0
    idle: dict[str, float] = field(default_factory=dict)
    """Cores each service process kept busy while nothing was fed."""

    def pids(self, server_pid: int | None) -> dict[str, int]:
        # Roles, not process names: the columns of two commits line up.
        roles = {name.split("-")[0]: pid for name, pid in self.platform.pids.items()}
        server = {_SERVER: server_pid} if server_pid is not None else {}
        return {_CLIENT: os.getpid(), **roles, **server}


def _add(into: dict[str, float], waited: dict[str, float], used: Mapping[str, Usage]) -> None:
    for name, usage in used.items():
        into[name] += usage.cpu
        if usage.waited is not None:
            waited[name] += usage.waited


def _measure(side: _Side, server_pid: int | None, sizes: Sizes) -> None:
    pids = side.pids(server_pid)
    meter = Meter(pids)
    at_end: list[Mapping[str, Usage]] = []
    timings = side.platform.sequential(sizes.timeline, ended=lambda: at_end.append(meter.used()))
    _add(side.seq, side.seq_waited, at_end[0])
    side.seq_steps += len(timings)
    side.timings += timings
    meter = Meter(pids)
    run = side.platform.concurrent(sizes.concurrent)
    _add(side.conc, side.conc_waited, meter.used())
    side.conc_steps += run.steps
    side.rates.append(run.rate)


def _idle(sides: Sequence[_Side], seconds: float) -> None:
    """Every side's services metered together while no workflow runs: work a service
    does by the clock (timers, pings, metrics) is charged to each step of a slow run."""
    roles = {(i, role): pid for i, s in enumerate(sides) for role, pid in s.pids(None).items()}
    roles = {key: pid for key, pid in roles.items() if key[1] != _CLIENT}
    meter = Meter({f"{i}:{role}": pid for (i, role), pid in roles.items()})
    time.sleep(seconds)
    for name, usage in meter.used().items():
        i, role = name.split(":", 1)
        sides[int(i)].idle[role] = usage.cpu / seconds


def _profile(side: _Side, sizes: Sizes) -> None:
    platform = side.platform
    platform.profile_start()
    started = time.perf_counter()
    try:
        side.profiled_steps = platform.concurrent(sizes.concurrent).steps
    finally:
        side.profiled_wall = time.perf_counter() - started
        files = platform.profile_stop()
    for name, path in files.items():
        side.profiles[name.split("-")[0]] = (summarise(name, path), path)


def _ms(total: float, steps: int) -> str:
    return f"{1000 * total / steps:.3f}" if steps else "—"


def _cpu_table(sides: Sequence[_Side], concurrent: int) -> list[str]:
    names = [s.name for s in sides]
    header = ["process"]
    header += [f"1 at a time: CPU ms/step, {n}" for n in names]
    header += [f"{concurrent} at once: CPU ms/step, {n}" for n in names]
    header += [f"{concurrent} at once: waited for a CPU ms/step, {n}" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    roles = list(dict.fromkeys(r for s in sides for r in s.conc))
    for role in roles:
        cells = [_ms(s.seq.get(role, 0.0), s.seq_steps) for s in sides]
        cells += [_ms(s.conc.get(role, 0.0), s.conc_steps) for s in sides]
        cells += [_ms(s.conc_waited.get(role, 0.0), s.conc_steps) for s in sides]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    cells = [f"**{_ms(sum(s.seq.values()), s.seq_steps)}**" for s in sides]
    cells += [f"**{_ms(sum(s.conc.values()), s.conc_steps)}**" for s in sides]
    cells += ["" for _ in sides]
    lines.append("| **all processes** | " + " | ".join(cells) + " |")
    idle = "; ".join(
        f"{s.name}: " + (", ".join(f"{role} {100 * c:.1f}%" for role, c in s.idle.items()) or "—")
        for s in sides
    )
    lines += [
        "",
        "Idle (nothing fed, the same seconds for every commit), the share of a core each "
        f"service kept busy: {idle}.",
    ]
    return lines


def _timeline_table(sides: Sequence[_Side]) -> list[str]:
    header = ["segment of one step (p50 ms)", *(s.name for s in sides)]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * len(sides) + "|"]
    for segment in SEGMENTS:
        cells = [
            f"{percentile([t.segments()[segment] for t in s.timings], 0.5):.3f}" for s in sides
        ]
        lines.append(f"| {segment} | " + " | ".join(cells) + " |")
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        cells = [f"**{percentile([t.total_ms for t in s.timings], q):.3f}**" for s in sides]
        lines.append(f"| **whole step, {label}** | " + " | ".join(cells) + " |")
    rates = [f"**{fmt(statistics.median(s.rates))}**" for s in sides]
    lines.append("| **many at once: steps/s (median of the repeats)** | " + " | ".join(rates))
    lines[-1] += " |"
    return lines


def _category_table(sides: Sequence[_Side], role: str, limit: int = 14) -> list[str]:
    """µs per step (profiled) by package, for one role, every side; largest first."""
    per: list[dict[str, float]] = []
    for side in sides:
        entry = side.profiles.get(role)
        values: dict[str, float] = {}
        if entry is not None and side.profiled_steps:
            thread, _ = entry
            for category, seconds in thread.categories:
                if not category.startswith("waiting"):
                    values[category] = 1e6 * seconds / side.profiled_steps
        per.append(values)
    categories = sorted(
        {c for values in per for c in values}, key=lambda c: -max(v.get(c, 0.0) for v in per)
    )[:limit]
    header = [f"{role}: package (profiled µs per step)", *(s.name for s in sides)]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * len(sides) + "|"]
    for category in categories:
        lines.append(f"| {category} | " + " | ".join(f"{v.get(category, 0.0):.0f}" for v in per))
        lines[-1] += " |"
    busy = [f"**{sum(v.values()):.0f}**" for v in per]
    lines.append("| **busy, all packages** | " + " | ".join(busy) + " |")
    return lines


def versus_commits(
    this: tuple[str, EnginePlatform],
    others: Mapping[str, EnginePlatform],
    server_pid: int | None,
    sizes: Sizes,
    repeats: int,
    idle_s: float = 10.0,
) -> str:
    """The comparison's markdown: this tree's platform against each other commit's."""
    sides = [_Side(this[0], this[1]), *(_Side(n, p) for n, p in others.items())]
    for i in range(repeats):
        k = i % len(sides)
        for side in [*sides[k:], *sides[:k]]:
            _measure(side, server_pid, sizes)
    _idle(sides, idle_s)
    for side in sides:
        _profile(side, sizes)
    names = ", ".join(f"*{s.name}*" for s in sides)
    lines = [
        f"### This tree against other commits ({names})",
        "",
        f"Measured after the benchmarks: {repeats} repeats, the order rotated each time, of "
        f"{sizes.timeline} workflows one at a time then {sizes.concurrent} at once on each "
        "commit's 1 + 1 platform, every process metered (on-CPU and run-queue time of all "
        "its threads, `/proc/<pid>/task/*/schedstat`, divided by the steps done); the bench "
        "client and the nats-server are the same processes for every commit. CPU per step "
        "is what a loaded machine disturbs least.",
        "",
        *_cpu_table(sides, sizes.concurrent),
        "",
        f"The step's timeline (as in the table above; {len(sides[0].timings)} steps each, "
        "pooled over the repeats) and the rate of the many-at-once runs:",
        "",
        *_timeline_table(sides),
        "",
        f"cProfile inside the services, {sizes.concurrent} workflows at once, once per "
        "commit: time by package, profiled µs per step (cProfile inflates Python-level "
        "costs; compare the columns with each other):",
        "",
        *_category_table(sides, "orchestrator"),
        "",
        *_category_table(sides, "worker"),
    ]
    for side in sides:
        lines += ["", f"*{side.name}*, the services' own code by cumulative time:", ""]
        for role, (thread, path) in side.profiles.items():
            lines.append(process_lines(role, thread, path, side.profiled_steps, side.profiled_wall))
    return "\n".join(lines)
