"""``jetagent watch --tokens``: the workflow's events, with the model's text streamed in
between them as it is produced (README "Streaming tokens")."""

from __future__ import annotations

import asyncio
import contextlib

from rich.console import Console

from jetagent.cli._render import follow
from jetagent.client import Client
from jetagent.token_stream import follow_tokens

__all__ = ["follow_with_tokens"]


async def follow_with_tokens(client: Client, workflow_id: str, console: Console) -> bool:
    """Print events and token deltas until the workflow ends; True if it finalized."""

    async def tokens() -> None:
        open_line = False
        async for delta in follow_tokens(client.nc, client.names, workflow_id):
            if delta.restart:
                console.print(" [dim](replaced by another call's answer)[/]")
                open_line = False
            elif delta.done:
                if open_line:
                    console.print()
                open_line = False
            elif delta.text:
                if not open_line:
                    console.print(f"[dim]{delta.step_id} ▸[/] ", end="")
                console.print(delta.text, end="", highlight=False, markup=False)
                open_line = True

    # Subscribed before following, so no delta of the first step is missed.
    printer = asyncio.create_task(tokens())
    await asyncio.sleep(0)
    try:
        return await follow(client, workflow_id, console)
    finally:
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
