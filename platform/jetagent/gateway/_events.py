"""Server-Sent Events of one workflow: every transition, and token deltas, live.

Each transition is an SSE event named by its type, its ``id`` the JA_WORKFLOWS stream
sequence of the message that holds it; a client that reconnects with ``Last-Event-ID``
resumes right after that message (no gap, no repeat). Several events recorded in one
message are written in one chunk, and only the last carries the ``id``. Token deltas
(``event: token``) carry no id: they are not in the record and are not replayed.
The stream ends after the workflow's final event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy

from jetagent.client import Client
from jetagent.events import Cancelled, Finalized, RequestRejected, Terminated, decode_events
from jetagent.token_stream import follow_tokens

__all__ = ["parse_last_event_id", "sse_stream"]

_FINAL = (Finalized, Terminated, Cancelled, RequestRejected)
KEEPALIVE_S = 15.0


def _frame(event: str, data: bytes, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return head.encode() + f"event: {event}\n".encode() + b"data: " + data + b"\n\n"


async def sse_stream(
    client: Client, workflow_id: str, *, after: int, tokens: bool, finished: bool = False
) -> AsyncIterator[bytes]:
    """SSE frames for ``workflow_id`` from the message after sequence ``after``
    (``finished``: the client has seen the final event already; nothing follows)."""
    if finished:
        yield b": the workflow has ended; nothing follows event " + str(after).encode() + b"\n\n"
        return
    names = client.names
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    config = (
        ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        if after > 0
        else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    sub = await client.js.subscribe(
        names.workflow(workflow_id),
        stream=names.workflows_stream,
        ordered_consumer=True,
        config=config,
    )

    async def transitions() -> None:
        while True:
            msg = await sub.next_msg(timeout=None)
            seq = msg.metadata.sequence.stream
            events = decode_events(msg.data)
            chunk = b""
            for i, event in enumerate(events):
                last = i == len(events) - 1
                body = msgspec.json.encode(event)
                chunk += _frame(type(event).__name__, body, seq if last else None)
            await queue.put(chunk)
            if any(isinstance(e, _FINAL) for e in events):
                await queue.put(None)
                return

    async def deltas() -> None:
        async for delta in follow_tokens(client.nc, names, workflow_id):
            await queue.put(_frame("token", msgspec.json.encode(delta)))

    tasks = [asyncio.create_task(transitions())]
    if tokens:
        tasks.append(asyncio.create_task(deltas()))
    try:
        yield b": jetagent events of " + workflow_id.encode() + b"\n\n"
        while True:
            if tasks[0].done() and queue.empty():
                tasks[0].result()  # raises what ended it, if anything did
                return
            try:
                chunk = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if chunk is None:
                return
            yield chunk
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
        consumer = getattr(sub, "_consumer", None)
        if consumer:  # see Client.watch: don't leave ordered consumers behind
            with contextlib.suppress(NatsError, TimeoutError):
                await client.js.delete_consumer(names.workflows_stream, consumer)


def parse_last_event_id(value: str | None) -> int:
    """The stream sequence a client resumes after (0: from the start)."""
    if value is None or not value.strip().isdigit():
        return 0
    return min(int(value.strip()), 1 << 62)
