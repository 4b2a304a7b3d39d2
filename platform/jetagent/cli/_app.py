"""The ``jetagent`` command line.

``up`` runs the whole platform locally; ``orchestrator`` and ``worker`` run one service
(as deployments do); ``submit`` and ``watch`` talk to it; ``provision`` and ``schemas``
prepare it. Each command owns one event loop (``asyncio.run``) and stops cleanly on
Ctrl-C / SIGTERM.

An expected failure (no server, a bad URL, an unknown id, a platform not provisioned,
bad arguments) ends a command with one line on stderr and a non-zero status (README,
"Command line"): every ``JetagentError``, and nats-py / pydantic errors translated by
``jetagent._translate``. A traceback means a bug.
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
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from jetagent.config import Settings
from jetagent.errors import ConfigError, JetagentError

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="jetagent",
    help="AI agents as event-sourced microservices on NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
# soft_wrap: an error is one line however narrow the terminal (a wrapped line reads as two).
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line; return the ``typer.Exit`` to raise."""
    from rich.markup import escape

    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


class Stopped(JetagentError):
    """Ctrl-C or SIGTERM ended a wait."""


class GaveUp(JetagentError):
    """A wait ran out of time."""


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def until_stopped(work: Awaitable[T], stop: asyncio.Event, timeout: float | None) -> T:
    """``work``'s result; ``Stopped`` on Ctrl-C/SIGTERM, ``GaveUp`` after ``timeout`` s."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for pending in (task, stopper):
            if not pending.done():
                pending.cancel()
                # Bounded: nats-py can swallow a cancel that lands inside its subscribe
                # (a watch stopped at once then waited forever); what is left is
                # cancelled again when the loop closes.
                await asyncio.wait({pending}, timeout=5)
                # Such a task ends when the connection closes; its error is expected.
                pending.add_done_callback(_retrieve)
    if task in done:
        return task.result()
    if stopper in done:
        raise Stopped("stopped")
    raise GaveUp(f"gave up after {timeout} s")


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _need_url(settings: Settings) -> str:
    from jetagent._translate import check_nats_url

    if not settings.nats_url:
        raise ConfigError(
            "NATS_URL is not set: start the platform with `jetagent up` (it prints the URL) "
            "or point NATS_URL at your NATS server"
        )
    return check_nats_url(settings.nats_url)


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

    from jetagent._translate import translate

    if service in _SERVICES:
        _fast_event_loop()
    try:
        code = asyncio.run(runner())
    except typer.Exit:
        raise
    except JetagentError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        # The last edge: a dependency's error no inner edge translated.
        translated = translate(exc, prefix=_prefix())
        if translated is None:
            raise  # a bug: the traceback is the useful output
        raise fail(str(translated)) from None
    finally:
        if provider is not None:
            provider.shutdown()  # flush spans still batched
    raise typer.Exit(code or 0)


_SERVICES = frozenset({"up", "orchestrator", "worker", "projections"})
"""Commands that serve, and run on uvloop for throughput; the others are short-lived or
wait for a person, gain nothing from it, and keep asyncio's own loop."""


def _prefix() -> str:
    import os

    return os.environ.get("JETAGENT_PREFIX", "ja")


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
    from jetagent.jetstream import connect

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
    from jetagent.cli._up import Platform, default_services

    settings = _settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})

    if settings.nats_url:
        _need_url(settings)  # a bad NATS_URL is said before anything starts

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
    from jetagent.cli._services import capability_specs
    from jetagent.models import ModelCatalog
    from jetagent.worker._runtime import Worker

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
    from jetagent.jetstream.provision import provision as apply
    from jetagent.jetstream.provision import repair_capability_consumers

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

    import pydantic

    from jetagent._translate import invalid_request

    try:
        request = WorkflowRequest.model_validate(
            {
                "instruction": instruction,
                "tenant": tenant,
                "capability_limits": limits,
                **({"model_preferences": {"models": model}} if model else {}),
            }
        )
    except pydantic.ValidationError as exc:
        raise fail(str(invalid_request(exc))) from None

    async def main(stop: asyncio.Event) -> int:
        client = Client(await _connect(settings, "jetagent.cli"), settings)
        try:
            workflow_id = await client.submit(request)
            console.print(workflow_id)
            if not wait:
                return 0
            return await _follow(client, workflow_id, stop, timeout)
        finally:
            await client.close()

    _run(main, service="submit")


async def _follow(
    client: Any,
    workflow_id: str,
    stop: asyncio.Event,
    timeout: float | None,
    *,
    tokens: bool = False,
) -> int:
    """Follow a workflow to its end: 0 if it finalized; one line and 1 if it did not end
    within ``timeout``, 130 on Ctrl-C/SIGTERM. ``tokens``: the model's text too."""
    from jetagent.cli._render import follow
    from jetagent.cli._render_tokens import follow_with_tokens

    following = (follow_with_tokens if tokens else follow)(client, workflow_id, console)
    try:
        ok = await until_stopped(following, stop, timeout)
    except Stopped:
        err.print(f"stopped watching workflow {workflow_id}", highlight=False)
        return 130
    except GaveUp:
        started = bool(await client.events(workflow_id))
        what = "did not end" if started else "did not start"
        raise fail(f"workflow {workflow_id} {what} within {timeout:g} s", 1) from None
    return 0 if ok else 1


@app.command()
def watch(
    workflow_id: str,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (default: never).")
    ] = None,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Print the model's text as it is produced.")
    ] = False,
) -> None:
    """Print a workflow's events as they happen, until it ends (Ctrl-C stops)."""
    from jetagent.client import Client

    settings = _settings()

    async def main(stop: asyncio.Event) -> int:
        client = Client(await _connect(settings, "jetagent.cli"), settings)
        try:
            if not await client.events(workflow_id):
                limit = f" for up to {timeout:g} s" if timeout is not None else ""
                console.print(
                    f"waiting for workflow {workflow_id} to start{limit} "
                    "(nothing recorded under that id yet; Ctrl-C stops)",
                    highlight=False,
                )
            return await _follow(client, workflow_id, stop, timeout, tokens=tokens)
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
            raise fail("stale schemas: " + ", ".join(stale) + " (run `jetagent schemas`)", 1)
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
                service = ProjectionService(nc, settings)
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

    _run(main)


@app.command()
def demo() -> None:
    """Run the demo (what `make demo` runs)."""
    from jetagent.cli.demo import main as demo_main

    raise typer.Exit(demo_main())


# The SRE commands (inspect, replay, tail, dlq) live in their own module; importing it
# registers them on ``app``.
import jetagent.cli._ops  # noqa: E402, F401


def main() -> None:
    try:
        app()
    except JetagentError as exc:  # raised before a command's event loop (settings, args)
        fail(str(exc))
        sys.exit(2)


_ = json
