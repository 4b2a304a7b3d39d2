"""Token deltas: a reasoning step's text as the model produces it, outside the record.

Deltas travel on core NATS, ``<prefix>.tokens.<workflow_id>.<step_id>``, a subject no
stream captures (README "Streaming tokens"): they are a live view, never part of a
workflow's history. A subscriber that joins late or misses some still gets the whole
answer from the record (``StepCompleted``, ``Finalized``); nothing here is stored, so a
stream cut mid-way cannot change what is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from jetagent.subjects import Names

__all__ = ["TokenDelta", "TokenPublisher", "follow_tokens", "stream_workflow"]


class TokenDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of a model's answer while its step runs."""

    workflow_id: str
    step_id: str
    attempt: int = 1
    index: int = 0
    """Position of this delta in its call (0, 1, ...): a gap shows a lost delta."""
    text: str = ""
    model: str = ""
    done: bool = False
    """The step's answer ended (the whole answer and its usage are in the record)."""
    restart: bool = False
    """Drop the text shown so far for this step: another call's answer follows (a hedge
    or a retry won; only the winner's text counts)."""


class TokenPublisher:
    """Publishes one call's deltas, numbered. Errors publishing are swallowed: the live
    view is best effort and must never fail the step. A running step's publisher is
    ``StepContext.tokens()``."""

    def __init__(
        self,
        nc: Any,
        names: Names,
        *,
        workflow_id: str,
        step_id: str,
        attempt: int = 1,
        model: str = "",
    ) -> None:
        self._nc = nc
        self._subject = names.tokens(workflow_id, step_id)
        self._workflow_id, self._step_id = workflow_id, step_id
        self._attempt, self._model = attempt, model
        self._index = 0

    async def delta(self, text: str, *, model: str = "") -> None:
        if text:
            await self._publish(self._delta(text=text, model=model))

    async def restart(self) -> None:
        await self._publish(self._delta(restart=True))

    async def done(self) -> None:
        await self._publish(self._delta(done=True))

    def _delta(
        self, *, text: str = "", model: str = "", done: bool = False, restart: bool = False
    ) -> TokenDelta:
        delta = TokenDelta(
            workflow_id=self._workflow_id,
            step_id=self._step_id,
            attempt=self._attempt,
            model=model or self._model,
            index=self._index,
            text=text,
            done=done,
            restart=restart,
        )
        self._index += 1
        return delta

    async def _publish(self, delta: TokenDelta) -> None:
        if self._nc is None:
            return
        # Best effort by design: a lost delta is a gap in the live view, never a failure.
        with contextlib.suppress(Exception):
            await self._nc.publish(self._subject, msgspec.json.encode(delta))


async def follow_tokens(nc: Any, names: Names, workflow_id: str) -> AsyncIterator[TokenDelta]:
    """Deltas of a workflow from now on (core NATS: no history). Runs until cancelled
    or the caller stops iterating."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)

    async def on_message(msg: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a slow reader drops deltas, not memory
            queue.put_nowait(msg.data)

    sub = await nc.subscribe(names.tokens(workflow_id), cb=on_message)
    try:
        while True:
            data = await queue.get()
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                yield msgspec.json.decode(data, type=TokenDelta)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def stream_workflow(client: Any, workflow_id: str) -> AsyncGenerator[TokenDelta, None]:
    """``Client.stream``: a workflow's deltas from now on, ending when the workflow ends.

    Deltas are published before the step's result, so they arrive before the final event
    on this connection; whatever was missed is in the record (``Client.result``)."""
    from jetagent.errors import RequestRejectedError

    queue: asyncio.Queue[TokenDelta | None] = asyncio.Queue(maxsize=10_000)

    async def on_message(msg: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull, msgspec.ValidationError, msgspec.DecodeError):
            queue.put_nowait(msgspec.json.decode(msg.data, type=TokenDelta))

    async def until_the_end() -> None:
        try:
            with contextlib.suppress(RequestRejectedError):
                await client.result(workflow_id, timeout=None)
        finally:
            await queue.put(None)  # whatever ended it (the end, an error), the stream ends

    sub = await client.nc.subscribe(client.names.tokens(workflow_id), cb=on_message)
    ending = asyncio.create_task(until_the_end())
    try:
        while (delta := await queue.get()) is not None:
            yield delta
        await ending  # raises what ended it, if anything did
    finally:
        ending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ending
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
