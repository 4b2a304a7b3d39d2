"""The benchmark harness: suites of benchmarks, rounds, medians, targets.

A :class:`Suite` is a named list of :class:`Benchmark` values. A benchmark measures one
quantity (a latency, a rate) for its *subject* and for its *baselines* in the same run:
its ``contenders`` context manager sets everything up and yields one round function per
contender; each round function returns the round's value in the benchmark's unit. The
harness runs the rounds interleaved (round 1 of every contender, then round 2, ... with
the order rotated each round, so drift of the machine hits all of them alike) and reports
the median of the rounds.

A :class:`Target` is absolute (``< 500 µs``) or relative to a baseline measured in the
same run (``< SQLite``, ``<= 2.5x bare loop``). When a subject misses its target the
harness profiles one more round of it (see ``_profile``) and keeps a short "where the
time goes" note. A suite may add an *appendix*: markdown it measures after its
benchmarks (the ``engine`` suite's per-process profile), written under its table.
"""

from __future__ import annotations

import gc
import math
import operator
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

from rich.progress import Progress, TaskID
from rich.table import Table

from jetagent.embedded import EmbeddedServer

from ._profile import (
    CpuUse,
    ProfileSummary,
    measure_cpu,
    profile_call,
    unwatch_process,
    watch_process,
)

__all__ = [
    "Benchmark",
    "Contenders",
    "Env",
    "Round",
    "Row",
    "RunConfig",
    "Suite",
    "SuiteResult",
    "Target",
    "rich_table",
    "run_suite",
]

T = TypeVar("T")

Round = Callable[[], float]
"""One round of one contender: runs the workload and returns its value in the unit."""

Contenders = Mapping[str, Round]
"""Round functions by contender name: the subject's and each baseline's."""

