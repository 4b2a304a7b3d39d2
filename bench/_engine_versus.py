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
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ._engine_analysis import Meter, Sizes, Usage, process_lines
from ._engine_platform import SEGMENTS, EnginePlatform, StepTiming, percentile
from ._harness import fmt
from ._profile import ThreadProfile, summarise

_RECEIVED = ("nats/aio/client.py", "_process_msg")
_SENT = ("nats/aio/client.py", "_send_publish")

__all__ = ["versus_commits"]

_CLIENT = "bench client"
_SERVER = "nats-server"


@dataclass(frozen=True)
class _Profiled:
    """One profiled run of a commit's services."""

    steps: int
    wall: float
    threads: dict[str, tuple[ThreadProfile, Path]]
    """By role: the service's main thread, and its ``.prof`` file."""
    messages: dict[str, tuple[int, int]]
    """By role: NATS messages received and sent (nats-py's calls, counted by cProfile:
    exact whatever the load)."""


def _messages(path: Path) -> tuple[int, int]:
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    received = sent = 0
    for (filename, _, func), (_, calls, _, _, _) in raw.items():
        if filename.endswith(_RECEIVED[0]) and func == _RECEIVED[1]:
            received += calls
        elif filename.endswith(_SENT[0]) and func == _SENT[1]:
            sent += calls
    return received, sent


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
    profiled: dict[str, _Profiled] = field(default_factory=dict)
    """By mode: one workflow at a time, many at once."""
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


def _profile(side: _Side, mode: str, run: Callable[[], int]) -> None:
    platform = side.platform
    platform.profile_start()
    started = time.perf_counter()
    try:
        steps = run()
    finally:
        wall = time.perf_counter() - started
        files = platform.profile_stop()
    threads, messages = {}, {}
    for name, path in files.items():
        role = name.split("-")[0]
        threads[role] = (summarise(name, path), path)
        messages[role] = _messages(path)
    side.profiled[mode] = _Profiled(steps=steps, wall=wall, threads=threads, messages=messages)


def _one_at_a_time(platform: EnginePlatform, workflows: int) -> int:
    return len(platform.sequential(workflows))


def _at_once(platform: EnginePlatform, workflows: int) -> int:
    return platform.concurrent(workflows).steps


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


def _messages_table(sides: Sequence[_Side]) -> list[str]:
    """NATS messages each service received and sent per step, in each profiled run."""
    modes = list(dict.fromkeys(m for s in sides for m in s.profiled))
    header = ["service: messages per step (received / sent)"]
    header += [f"{mode}, {s.name}" for mode in modes for s in sides]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    roles = list(dict.fromkeys(r for s in sides for p in s.profiled.values() for r in p.messages))
    for role in roles:
        cells = []
        for mode in modes:
            for side in sides:
                run = side.profiled.get(mode)
                counts = None if run is None else run.messages.get(role)
                if run is None or counts is None or not run.steps:
                    cells.append("—")
                else:
                    cells.append(f"{counts[0] / run.steps:.2f} / {counts[1] / run.steps:.2f}")
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return lines


def _category_table(sides: Sequence[_Side], mode: str, role: str, limit: int = 14) -> list[str]:
    """µs per step (profiled) by package, for one role, every side; largest first."""
    per: list[dict[str, float]] = []
    for side in sides:
        run = side.profiled.get(mode)
        entry = None if run is None else run.threads.get(role)
        values: dict[str, float] = {}
        if run is not None and entry is not None and run.steps:
            thread, _ = entry
            for category, seconds in thread.categories:
                if not category.startswith("waiting"):
                    values[category] = 1e6 * seconds / run.steps
        per.append(values)
    categories = sorted(
        {c for values in per for c in values}, key=lambda c: -max(v.get(c, 0.0) for v in per)
    )[:limit]
    header = [f"{role}, {mode}: package (profiled µs per step)", *(s.name for s in sides)]
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
    one, many = "1 at a time", f"{sizes.concurrent} at once"
    for side in sides:
        _profile(side, one, partial(_one_at_a_time, side.platform, sizes.profiled))
        _profile(side, many, partial(_at_once, side.platform, sizes.concurrent))
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
        f"cProfile inside the services, once per commit: {sizes.profiled} workflows one at a "
        f"time, then {sizes.concurrent} at once. NATS messages per step each service "
        "received and sent (nats-py's `_process_msg` and `_send_publish` calls: exact "
        "counts, whatever the load):",
        "",
        *_messages_table(sides),
        "",
        "Time by package, profiled µs per step (cProfile inflates Python-level costs; "
        "compare the columns with each other):",
    ]
    for mode in (one, many):
        for role in ("orchestrator", "worker"):
            lines += ["", *_category_table(sides, mode, role)]
    for side in sides:
        lines += ["", f"*{side.name}*, the services' own code by cumulative time:", ""]
        for mode, run in side.profiled.items():
            for role, (thread, path) in run.threads.items():
                lines.append(process_lines(f"{role}, {mode}", thread, path, run.steps, run.wall))
    return "\n".join(lines)
