"""The ``jetagent`` command line.

``up`` runs the whole platform locally; ``orchestrator`` and ``worker`` run one service
(as deployments do); ``submit`` and ``watch`` talk to it; ``provision`` and ``schemas``
prepare it. Each command owns one event loop (``asyncio.run``) and stops cleanly on
Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from jetagent.config import Settings
from jetagent.errors import ConfigError, JetagentError

__all__ = ["app", "main"]

app = typer.Typer(
    name="jetagent",
    help="AI agents as event-sourced microservices on NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _need_url(settings: Settings) -> str:
    if not settings.nats_url:
        raise ConfigError(
            "NATS_URL is not set: start the platform with `jetagent up` (it prints the URL) "
            "or point NATS_URL at your NATS server"
        )
    return settings.nats_url


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    # One INFO line per provider call and per NATS reconnect attempt would bury the
    # services' own log; their warnings still show (and everything with --verbose).
    for noisy in ("nats", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _run(main: Callable[[asyncio.Event], Awaitable[int | None]], *, service: str = "cli") -> None:
    """Run ``main(stop)`` on a fresh loop; SIGINT/SIGTERM set ``stop``."""
    from jetagent.telemetry import setup_from_environment

    provider = setup_from_environment(service)

    async def runner() -> int | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    _fast_event_loop()
    try:
        code = asyncio.run(runner())
    except JetagentError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    finally:
        if provider is not None:
            provider.shutdown()  # flush spans still batched
    raise typer.Exit(code or 0)


def _fast_event_loop() -> None:
    """Services run on uvloop (libuv): asyncio's own loop is a quarter of a step's CPU.
    ``JETAGENT_UVLOOP=0`` keeps the standard loop."""
    import os

    if os.environ.get("JETAGENT_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _connect(settings: Settings, name: str) -> Any:
    from jetagent.store import connect

    return await connect(
        _need_url(settings),
        name=name,
        creds=settings.nats_creds,
        user=settings.nats_user,
        password=settings.nats_password(),
    )


@app.command()
def up(
    replicas: Annotated[int, typer.Option(help="Replicas of each capability worker.")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder of the embedded server.")
    ] = None,
) -> None:
    """Start the platform: embedded NATS (unless NATS_URL is set) and every service."""
    from jetagent._up import Platform, default_services

    settings = _settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})

    async def main(stop: asyncio.Event) -> int:
        platform = Platform(
            settings, default_services(replicas=replicas, projections=_has_projections())
        )
        await platform.start()
        console.print("[bold green]jetagent is up[/] — Ctrl-C stops everything")
        return await platform.run(stop)

    _run(main, service="up")


def _has_projections() -> bool:
    import importlib.util

    return importlib.util.find_spec("projections.service") is not None


@app.command()
def orchestrator(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run one orchestrator replica (any number may run)."""
    from jetagent.orchestrator import Orchestrator

    _logging(verbose)
    settings = _settings()

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(settings, "jetagent.orchestrator")
        try:
            await Orchestrator(nc, settings).run(stop)
        finally:
            await nc.close()

    _run(main, service="orchestrator")


