"""cProfile over the calling thread and the event-loop threads doing the real work.

cProfile sees one thread only. The synchronous store hands every call to its private
event-loop thread, so a profile of the calling thread alone shows nothing but a wait.
Suites register such loops with :func:`watch_loop`; :func:`profile_call` then profiles the
calling thread and every registered loop's thread for the duration of one call, and
summarises each thread by where its time went (own time by package) and its top
functions. Work done by other processes (the engine's services) is followed with
:func:`watch_remote`: a pair of callables that start cProfile in those processes and stop
it, returning their ``.prof`` files. Profiling inflates the cost of Python-level calls,
so read the shares, not the absolute times.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import re
import resource
import shutil
import sysconfig
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "CpuUse",
    "ProfileSummary",
    "ThreadProfile",
    "measure_cpu",
    "process_cpu",
    "profile_call",
    "summarise",
    "unwatch_process",
    "unwatch_remote",
    "watch_loop",
    "watch_process",
    "watch_remote",
]

RemoteStart = Callable[[], None]
RemoteStop = Callable[[], Mapping[str, Path]]
"""Stops the remote profilers; returns their ``.prof`` files by process name."""

_loops: list[asyncio.AbstractEventLoop] = []
_processes: dict[str, int] = {}
_remotes: dict[str, tuple[RemoteStart, RemoteStop]] = {}
_REMOTE_IDLE = 0.02
"""A remote process busy less than this share of the profiled call did no work in it."""
_C_BUILTINS = "C builtins"
_Key = tuple[str, int, str]
_STDLIB = sysconfig.get_paths()["stdlib"].rstrip("/") + "/"


def watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Profile ``loop``'s thread too whenever :func:`profile_call` runs."""
    if loop not in _loops:
        _loops.append(loop)


def watch_remote(key: str, start: RemoteStart, stop: RemoteStop) -> None:
    """Profile other processes too whenever :func:`profile_call` runs: ``start()`` before
    the call, ``stop()`` after it (it returns their ``.prof`` files)."""
    _remotes[key] = (start, stop)


def unwatch_remote(key: str) -> None:
    _remotes.pop(key, None)


def watch_process(name: str, pid: int) -> None:
    """Count another process's CPU time (a nats-server) in :func:`measure_cpu`."""
    _processes[name] = pid


def unwatch_process(name: str) -> None:
    _processes.pop(name, None)


@dataclass(frozen=True)
class CpuUse:
    """CPU time used during one call, by this process and by the watched processes."""

    wall: float
    own: float
    others: dict[str, float]

    def describe(self) -> str:
        wall = self.wall or 1.0
        parts = [f"this process {self.own / wall:.2f} cores"]
        parts += [f"{name} {seconds / wall:.2f} cores" for name, seconds in self.others.items()]
        return ", ".join(parts) + f" (of {os.cpu_count()})"


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a process, from /proc (Linux only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_cpu(fn: Callable[[], float]) -> tuple[float, CpuUse]:
    """Call ``fn``; return its value and the CPU time used meanwhile."""
    before = {name: process_cpu(pid) for name, pid in _processes.items()}
    own = _own_cpu()
    started = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - started
    own = _own_cpu() - own
    others = {}
    for name, pid in _processes.items():
        start, end = before.get(name), process_cpu(pid)
        if start is not None and end is not None:
            others[name] = end - start
    return value, CpuUse(wall=wall, own=own, others=others)


@dataclass(frozen=True)
class ThreadProfile:
    """Where one thread's time went during a profiled call."""

    thread: str
    seconds: float
    """Sum of own time of every function (about the thread's wall time)."""
    categories: list[tuple[str, float]]
    """Own time by package or activity, largest first."""
    top: list[tuple[str, float, float, int]]
    """``(function, own seconds, cumulative seconds, calls)`` by own time, largest first."""

    @property
    def busy(self) -> float:
        """Own time not spent waiting for I/O or on a lock (seconds)."""
        return self.seconds - sum(t for name, t in self.categories if name.startswith("waiting"))

    def shares(self, limit: int = 7) -> str:
        total = self.seconds or 1.0
        parts = [f"{name} {100 * t / total:.0f}%" for name, t in self.categories[:limit]]
        return ", ".join(parts)


@dataclass(frozen=True)
class ProfileSummary:
    """One profiled call: its return value, wall time and per-thread profiles."""

    label: str
    value: float
    wall: float
    threads: list[ThreadProfile]
    files: list[Path]

    def print_top(self, console: Console | None = None, limit: int = 15) -> None:
        console = console or Console()
        console.print(f"[bold]profile of {self.label}[/] — {self.wall:.2f} s wall")
        for thread in self.threads:
            console.print(f"  thread [cyan]{thread.thread}[/]: {thread.shares(10)}")
            table = Table(show_edge=False, pad_edge=False)
            for header in ("function", "own s", "cum s", "calls"):
                table.add_column(header, justify="left" if header == "function" else "right")
            for name, own, cum, calls in thread.top[:limit]:
                table.add_row(name, f"{own:.4f}", f"{cum:.4f}", str(calls))
            console.print(table)
        for path in self.files:
            console.print(f"  wrote {path}")

    def markdown(self, subject: str, limit: int = 6) -> str:
        """The "where the time goes" note for BENCHMARKS.md."""
        lines = [
            f"cProfile of one extra round of {subject} ({self.wall:.2f} s wall; profiling "
            "inflates Python-level costs, so read the shares):",
            "",
        ]
        for thread in self.threads:
            lines.append(f"- thread `{thread.thread}`: {thread.shares()}")
            if _is_waiting_only(thread):
                continue
            total = thread.seconds or 1.0
            top = ", ".join(
                f"`{name}` {100 * own / total:.0f}%"
                for name, own, _, _ in thread.top
                if not _is_wait(name)
            )
            if top:
                lines.append(f"  - top own time: {_first(top, limit)}")
        return "\n".join(lines)


def _first(joined: str, limit: int) -> str:
    return ", ".join(joined.split(", ")[:limit])


def _is_wait(name: str) -> bool:
    return "epoll" in name or "acquire" in name


def _is_waiting_only(thread: ThreadProfile) -> bool:
    if not thread.categories:
        return True
    name, seconds = thread.categories[0]
    return name.startswith("waiting") and seconds > 0.8 * thread.seconds


def profile_call(
    fn: Callable[[], float], *, label: str, out_dir: Path | None = None
) -> ProfileSummary:
    """Call ``fn`` with this thread and every watched loop's thread profiled."""
    loops = [loop for loop in _loops if loop.is_running()]
    profiles = [(loop, cProfile.Profile()) for loop in loops]
    names = [_on_loop(loop, _enable(p)) for loop, p in profiles]
    remotes = list(_remotes.values())
    for start, _ in remotes:
        start()
    main = cProfile.Profile()
    started = time.perf_counter()
    main.enable()
    remote_files: dict[str, Path] = {}
    try:
        value = fn()
    finally:
        main.disable()
        wall = time.perf_counter() - started
        for loop, p in profiles:
            _on_loop(loop, _disable(p))
        for _, stop in remotes:
            remote_files.update(stop())
    threads = [summarise(threading.current_thread().name, main)]
    threads += [summarise(name, p) for name, (_, p) in zip(names, profiles, strict=True)]
    files = _dump(label, out_dir, [threads[0].thread, *names], [main, *(p for _, p in profiles)])
    for name, path in remote_files.items():
        thread = summarise(f"{name} process", path)
        if thread.busy < _REMOTE_IDLE * wall:
            continue  # an idle service (another benchmark's): nothing to say
        threads.append(thread)
        files += _keep(label, out_dir, name, path)
    return ProfileSummary(label=label, value=value, wall=wall, threads=threads, files=files)


def _keep(label: str, out_dir: Path | None, name: str, path: Path) -> list[Path]:
    """Copy a remote process's ``.prof`` file next to the others."""
    if out_dir is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()
    target = out_dir / f"{slug}.{re.sub(r'[^A-Za-z0-9]+', '-', name).lower()}-process.prof"
    shutil.copyfile(path, target)
    return [target]


def _enable(profile: cProfile.Profile) -> Callable[[], str]:
    def run() -> str:
        profile.enable()
        return threading.current_thread().name

    return run


def _disable(profile: cProfile.Profile) -> Callable[[], str]:
    def run() -> str:
        profile.disable()
        return threading.current_thread().name

    return run


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], str]) -> str:
    async def call() -> str:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(10)


