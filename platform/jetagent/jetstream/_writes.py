"""One write to a stream: a single message, or a JetStream atomic batch, and its retries.

Both of the store's writers (``AsyncStore`` for eventsourcing applications and
``AggregateStream`` for the workflow engine) write this way: publish, and when the
acknowledgement does not come (a timeout, a server restart, a leader election) first
look whether the write landed (its first message's ``Nats-Msg-Id``) and only otherwise
send it again, until the deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from jetagent.jetstream._errors import StoreUnavailableError

__all__ = [
    "DUPLICATE_IN_BATCH",
    "MSG_ID",
    "WRONG_LAST_SEQUENCE",
    "ApiError",
    "Message",
    "PubAck",
    "write",
]

T = TypeVar("T")
MSG_ID = "Nats-Msg-Id"
WRONG_LAST_SEQUENCE = 10071
DUPLICATE_IN_BATCH = 10201  # "atomic publish batch contains duplicate message id"


@dataclass(slots=True)
class Message:
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    count: int = 0
    error: ApiError | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


async def _publish(nc: NATS, messages: list[Message], timeout: float) -> PubAck:
    if len(messages) == 1:
        m = messages[0]
        reply = await nc.request(m.subject, m.data, timeout=timeout, headers=m.headers)
        return _decode_ack(reply.data)
    # JetStream atomic batch: publish 1..n-1, request the commit (docs/ARCHITECTURE.md §5.3).
    batch_id = uuid.uuid4().hex
    for i, m in enumerate(messages, start=1):
        m.headers["Nats-Batch-Id"] = batch_id
        m.headers["Nats-Batch-Sequence"] = str(i)
    for m in messages[:-1]:
        await nc.publish(m.subject, m.data, headers=m.headers)
    last = messages[-1]
    last.headers["Nats-Batch-Commit"] = "1"
    reply = await nc.request(last.subject, last.data, timeout=timeout, headers=last.headers)
    return _decode_ack(reply.data)


async def write(
    nc: NATS,
    messages: list[Message],
    *,
    timeout: float,
    deadline_s: float,
    landed: Callable[[], Awaitable[T | None]],
    what: str,
) -> PubAck | T:
    """Publish ``messages`` as one write; return the server's ack, or what ``landed()``
    found when an earlier attempt of this very write turned out to be stored."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await _publish(nc, messages, timeout)
        except (NatsTimeoutError, NoRespondersError, ConnectionClosedError, OSError) as exc:
            found = await landed()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    f"could not {what} within {deadline_s:.0f} s ({type(exc).__name__})"
                ) from exc
            await asyncio.sleep(0.05)
        except NatsError as exc:
            raise StoreUnavailableError(f"could not {what}: {exc}") from exc


def actual_sequence(description: str) -> int | None:
    """The sequence a "wrong last sequence: N" refusal reports."""
    try:
        return int(description.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
