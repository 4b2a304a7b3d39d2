"""``python -m bench`` (``make bench``): run the benchmark suites, write BENCHMARKS.md.

Suites register here, in :data:`SUITE_MODULES`: each module exposes ``SUITE``.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ._harness import RunConfig, Suite, SuiteResult, rich_table, run_suite
from ._report import command_line, refresh_notes, write_report

SUITE_MODULES = [
    "bench.store",
    "bench.transcoder",
    "bench.engine",
    "bench.projections",
    "bench.capabilities",
    "bench.gateway",
    "bench.delivery",
    "bench.listing",
    "bench.quotas",
    "bench.cluster",
    "bench.scaling",
    "bench.comparison",
]
"""Every suite, in report order. Add a module exposing ``SUITE: Suite`` to add one."""

ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def registered_suites() -> list[Suite]:
    suites = []
    for name in SUITE_MODULES:
        suite = importlib.import_module(name).SUITE
        assert isinstance(suite, Suite), f"{name}.SUITE is not a bench Suite"
        suites.append(suite)
    return suites


def _select(suites: list[Suite], only: list[str]) -> list[Suite]:
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    known = {s.name for s in suites}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise typer.BadParameter(
            f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            param_hint="--only",
        )
    return [s for s in suites if not wanted or s.name in wanted]


def _timing_line(result: SuiteResult) -> str:
    line = f"{result.suite.name}: {result.seconds:.0f} s"
    if result.load_during is not None:
        low, mean, high = result.load_during
        line += f"; 1-minute load average {low:.2f} to {high:.2f} (mean {mean:.2f})"
    return line


@app.command()
def main(
    suites_named: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[SUITE]...", help="Suites to run (same as --only): `python -m bench delivery`."
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Run only these suites (repeat, or comma-separated)."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="Fewer rounds and smaller data, for smoke testing. Does not write "
            "BENCHMARKS.md unless --output is given."
        ),
    ] = False,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Profile one round of each of this suite's subjects with cProfile (their "
            "event-loop threads too): prints the top functions and writes .prof files to "
            "bench/profiles/. Timings are skewed, so BENCHMARKS.md is not written."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write the report (default: BENCHMARKS.md at the root)."),
    ] = None,
    write: Annotated[
        bool, typer.Option(help="Write the report (--no-write: print the tables only).")
    ] = True,
    profile_misses: Annotated[
        bool, typer.Option(help="Profile one extra round of each subject that misses its target.")
    ] = True,
    against: Annotated[
        list[str] | None,
        typer.Option(
            metavar="COMMIT",
            help="Also measure this commit's code (repeat for more): built once into "
            ".bench-cache/<sha>/ (its tree and a virtualenv with it installed), its services "
            "run as a baseline of this tree's, on the same server with the same client, "
            "rounds interleaved. Suites that can: engine.",
        ),
    ] = None,
    refresh_notes_only: Annotated[
        bool,
        typer.Option(
            "--refresh-notes",
            help="Run nothing: put the current bench/notes/ under the selected suites' "
            "sections of the report (every measured number stays as it is).",
        ),
    ] = False,
) -> None:
    """Run the benchmark suites and record the results in BENCHMARKS.md."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file gets the whole table
    suites = registered_suites()
    selected = _select(suites, [profile] if profile else [*(suites_named or []), *(only or [])])
    if refresh_notes_only:
        path = output or ROOT / "BENCHMARKS.md"
        if not path.exists():
            raise typer.BadParameter(f"{path} does not exist", param_hint="--output")
        names = refresh_notes(path, [s.name for s in selected])
        console.print(f"refreshed the notes of {', '.join(names) or 'no suite'} in {path}")
        return
    if against and not any(s.compares_commits for s in selected):
        able = ", ".join(s.name for s in suites if s.compares_commits)
        raise typer.BadParameter(f"only these suites measure other commits: {able}")
    config = RunConfig(
        against=tuple(against or ()),
        quick=quick,
        profile=profile is not None,
        profile_misses=profile_misses,
        profile_dir=PROFILE_DIR,
    )
    results: list[SuiteResult] = []
    started = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    ) as progress:
        for suite in selected:
            result = run_suite(suite, config, progress)
            results.append(result)
            progress.console.print(rich_table(result))
            progress.console.print(_timing_line(result))
            if result.appendix:
                progress.console.print(Markdown(result.appendix))
    console.print(f"ran {len(results)} suite(s) in {time.monotonic() - started:.0f} s")
    to_write = write and not config.profile and (not quick or output is not None)
    if to_write:
        path = output or ROOT / "BENCHMARKS.md"
        write_report(path, results, suites, command=command_line(sys.argv[1:]), quick=quick)
        console.print(f"wrote {path}")
    else:
        console.print("BENCHMARKS.md not written (quick, profile or --no-write run)")


if __name__ == "__main__":
    app()
