"""The ``jetagent`` commands that run the platform: ``up`` runs all of it locally;
``orchestrator``, ``worker`` and ``gateway`` run one service (as deployments do);
``provision`` prepares its streams. Each stops cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from jetagent.cli._base import (
    configure_logging,
    connect,
    console,
    load_settings,
    need_url,
    run,
)
from jetagent.errors import ConfigError

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
def up(
    replicas: Annotated[int, typer.Option(help="Replicas of each capability worker.")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder of the embedded server.")
    ] = None,
) -> None:
    """Start the platform: embedded NATS (unless NATS_URL is set) and every service."""
    from jetagent.cli._services import has_projections
    from jetagent.cli._up import Platform, default_services

    settings = load_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})

    if settings.nats_url:
        need_url(settings)  # a bad NATS_URL is said before anything starts

    async def main(stop: asyncio.Event) -> int:
        platform = Platform(
            settings, default_services(replicas=replicas, projections=has_projections())
        )
        await platform.start()
        console.print("[bold green]jetagent is up[/] — Ctrl-C stops everything")
        return await platform.run(stop)

    run(main, service="up")


@commands.command()
def orchestrator(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run one orchestrator replica (any number may run)."""
    from jetagent.metrics import serve_metrics
    from jetagent.orchestrator import Orchestrator

    configure_logging(verbose)
    settings = load_settings()

    async def main(stop: asyncio.Event) -> None:
        nc = await connect(settings, "jetagent.orchestrator")
        try:
            service = Orchestrator(nc, settings)
            with serve_metrics(service.metrics.registry, settings, service="orchestrator"):
                await service.run(stop)
        finally:
            await nc.close()

    run(main, service="orchestrator")


@commands.command()
def worker(
    capabilities: Annotated[list[str], typer.Argument(help="reasoning, tools, summarize, …")],
    only: Annotated[
        list[str] | None, typer.Option(help="Serve only these tools (a pool of their own).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Steps at once per capability.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a capability worker (scale by running more)."""
    from jetagent.cli._services import capability_specs, mcp_client
    from jetagent.metrics import serve_metrics
    from jetagent.models import ModelCatalog
    from jetagent.worker import Worker, WorkerMetrics

    configure_logging(verbose)
    settings = load_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})

    async def main(stop: asyncio.Event) -> None:
        served: list[Any] = []
        mcp = None
        if settings.mcp and "tools" in capabilities:
            # The MCP SDK is imported only when servers are configured.
            served, mcp = await mcp_client()(settings.mcp)
        try:
            catalog = ModelCatalog.load(settings.models)
            specs = capability_specs(
                capabilities,
                catalog,
                only_tools=only,
                extra_tools=served,
                tool_processes=settings.tool_processes,
            )
            nc = await connect(settings, "jetagent.worker:" + ",".join(capabilities))
            try:
                # Calls of every catalog model start at 0 (the models the capabilities call).
                routes = [(m.name, m.provider) for m in catalog.models.values()]
                metrics = WorkerMetrics((spec.name for spec in specs), routes=routes)
                service = Worker(nc, settings, specs, metrics=metrics)
                with serve_metrics(service.metrics.registry, settings, service="worker"):
                    await service.run(stop)
            finally:
                await nc.drain()
        finally:
            if mcp is not None:
                await mcp.aclose()

    run(main, service="worker")


@commands.command()
def gateway(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """The HTTP gateway: the request contract, session views and live events over HTTP."""
    from jetagent.gateway import GatewayMetrics, GatewaySettings, serve
    from jetagent.metrics import serve_metrics

    configure_logging(verbose)
    settings = load_settings()
    try:
        http = GatewaySettings()
    except Exception as exc:
        raise ConfigError(f"invalid gateway configuration: {exc}") from exc

    async def main(stop: asyncio.Event) -> None:
        from jetagent.client import Client

        client = Client(await connect(settings, "jetagent.gateway"), settings)
        metrics = GatewayMetrics()
        try:
            with serve_metrics(metrics.registry, settings, service="gateway"):
                await serve(client, http, stop, metrics=metrics)
        finally:
            await client.close()

    run(main, service="gateway")


@commands.command()
def provision() -> None:
    """Create (or check) every stream, consumer and bucket the platform needs."""
    from jetagent.jetstream.provision import provision as apply
    from jetagent.jetstream.provision import repair_capability_consumers

    settings = load_settings()

    async def main(stop: asyncio.Event) -> None:
        nc = await connect(settings, "jetagent.provision")
        try:
            for line in await apply(nc, settings):
                console.print(f"[green]✓[/] {line}")
            for line in await repair_capability_consumers(nc, settings):
                console.print(f"[green]✓[/] updated {line}")
        finally:
            await nc.close()

    run(main)
