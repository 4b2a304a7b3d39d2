"""Batched direct get (``$JS.API.DIRECT.GET.<stream>``) over one shared inbox subscription.

nats-py has no call for a request with many replies, so a reader keeps one wildcard
inbox subscription and routes each reply, by its last subject token, to the read that
asked for it. A batch read ends at the ``204 EOB`` status message (docs/ARCHITECTURE.md §5.7).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from jetagent.jetstream._errors import JetStreamUnavailableError
from jetagent.jetstream.headers import Header

__all__ = ["DirectGetter", "Record"]


@dataclass(slots=True)
class Record:
    """One stored message as direct get returns it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


class _Read:
    __slots__ = ("done", "error", "pending", "records", "single")

    def __init__(self, single: bool) -> None:
        self.records: list[Record] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.single = single
        self.pending = 0
        self.error: str | None = None


class DirectGetter:
    """Reads messages of one stream by sequence, subject filter or last-by-subject."""

    def __init__(self, nc: NATS, stream: str, *, timeout: float) -> None:
        self._nc = nc
        self._api = f"$JS.API.DIRECT.GET.{stream}"
        self._timeout = timeout
        self._prefix = ""
        self._sub: Subscription | None = None
        self._reads: dict[str, _Read] = {}
        self._ids = itertools.count(1)

    async def open(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        read = self._reads.get(msg.subject[len(self._prefix) :])
        if read is None or read.done.done():
            return
        headers = msg.headers or {}
        status = headers.get(Header.STATUS)
        if status is not None:
            if status == "204":  # end of batch
                read.pending = int(headers.get(Header.NUM_PENDING, "0"))
            elif status != "404":  # 404: no such message, an empty answer
                read.error = f"{status} {headers.get(Header.DESCRIPTION, '')}".strip()
            read.done.set_result(None)
            return
        read.records.append(
            Record(
                seq=int(headers[Header.SEQUENCE]),
                subject=headers[Header.SUBJECT],
                data=msg.data,
                headers=headers,
            )
        )
        if read.single:
            read.done.set_result(None)

    async def _request(self, body: dict[str, object], *, single: bool) -> _Read:
        if self._sub is None:
            await self.open()
        token = str(next(self._ids))
        read = _Read(single)
        self._reads[token] = read
        try:
            await self._nc.publish(self._api, msgspec.json.encode(body), reply=self._prefix + token)
            await asyncio.wait_for(read.done, self._timeout)
        except (TimeoutError, NatsError) as exc:
            raise JetStreamUnavailableError(
                f"reading stream via {self._api} failed ({type(exc).__name__}): "
                "the server did not answer in time"
            ) from exc
        finally:
            del self._reads[token]
        if read.error is not None:
            raise JetStreamUnavailableError(f"direct get on {self._api} failed: {read.error}")
        return read

    async def last(self, subject_filter: str, *, min_last_seq: int = 0) -> Record | None:
        """The newest message on any subject matching ``subject_filter``.

        With ``min_last_seq``, only a server whose copy of the stream reaches that
        sequence answers: a follower that is behind stays silent (ADR-31), so a read
        that a decision rests on sees at least what the decider knows was written.
        """
        body: dict[str, object] = {"last_by_subj": subject_filter}
        if min_last_seq > 0:
            body["min_last_seq"] = min_last_seq
        read = await self._request(body, single=True)
        return read.records[0] if read.records else None

    async def scan(
        self,
        subject_filter: str,
        *,
        start_seq: int = 1,
        page: int = 1000,
        until: Callable[[Record], bool] | None = None,
    ) -> list[Record]:
        """Messages matching ``subject_filter`` from ``start_seq`` on, in stream order.

        Pages through the stream until it is exhausted or ``until(record)`` is true for
        the last record read.
        """
        out: list[Record] = []
        seq = max(start_seq, 1)
        while True:
            read = await self._request(
                {"seq": seq, "next_by_subj": subject_filter, "batch": page}, single=False
            )
            out.extend(read.records)
            if not read.records or read.pending == 0:
                return out
            if until is not None and until(read.records[-1]):
                return out
            seq = read.records[-1].seq + 1
