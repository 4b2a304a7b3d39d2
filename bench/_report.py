"""BENCHMARKS.md: the machine, the command, and one section per suite.

Each suite's section sits between ``<!-- bench:suite:NAME:start -->`` and
``<!-- bench:suite:NAME:end -->`` markers, so a run of some suites (``--only``) rewrites
their sections and keeps the others as they were. Each section says when and with which
command it was measured; the machine block at the top describes the latest run.
A hand-written ``bench/notes/<suite>.md``, when present, is included under its section.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from jetagent.embedded import find_server_binary

from ._harness import EN_DASH, Row, Suite, SuiteResult, fmt, met_mark

__all__ = ["Machine", "code_state", "command_line", "machine", "refresh_notes", "write_report"]

_HEADER = """\
# Benchmarks

Measured by `make bench` (`python -m bench`; `python -m bench --help` for options). Every
number is the median of several rounds; each baseline is measured in the same run,
interleaved with the subject, on the same nats-server. Sections between `bench:` markers
are rewritten by the harness; a run of some suites (`--only`) keeps the others. When a
subject misses its target, one more round of it is profiled: a summary follows its suite,
the `.prof` files are in `bench/profiles/` (not committed).
"""
NOTES_DIR = Path(__file__).resolve().parent / "notes"
"""Hand-written analysis per suite (``notes/<suite>.md``), kept under its section."""
_MACHINE = re.compile(r"<!-- bench:machine:start -->.*?<!-- bench:machine:end -->\n?", re.S)
_SECTION = re.compile(
    r"<!-- bench:suite:(?P<name>[\w-]+):start -->.*?<!-- bench:suite:(?P=name):end -->\n?", re.S
)


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    os: str
    python: str
    nats_server: str
    nats_py: str

    @property
    def short(self) -> str:
        return f"{self.cpu}, {self.cores} cores"


def machine() -> Machine:
    """What this run ran on."""
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        os=platform.platform(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        nats_server=_nats_server_version(),
        nats_py=metadata.version("nats-py"),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _nats_server_version() -> str:
    try:
        out = subprocess.run(
            [str(find_server_binary()), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    return out.stdout.strip() or out.stderr.strip() or "unknown"


def code_state(*paths: str) -> str:
    """Which code a suite measured: the commit, and whether ``paths`` had local changes
    (others may be editing the tree while benchmarks run)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            return ""
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *paths)
    changed = len(dirty.splitlines()) if dirty else 0
    where = ", ".join(f"`{p}/`" for p in paths)
    state = (
        f"with uncommitted changes in {changed} file(s) of {where}"
        if changed
        else f"with no uncommitted changes in {where}"
    )
    return f"Code measured: commit `{commit}`, {state}."


