"""Following a stream live: the messages after a sequence, then new ones as they come.

An ordered consumer (ephemeral, flow-controlled, recreated by nats-py after a gap or a
reconnect) delivers in stream order; this turns it into an async iterator of
:class:`~jetagent.jetstream.Record` and keeps nats-py's errors inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy

from jetagent.jetstream._direct import Record
from jetagent.jetstream._errors import JetStreamUnavailableError

__all__ = ["follow"]


async def follow(
    nc: NATS, stream: str, subject_filter: str, *, after_seq: int = 0
) -> AsyncGenerator[Record, None]:
    """Messages of ``stream`` matching ``subject_filter`` after ``after_seq``, then live
    ones, until the caller stops iterating."""
    try:
        sub = await nc.jetstream().subscribe(
            subject_filter,
            stream=stream,
            ordered_consumer=True,
            # nats-py recreates an ordered consumer that missed two heartbeats (its node
            # died): following resumes within seconds of an election, not ten.
            idle_heartbeat=1.0,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1
            ),
        )
    except NatsError as exc:
        raise JetStreamUnavailableError(f"cannot follow stream {stream!r}: {exc}") from exc
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=None)
            except NatsError as exc:
                raise JetStreamUnavailableError(
                    f"following stream {stream!r} stopped: {exc}"
                ) from exc
            yield Record(
                seq=msg.metadata.sequence.stream,
                subject=msg.subject,
                data=msg.data,
                headers=msg.headers or {},
            )
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
