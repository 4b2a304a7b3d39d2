"""``jetagent projections run|rebuild``: the installed projection service (the
``jetagent.projections`` entry point, :mod:`jetagent.plugins`)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer

from jetagent.cli._base import configure_logging, connect, console, load_settings, run

__all__ = ["commands"]

commands = typer.Typer(help="The projection service: session views and metrics.")


@commands.command("run")
def projections_run(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Follow the streams: session views in JA_SESSIONS, Prometheus metrics on /metrics."""
    from jetagent.cli._services import projection_factory

    configure_logging(verbose)
    settings = load_settings()
    service_of = projection_factory()

    async def main(stop: asyncio.Event) -> None:
        nc = await connect(settings, "jetagent.projections")
        try:
            await service_of(nc, settings).run(stop)
        finally:
            await nc.close()

    run(main, service="projections")


@commands.command("rebuild")
def projections_rebuild() -> None:
    """Replay every stream from sequence 0 into fresh session views and metric totals.

    Stop the running projection service first; it resumes from the rebuilt checkpoint.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from jetagent.cli._services import projection_factory

    settings = load_settings()
    service_of = projection_factory()

    async def main(stop: asyncio.Event) -> None:
        nc = await connect(settings, "jetagent.projections")
        try:
            with Progress(
                TextColumn("[bold]rebuilding[/]"),
                BarColumn(),
                TextColumn("{task.completed:,} of {task.total:,.0f} events"),
                TimeRemainingColumn(),
                console=console,
            ) as bar:
                # The total is known once the streams are asked; 0 until then (a None
                # total cannot be formatted by the column above).
                task = bar.add_task("rebuild", total=0)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                started = time.monotonic()
                service = service_of(nc, settings)
                await service.rebuild(progress)
            elapsed = time.monotonic() - started
            console.print(
                f"rebuilt {len(service.views):,} session views from stream positions "
                f"{service.positions} in {elapsed:.1f} s"
            )
            poison = sum(service.metrics.poison.values())
            if poison:
                console.print(
                    f"skipped {poison:,} poison messages (not valid events); "
                    "`jetagent dlq` lists them"
                )
        finally:
            await nc.close()

    run(main)
