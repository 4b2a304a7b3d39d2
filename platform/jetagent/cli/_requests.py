"""The ``jetagent`` commands that talk to the platform through the request contract:
``submit`` a request and ``watch`` it, write the contract's ``schemas``, and the ``demo``
(a platform of its own, and requests submitted to it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from jetagent.cli._base import connect, console, err, fail, load_settings, run
from jetagent.errors import JetagentError

__all__ = ["GaveUp", "Stopped", "commands", "until_stopped"]

T = TypeVar("T")

commands = typer.Typer()


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


@commands.command()
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
    import pydantic

    from jetagent._translate import invalid_request
    from jetagent.client import Client
    from jetagent.contract import WorkflowRequest

    settings = load_settings()
    limits: dict[str, Any] = {}
    if token_cap is not None:
        limits["token_cap"] = token_cap
    if cost_cap is not None:
        limits["cost_cap_usd"] = cost_cap
    if deadline is not None:
        limits["deadline_s"] = deadline

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
        client = Client(await connect(settings, "jetagent.cli"), settings)
        try:
            workflow_id = await client.submit(request)
            console.print(workflow_id)
            if not wait:
                return 0
            return await _follow(client, workflow_id, stop, timeout)
        finally:
            await client.close()

    run(main, service="submit")


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


@commands.command()
def watch(
    workflow_id: Annotated[str, typer.Argument(help="A workflow id, or a unique prefix of one.")],
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (default: never).")
    ] = None,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Print the model's text as it is produced.")
    ] = False,
) -> None:
    """Print a workflow's events as they happen, until it ends (Ctrl-C stops)."""
    from jetagent.client import Client

    settings = load_settings()

    async def main(stop: asyncio.Event) -> int:
        from jetagent.cli._base import resolve_id

        client = Client(await connect(settings, "jetagent.cli"), settings)
        try:
            # An id nothing starts with may be a workflow about to start: waited for.
            wid = await resolve_id(client, workflow_id, missing_ok=True)
            if wid != workflow_id:  # a prefix: say which workflow it named
                console.print(f"workflow {wid}", highlight=False)
            if not await client.events(wid):
                limit = f" for up to {timeout:g} s" if timeout is not None else ""
                console.print(
                    f"waiting for workflow {wid} to start{limit} "
                    "(nothing recorded under that id yet; Ctrl-C stops)",
                    highlight=False,
                )
            return await _follow(client, wid, stop, timeout, tokens=tokens)
        finally:
            await client.close()

    run(main, service="watch")


@commands.command()
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


@commands.command()
def demo() -> None:
    """Run the demo (what `make demo` runs)."""
    from jetagent.cli.demo import main as demo_main

    raise typer.Exit(demo_main())
