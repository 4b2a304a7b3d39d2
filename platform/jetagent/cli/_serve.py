"""The ``jetagent`` commands that run the platform: ``up`` runs all of it locally;
``orchestrator``, ``worker`` and ``gateway`` run one service (as deployments do);
``provision`` prepares its streams. Each stops cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from jetagent.cli._base import (
    configure_logging,
    connect,
    console,
    err,
    fail,
    load_settings,
    need_url,
    run,
)
from jetagent.errors import ConfigError

if TYPE_CHECKING:
    from jetagent.jetstream import Applied

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
def up(
    replicas: Annotated[int, typer.Option(help="Replicas of each capability worker.")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder of the embedded server.")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Client port of the embedded nats-server (default 4222, or "
            "JETAGENT_NATS_PORT); 0 picks any free port.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the platform: embedded NATS (unless NATS_URL is set) and every service.

    The embedded server listens on 127.0.0.1:4222 (--port); its URL is printed, and
    written to <data folder>/nats.url while it runs: the other commands (and
    Client.connect()) use it when NATS_URL is not set. A port already taken is explained
    (another `jetagent up`, your own nats-server, another program), never shared.
    """
    from jetagent.cli._services import has_projections
    from jetagent.cli._up import Platform, default_services

    settings = load_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    if port is not None and not 0 <= port <= 65535:
        raise fail(f"--port {port} is not a port: use 0 to 65535 (0: any free port)")
    if settings.nats_url:
        need_url(settings)  # a bad NATS_URL is said before anything starts
        if port is not None:
            raise fail(
                f"--port is the embedded server's, and with NATS_URL set ({settings.nats_url}) "
                "`jetagent up` starts none: unset NATS_URL, or leave out --port"
            )
    chosen = settings.nats_port if port is None else port

    async def main(stop: asyncio.Event) -> int:
        platform = Platform(
            settings,
            default_services(replicas=replicas, projections=has_projections()),
            port=chosen or None,  # 0: a free port
            announce=True,
        )
        await platform.start()
        console.print(
            f"[bold green]jetagent is up[/] at [bold]{platform.url}[/] — Ctrl-C stops everything"
        )
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

    # A name per capability (and dedicated tool pool) in traces and logs.
    run(main, service="worker", name="-".join(["jetagent-worker", *capabilities, *(only or [])]))


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
def provision(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was done as JSON (on stdout).")
    ] = False,
) -> None:
    """Create every stream, bucket and consumer the platform needs, or bring the existing
    ones to JETAGENT_REPLICAS (R1 to R3 as a deployment grows); print what was done."""
    from jetagent.jetstream.provision import provision as apply
    from jetagent.jetstream.provision import repair_capability_consumers, replica_plan

    settings = load_settings()
    done: list[Applied] = []

    def waiting(line: str) -> None:
        err.print(f"[yellow]…[/] {escape(line)}", highlight=False)

    async def main(stop: asyncio.Event) -> None:
        nc = await connect(settings, "jetagent.provision")
        try:
            plan = replica_plan(nc, settings)
            try:
                await apply(
                    nc, settings, change_existing=True, progress=waiting, on_applied=done.append
                )
                await repair_capability_consumers(
                    nc, settings, progress=waiting, on_applied=done.append
                )
            finally:
                # What was done before a refusal is said too; the refusal follows.
                _print_provisioned(done, plan.replicas, plan.reason, as_json=as_json)
        finally:
            await nc.close()

    run(main)


def _print_provisioned(done: list[Applied], replicas: int, reason: str, *, as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "name": a.name,
                "kind": a.kind,
                "replicas": a.replicas,
                "action": a.action,
                "detail": a.detail,
            }
            for a in done
        ]
        print(json.dumps({"replicas": replicas, "reason": reason, "applied": rows}, indent=2))
        return
    if not done:
        return  # refused before anything was done: the error says it all
    table = Table(title=f"R{replicas} ({escape(reason)})", title_justify="left", box=None)
    for column in ("name", "kind", "replicas", "action", ""):
        table.add_column(column)
    colors = {"created": "green", "updated": "cyan", "in place": "dim"}
    for a in done:
        color = "yellow" if a.attention else colors[a.action]
        table.add_row(a.name, a.kind, f"R{a.replicas}", f"[{color}]{a.action}[/]", escape(a.detail))
    console.print(table)