@app.command()
def worker(
    capabilities: Annotated[list[str], typer.Argument(help="reasoning, tools, summarize, …")],
    only: Annotated[
        list[str] | None, typer.Option(help="Serve only these tools (a pool of their own).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Steps at once per capability.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a capability worker (scale by running more)."""
    from jetagent.models import ModelCatalog
    from jetagent.services import capability_specs
    from jetagent.worker import Worker

    _logging(verbose)
    settings = _settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})

    async def main(stop: asyncio.Event) -> None:
        served: list[Any] = []
        mcp = None
        if settings.mcp and "tools" in capabilities:
            from capabilities.tools.mcp import mcp_tools  # the MCP SDK only when configured

            served, mcp = await mcp_tools(settings.mcp)
        try:
            catalog = ModelCatalog.load(settings.models)
            specs = capability_specs(
                capabilities,
                catalog,
                only_tools=only,
                extra_tools=served,
                tool_processes=settings.tool_processes,
            )
            nc = await _connect(settings, "jetagent.worker:" + ",".join(capabilities))
            try:
                await Worker(nc, settings, specs).run(stop)
            finally:
                await nc.drain()
        finally:
            if mcp is not None:
                await mcp.aclose()

    _run(main, service="worker")


@app.command()
def gateway(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """The HTTP gateway: the request contract, session views and live events over HTTP."""
    from jetagent.gateway import GatewaySettings, serve

    _logging(verbose)
    settings = _settings()
    try:
        http = GatewaySettings()
    except Exception as exc:
        raise ConfigError(f"invalid gateway configuration: {exc}") from exc

    async def main(stop: asyncio.Event) -> None:
        from jetagent.client import Client

        client = Client(await _connect(settings, "jetagent.gateway"), settings)
        try:
            await serve(client, http, stop)
        finally:
            await client.close()

    _run(main, service="gateway")


@app.command()
def provision() -> None:
    """Create (or check) every stream, consumer and bucket the platform needs."""
    from jetagent.provision import provision as apply
    from jetagent.provision import repair_capability_consumers

    settings = _settings()

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(settings, "jetagent.provision")
        try:
            for line in await apply(nc, settings):
                console.print(f"[green]✓[/] {line}")
            for line in await repair_capability_consumers(nc, settings):
                console.print(f"[green]✓[/] updated {line}")
        finally:
            await nc.close()

    _run(main)


@app.command()
def submit(
    instruction: Annotated[str, typer.Argument(help="What the agent should do.")],
    tenant: Annotated[str, typer.Option(help="Tenant the request belongs to.")] = "default",
    model: Annotated[list[str] | None, typer.Option(help="Model preference (repeatable).")] = None,
    token_cap: Annotated[int | None, typer.Option(help="Token budget.")] = None,
    cost_cap: Annotated[float | None, typer.Option(help="Cost budget in USD.")] = None,
    deadline: Annotated[float | None, typer.Option(help="Deadline in seconds.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to the end.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 120.0,
) -> None:
    """Submit a request; print its workflow id (and with --wait, its progress and result)."""
    from jetagent.client import Client
    from jetagent.contract import WorkflowRequest

    settings = _settings()
    limits: dict[str, Any] = {}
    if token_cap is not None:
        limits["token_cap"] = token_cap
    if cost_cap is not None:
        limits["cost_cap_usd"] = cost_cap
    if deadline is not None:
        limits["deadline_s"] = deadline

    async def main(stop: asyncio.Event) -> int:
        request = WorkflowRequest.model_validate(
            {
                "instruction": instruction,
                "tenant": tenant,
                "capability_limits": limits,
                **({"model_preferences": {"models": model}} if model else {}),
            }
        )
        client = Client(await _connect(settings, "jetagent.cli"), settings)
        try:
            workflow_id = await client.submit(request)
            console.print(workflow_id)
            if not wait:
                return 0
            from jetagent._render import follow

            ok = await asyncio.wait_for(follow(client, workflow_id, console), timeout)
            return 0 if ok else 1
        finally:
            await client.close()

    _run(main, service="submit")


@app.command()
def watch(
    workflow_id: str,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Print the model's text as it is produced.")
    ] = False,
) -> None:
    """Print a workflow's events as they happen, until it ends."""
    from jetagent._render import follow
    from jetagent._render_tokens import follow_with_tokens
    from jetagent.client import Client

    settings = _settings()

    async def main(stop: asyncio.Event) -> int:
        client = Client(await _connect(settings, "jetagent.cli"), settings)
        try:
            if tokens:
                return 0 if await follow_with_tokens(client, workflow_id, console) else 1
            return 0 if await follow(client, workflow_id, console) else 1
        finally:
            await client.close()

    _run(main, service="watch")


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Folder to write to.")] = Path("schemas"),
    check: Annotated[bool, typer.Option("--check", help="Fail if the folder is stale.")] = False,
) -> None:
    """Write the JSON Schemas of the request contract and of every event."""
    from jetagent.schemas import stale_files, write_schemas

    if check:
        stale = stale_files(out)
        if stale:
            err.print("[red]stale schemas:[/] " + ", ".join(stale) + " (run `jetagent schemas`)")
            raise typer.Exit(1)
        console.print("schemas are up to date")
        return
    for path in write_schemas(out):
        console.print(f"wrote {path}")


projections_app = typer.Typer(help="The projection service: session views and metrics.")
app.add_typer(projections_app, name="projections")


@projections_app.command("run")
def projections_run(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Follow the streams: session views in JA_SESSIONS, Prometheus metrics on /metrics."""
    from projections.service import ProjectionService

    _logging(verbose)
    settings = _settings()

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(settings, "jetagent.projections")
        try:
            await ProjectionService(nc, settings).run(stop)
        finally:
            await nc.close()

    _run(main, service="projections")


@projections_app.command("rebuild")
def projections_rebuild() -> None:
    """Replay every stream from sequence 0 into fresh session views and metric totals.

    Stop the running projection service first; it resumes from the rebuilt checkpoint.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from projections.service import ProjectionService

    settings = _settings()

    async def main(stop: asyncio.Event) -> None:
        nc = await _connect(settings, "jetagent.projections")
        try:
            with Progress(
                TextColumn("[bold]rebuilding[/]"),
                BarColumn(),
                TextColumn("{task.completed:,} of {task.total:,} events"),
                TimeRemainingColumn(),
                console=console,
            ) as bar:
                task = bar.add_task("rebuild", total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                started = time.monotonic()
                service = ProjectionService(nc, settings)
                await service.rebuild(progress)
            elapsed = time.monotonic() - started
            console.print(
                f"rebuilt {len(service.views):,} session views from stream positions "
                f"{service.positions} in {elapsed:.1f} s"
            )
        finally:
            await nc.close()

    _run(main)


@app.command()
def demo() -> None:
    """Run the demo (what `make demo` runs)."""
    from jetagent.demo import main as demo_main

    raise typer.Exit(demo_main())


# The SRE commands (inspect, replay, tail, dlq) live in their own module; importing it
# registers them on ``app``.
import jetagent._cli_ops  # noqa: E402, F401


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    # Run through the imported module: the commands of jetagent._cli_ops are registered
    # on its ``app``, not on this ``__main__`` copy's.
    from jetagent.cli import main as _main

    _main()

_ = json