def command_line(argv: Sequence[str]) -> str:
    """The command that ran this benchmark, as a person would type it at the repo root."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, "-m", "bench", *argv])


def _machine_block(m: Machine, command: str, when: str) -> str:
    return "\n".join(
        [
            "<!-- bench:machine:start -->",
            "## Machine (latest run)",
            "",
            "| | |",
            "|---|---|",
            f"| CPU | {m.cpu} |",
            f"| cores | {m.cores} |",
            f"| memory | {m.memory_gib:.1f} GiB |",
            f"| OS | {m.os} |",
            f"| Python | {m.python} |",
            f"| nats-server | {m.nats_server} |",
            f"| nats-py | {m.nats_py} |",
            f"| command | `{command}` |",
            f"| date | {when} |",
            "",
            "Client and server share the machine's cores.",
            "<!-- bench:machine:end -->",
            "",
        ]
    )


def _row_lines(row: Row) -> list[str]:
    b = row.benchmark
    baselines = list(b.baselines) or [""]
    lines = []
    for j, base in enumerate(baselines):
        first = j == 0
        base_value = row.baselines.get(base)
        cells = [
            f"{b.name} ({b.unit})" if first else "",
            b.subject if first else "",
            f"**{fmt(row.value)}**" if first else "",
            row.spread(b.subject) if first else "",
            base or "—",
            fmt(base_value) if base_value is not None else "—",
            row.versus(base) if base else "—",
            b.target.describe(b.unit) if first and b.target else ("—" if first else ""),
            met_mark(row.met) if first else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _load_during(result: SuiteResult) -> str:
    if result.load_during is None:
        return ""
    low, mean, high = result.load_during
    return f", during the suite {low:.2f}{EN_DASH}{high:.2f} (mean {mean:.2f})"


def _section(result: SuiteResult, m: Machine, command: str, when: str, quick: bool) -> str:
    suite = result.suite
    rounds = sorted({len(v) for r in result.rows for v in r.rounds.values()})
    lines = [
        f"<!-- bench:suite:{suite.name}:start -->",
        f"## `{suite.name}` — {suite.title}",
        "",
        suite.description,
        "",
        f"Measured {when} with `{command}` on {m.short}"
        + (" — **quick run: smoke test, not representative**" if quick else "")
        + f"; {'/'.join(map(str, rounds))} rounds per contender"
        + (
            f"; 1-minute load average at the start {result.load:.2f}"
            if result.load is not None
            else ""
        )
        + _load_during(result)
        + (f"; the suite took {result.seconds:.0f} s." if result.seconds else "."),
        "",
        f"| benchmark | subject | median | subject's rounds (min{EN_DASH}max) | baseline "
        "| baseline median | subject vs baseline | target | met |",
        "|---|---|--:|--:|---|--:|---|---|---|",
    ]
    for row in result.rows:
        lines += _row_lines(row)
    notes = [
        f"- **{r.benchmark.name}**: {r.benchmark.note}" for r in result.rows if r.benchmark.note
    ]
    if notes:
        lines += ["", *notes]
    if result.appendix:
        lines += ["", result.appendix.strip()]
    missed = [r for r in result.rows if r.profile is not None]
    if missed:
        lines += ["", "### Where the time goes (targets missed)"]
        for row in missed:
            assert row.profile is not None
            lines += [
                "",
                f"**{row.benchmark.name}** — " + row.profile.markdown(row.benchmark.subject),
            ]
            if row.cpu is not None:
                lines.append(f"- CPU during an unprofiled round: {row.cpu.describe()}")
    lines += _analysis(suite.name)
    lines += [f"<!-- bench:suite:{suite.name}:end -->", ""]
    return "\n".join(lines)


def _analysis_heading(name: str) -> str:
    return f"### Analysis (hand-written: `bench/notes/{name}.md`)"


def _analysis(name: str) -> list[str]:
    """The hand-written ``bench/notes/<name>.md`` as the lines closing a section."""
    notes_file = NOTES_DIR / f"{name}.md"
    if not notes_file.exists():
        return []
    return ["", _analysis_heading(name), "", notes_file.read_text().strip()]


def refresh_notes(path: Path, names: Sequence[str]) -> list[str]:
    """Put the current ``bench/notes/`` under the sections of the suites ``names`` in
    ``path``, leaving every measured number as it is; returns the suites refreshed."""
    text = path.read_text()
    refreshed = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        section = match[0]
        if name not in names:
            return section
        end = f"<!-- bench:suite:{name}:end -->"
        head = section.split("\n" + _analysis_heading(name), 1)[0]
        head = head.split(end, 1)[0].rstrip("\n")
        refreshed.append(name)
        return "\n".join([head, *_analysis(name), end, ""])

    path.write_text(_SECTION.sub(replace, text))
    return refreshed


def write_report(
    path: Path,
    results: Sequence[SuiteResult],
    registered: Sequence[Suite],
    *,
    command: str,
    quick: bool,
) -> None:
    """Rewrite the sections of ``results`` in ``path``; keep every other section."""
    m = machine()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    old = path.read_text() if path.exists() else ""
    kept = {match["name"]: match[0].rstrip("\n") + "\n" for match in _SECTION.finditer(old)}
    fresh = {r.suite.name: _section(r, m, command, when, quick) for r in results}
    sections = []
    for suite in registered:
        if suite.name in fresh:
            sections.append(fresh[suite.name])
        elif suite.name in kept:
            sections.append(kept[suite.name])
    # Sections of suites no longer registered are kept, at the end, rather than lost.
    names = {s.name for s in registered}
    sections += [text for name, text in kept.items() if name not in names]
    machine_block = _machine_block(m, command, when)
    if not fresh and _MACHINE.search(old):
        machine_block = _MACHINE.search(old)[0]  # type: ignore[index]
    text = _HEADER + "\n" + machine_block + "\n" + "\n".join(sections)
    path.write_text(text.rstrip("\n") + "\n")