Better = Literal["lower", "higher"]
TIMES = "\u00d7"
EN_DASH = "\u2013"
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How a run was asked for."""

    quick: bool = False
    """Fewer rounds and smaller data, for smoke testing."""
    profile: bool = False
    """Profile every round of the subjects (``--profile SUITE``); timings are then skewed."""
    profile_misses: bool = True
    """Profile one extra round of a subject that misses its target."""
    profile_dir: Path | None = None
    """Where ``.prof`` files go (``None``: not written)."""
    against: tuple[str, ...] = ()
    """Other commits (``--against 9aab558``) whose code the suites that can measure it
    (:attr:`Suite.compares_commits`) run as extra baselines, built by ``bench._against``."""


@dataclass
class Env:
    """What a suite's benchmarks share: the run's config, a temp folder, a nats-server.

    The server starts on first use of :attr:`nats_url`, on loopback with a free port and
    its store in the temp folder; :meth:`close` stops it and deletes the folder.
    Resources that several benchmarks use (running services, say) come from
    :meth:`shared` and are closed with the suite.
    """

    config: RunConfig
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jetagent-bench-")))
    _server: EmbeddedServer | None = field(default=None, init=False, repr=False)
    _stack: ExitStack = field(default_factory=ExitStack, init=False, repr=False)
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def quick(self) -> bool:
        return self.config.quick

    def size(self, full: int, quick: int) -> int:
        """``full``, or ``quick`` in a quick run."""
        return quick if self.config.quick else full

    @cached_property
    def nats_url(self) -> str:
        """URL of this suite's nats-server (started now if it is not running yet)."""
        self._server = EmbeddedServer(self.tmp / "nats").start()
        if self._server.pid is not None:
            watch_process("nats-server", self._server.pid)
        return self._server.url

    @property
    def server_pid(self) -> int | None:
        """The nats-server's process id (``None`` before :attr:`nats_url` is used)."""
        return None if self._server is None else self._server.pid

    def path(self, name: str) -> Path:
        """A fresh path in the temp folder."""
        return Path(tempfile.mkdtemp(dir=self.tmp)) / name

    def shared(self, key: str, make: Callable[[], AbstractContextManager[T]]) -> T:
        """The suite's one ``key`` resource: ``make()`` is entered on first use and
        exited when the suite ends (before the server stops)."""
        if key not in self._shared:
            self._shared[key] = self._stack.enter_context(make())
        value: T = self._shared[key]
        return value

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._shared.clear()
            self._close_server()

    def _close_server(self) -> None:
        if self._server is not None:
            unwatch_process("nats-server")
            self._server.stop()
            self._server = None
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass(frozen=True)
class Target:
    """What the subject should reach: ``op`` against a value, or ``factor`` times a
    baseline's median."""

    op: Literal["<", "<=", ">", ">="]
    value: float | None = None
    baseline: str | None = None
    factor: float = 1.0
    """With a baseline: compare with this multiple of it (``<= 2.5x bare loop``)."""
    plus: float = 0.0
    """With a baseline: and this much more, in the unit (``<= server failover + 1 s``)."""

    def __post_init__(self) -> None:
        if (self.value is None) == (self.baseline is None):
            raise ValueError("a target compares with either a value or a baseline")
        if (self.factor != 1.0 or self.plus) and self.baseline is None:
            raise ValueError("a factor or a margin applies to a baseline")

    def describe(self, unit: str) -> str:
        if self.baseline is not None:
            times = "" if self.factor == 1.0 else f"{self.factor:g}{TIMES} "
            plus = f" + {fmt(self.plus)} {unit}" if self.plus else ""
            return f"{self.op} {times}{self.baseline}{plus}"
        assert self.value is not None
        return f"{self.op} {fmt(self.value)} {unit}"

    def met(self, value: float, baselines: Mapping[str, float]) -> bool | None:
        """Whether ``value`` meets the target (``None``: its baseline was not measured)."""
        if self.baseline is None:
            other = self.value
        else:
            base = baselines.get(self.baseline)
            other = None if base is None else base * self.factor + self.plus
        if other is None:
            return None
        if math.isnan(value):
            return False  # not measured because the work did not finish: a miss
        return _OPS[self.op](value, other)


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    """One measured quantity, for a subject and its baselines."""

    name: str
    unit: str
    better: Better
    subject: str
    baselines: tuple[str, ...]
    contenders: Callable[[Env], AbstractContextManager[Contenders]]
    target: Target | None = None
    rounds: int = 5
    quick_rounds: int = 1
    note: str = ""
    """Said under the suite's table (what exactly is measured, sizes)."""
    profile_miss: bool = True
    """Profile one more round of the subject when it misses its target (off when the
    suite's appendix already profiles that workload)."""
    words: tuple[str, str] = ("faster", "slower")
    """How "subject vs baseline" reads when the subject is better / worse (a size:
    ``("smaller", "larger")``)."""


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A named list of benchmarks, run and reported together."""

    name: str
    title: str
    description: str
    benchmarks: Callable[[Env], Sequence[Benchmark]]
    """The benchmarks; a function so that sizes can depend on the run (quick or not)."""
    appendix: Callable[[Env], str] | None = None
    """Run after the benchmarks, on the same ``Env``: markdown written under the suite's
    table (for findings a table of medians cannot hold, such as a profile per process)."""
    compares_commits: bool = False
    """The suite measures :attr:`RunConfig.against` commits too (``--against``)."""


@dataclass(frozen=True, kw_only=True)
class Row:
    """The result of one benchmark."""

    benchmark: Benchmark
    rounds: dict[str, list[float]]
    """Every round's value, by contender."""
    profile: ProfileSummary | None = None
    cpu: CpuUse | None = None
    """CPU use during the subject's last (unprofiled) round."""

    def median(self, contender: str) -> float | None:
        values = self.rounds.get(contender)
        return statistics.median(values) if values else None

    @property
    def value(self) -> float:
        value = self.median(self.benchmark.subject)
        assert value is not None
        return value

    @property
    def baselines(self) -> dict[str, float]:
        out = {}
        for name in self.benchmark.baselines:
            value = self.median(name)
            if value is not None:
                out[name] = value
        return out

    @property
    def met(self) -> bool | None:
        target = self.benchmark.target
        return None if target is None else target.met(self.value, self.baselines)

    def versus(self, baseline: str) -> str:
        """How the subject compares with a baseline: ``"2.10x faster"``, ``"1.30x slower"``."""
        other = self.baselines.get(baseline)
        if not other or not self.value:
            return "—"
        ratio = self.value / other
        if self.benchmark.better == "lower":
            ratio = 1 / ratio
        better, worse = self.benchmark.words
        word = better if ratio >= 1 else worse
        factor = ratio if ratio >= 1 else 1 / ratio
        return f"{factor:.2f}{TIMES} {word}"

    def spread(self, contender: str) -> str:
        values = self.rounds.get(contender) or []
        if len(values) < 2:
            return "—"
        return f"{fmt(min(values))}{EN_DASH}{fmt(max(values))}"


@dataclass(frozen=True, kw_only=True)
class SuiteResult:
    suite: Suite
    rows: list[Row]
    load: float | None = None
    """1-minute load average when the suite started: other work skews the numbers."""
    load_during: tuple[float, float, float] | None = None
    """The 1-minute load average sampled while the suite ran: (lowest, mean, highest)."""
    seconds: float = 0.0
    """How long the suite took, set-up and appendix included."""
    appendix: str = ""
    """The suite's appendix (markdown), if it has one."""


def fmt(value: float) -> str:
    """A number with as many digits as a benchmark result deserves."""
    if math.isnan(value):
        return "n/a"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def met_mark(met: bool | None) -> str:
    return {True: "✅ met", False: "❌ missed", None: "—"}[met]