def _dump(
    label: str, out_dir: Path | None, names: list[str], profiles: list[cProfile.Profile]
) -> list[Path]:
    if out_dir is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()
    files = []
    for name, profile in zip(names, profiles, strict=True):
        path = out_dir / f"{slug}.{re.sub(r'[^A-Za-z0-9]+', '-', name).lower()}.prof"
        profile.dump_stats(path)
        files.append(path)
    return files


def summarise(thread: str, profile: cProfile.Profile | Path) -> ThreadProfile:
    """Where one thread's time went (a live profile, or a ``.prof`` file of a process)."""
    stats = pstats.Stats(profile if isinstance(profile, cProfile.Profile) else str(profile))
    raw: dict[_Key, tuple[int, int, float, float, dict[_Key, tuple[Any, ...]]]]
    raw = stats.stats  # type: ignore[attr-defined]
    by_category: dict[str, float] = defaultdict(float)
    top: list[tuple[str, float, float, int]] = []
    total = 0.0
    for (filename, line, func), (_, calls, own, cum, callers) in raw.items():
        total += own
        category = _category(filename, func)
        if category == _C_BUILTINS and callers:
            # A builtin's time belongs to whoever called it (str.isspace in nats-py's
            # header parser is nats-py's cost), split by the time spent per caller.
            for (c_file, _, c_func), caller_stats in callers.items():
                caller = _category(c_file, c_func)
                by_category[caller if caller != _C_BUILTINS else category] += caller_stats[2]
        else:
            by_category[category] += own
        top.append((_function_name(filename, line, func), own, cum, calls))
    top.sort(key=lambda t: t[1], reverse=True)
    categories = sorted(by_category.items(), key=lambda kv: kv[1], reverse=True)
    return ThreadProfile(thread=thread, seconds=total, categories=categories, top=top[:40])


def _function_name(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func.strip("<>")
    parts = Path(filename).parts
    return f"{'/'.join(parts[-2:])}:{line}({func})"


def _category(filename: str, func: str) -> str:
    """A package or activity name for one profiled function."""
    if filename == "~":
        if "epoll" in func or "select" in func:
            return "waiting for I/O"
        if "acquire" in func:
            return "waiting on a lock"
        if "socket" in func:
            return "socket syscalls"
        if "sqlite3" in func:
            return "sqlite3 (C)"
        if "msgspec" in func:
            return "msgspec"
        return _C_BUILTINS
    if "/site-packages/" in filename:
        package = filename.split("/site-packages/", 1)[1].split("/", 1)[0]
        return package.removesuffix(".py")
    if "/platform/jetagent/" in filename:
        module = filename.split("/platform/jetagent/", 1)[1].split("/", 1)[0]
        return "jetagent." + module.removesuffix(".py")
    if "/bench/" in filename:
        return "bench code"
    if filename.startswith(_STDLIB):
        module = filename[len(_STDLIB) :].split("/", 1)[0].removesuffix(".py")
        return f"stdlib {module}"
    return "other"