class _LoadSampler:
    """The machine's 1-minute load average, sampled in a thread while a suite runs."""

    def __init__(self, interval: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="bench-load", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> _LoadSampler:
        if hasattr(os, "getloadavg"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if hasattr(os, "getloadavg"):
            self.samples.append(os.getloadavg()[0])

    @property
    def summary(self) -> tuple[float, float, float] | None:
        if not self.samples:
            return None
        return min(self.samples), statistics.fmean(self.samples), max(self.samples)


def run_suite(suite: Suite, config: RunConfig, progress: Progress) -> SuiteResult:
    """Run every benchmark of ``suite``, showing progress; one server for the suite."""
    env = Env(config)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.monotonic()
    try:
        with _LoadSampler() as sampler:
            benchmarks = list(suite.benchmarks(env))
            total = sum(_rounds(b, config) * (1 + len(b.baselines)) for b in benchmarks)
            task = progress.add_task(f"[bold]{suite.name}[/]", total=total)
            rows = [_run_benchmark(suite, b, env, progress, task) for b in benchmarks]
            appendix = ""
            if suite.appendix is not None:
                progress.update(task, description=f"[bold]{suite.name}[/] appendix")
                appendix = suite.appendix(env)
            progress.update(task, description=f"[bold]{suite.name}[/] done")
    finally:
        env.close()
    return SuiteResult(
        suite=suite,
        rows=rows,
        load=load,
        load_during=sampler.summary,
        seconds=time.monotonic() - started,
        appendix=appendix,
    )


def _rounds(benchmark: Benchmark, config: RunConfig) -> int:
    if config.profile:
        return 1  # one profiled round says where the time goes; more say it again
    return benchmark.quick_rounds if config.quick else benchmark.rounds


def _run_benchmark(
    suite: Suite, benchmark: Benchmark, env: Env, progress: Progress, task: TaskID
) -> Row:
    config = env.config
    names = [benchmark.subject, *benchmark.baselines]
    rounds: dict[str, list[float]] = {name: [] for name in names}
    cpu: CpuUse | None = None
    progress.update(task, description=f"[bold]{suite.name}[/] {benchmark.name}: setting up")
    with ExitStack() as stack:
        contenders = stack.enter_context(benchmark.contenders(env))
        missing = set(names) - set(contenders)
        if missing:
            raise RuntimeError(f"{benchmark.name}: no round function for {sorted(missing)}")
        n = _rounds(benchmark, config)
        for i in range(n):
            for name in _rotated(names, i):
                progress.update(
                    task,
                    description=f"[bold]{suite.name}[/] {benchmark.name}: {name} ({i + 1}/{n})",
                )
                value, used = _one_round(suite, benchmark, name, contenders[name], config)
                rounds[name].append(value)
                if name == benchmark.subject and used is not None:
                    cpu = used
                progress.advance(task)
        row = Row(benchmark=benchmark, rounds=rounds, cpu=cpu)
        miss = row.met is False and benchmark.profile_miss
        if miss and config.profile_misses and not config.profile:
            progress.update(
                task, description=f"[bold]{suite.name}[/] {benchmark.name}: profiling the miss"
            )
            summary = profile_call(
                contenders[benchmark.subject],
                label=f"{suite.name}/{benchmark.name}",
                out_dir=config.profile_dir,
            )
            row = Row(benchmark=benchmark, rounds=rounds, cpu=cpu, profile=summary)
    return row


def _one_round(
    suite: Suite, benchmark: Benchmark, name: str, round_fn: Round, config: RunConfig
) -> tuple[float, CpuUse | None]:
    gc.collect()
    if name != benchmark.subject:
        return round_fn(), None
    if config.profile:
        summary = profile_call(
            round_fn, label=f"{suite.name}/{benchmark.name}", out_dir=config.profile_dir
        )
        summary.print_top()
        return summary.value, None
    return measure_cpu(round_fn)


def _rotated(names: Sequence[str], i: int) -> Iterator[str]:
    k = i % len(names)
    yield from [*names[k:], *names[:k]]


def rich_table(result: SuiteResult) -> Table:
    """The suite's results as a rich table for the terminal."""
    table = Table(title=f"{result.suite.name} — {result.suite.title}", title_justify="left")
    for header, justify in [
        ("benchmark", "left"),
        ("subject", "left"),
        ("median", "right"),
        ("baseline", "left"),
        ("baseline median", "right"),
        ("vs baseline", "left"),
        ("target", "left"),
        ("met", "left"),
    ]:
        table.add_column(header, justify=justify, no_wrap=justify == "right")  # type: ignore[arg-type]
    for row in result.rows:
        b = row.benchmark
        baselines = list(b.baselines) or [""]
        for j, base in enumerate(baselines):
            first = j == 0
            base_value = row.baselines.get(base)
            table.add_row(
                f"{b.name} ({b.unit})" if first else "",
                b.subject if first else "",
                fmt(row.value) if first else "",
                base,
                fmt(base_value) if base_value is not None else "—",
                row.versus(base) if base else "",
                b.target.describe(b.unit) if first and b.target else "",
                met_mark(row.met) if first else "",
            )
    return table
