"""Reading a stream: batched direct get over one shared inbox, checked against the
sequence a decision must see, and the leader when only the leader can answer.

nats-py has no call for a request with many replies, so a reader keeps one wildcard
inbox subscription and routes each reply, by its last subject token, to the read that
asked for it. A batch read ends at the ``204 EOB`` status message
(docs/ARCHITECTURE.md §5.7).

**Any replica answers a direct get, and one that is behind answers with what it has**
(§5.8): nats-server 2.15 ignores the request's ``min_last_seq``, and two requests may
be answered by two replicas. So a read whose answer decides something names the
sequence it must see (``need``: the token that came with the input, the sequence a
refused write reported, or the leader's head) and the reader checks each reply against
it: a reply that does not reach it is asked again (another replica, or the same one a
millisecond later, has it), and after a few tries the stream's leader is asked with
``$JS.API.STREAM.MSG.GET``, which only the leader answers and which is never stale. A
direct get can never prove that something is absent: :meth:`DirectGetter.confirmed_last`
asks the leader before it answers "none", and :meth:`DirectGetter.leader_last` asks it
for the newest message outright.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from jetagent.jetstream._errors import JetStreamUnavailableError
from jetagent.jetstream.headers import ErrorCode, Header

__all__ = ["DirectGetter", "Record"]

_TRY_S = 1.0
"""How long one request waits for its answer before it is sent again (a request sent
on a connection that died, or to a replica that was killed, is never answered)."""
_FRESH_TRIES = 6
"""Direct gets that may come back behind the needed sequence before the leader is
asked; a replica that is behind is so by a few messages and milliseconds (§5.8), so
most such reads are answered by the second try."""
_NOT_READY_PAUSE_S = 0.1
"""Pause after a ``503`` (no replica serves direct gets yet: a stream just created, or
electing)."""


@dataclass(slots=True)
class Record:
    """One stored message as direct get returns it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


class _Read:
    __slots__ = ("done", "error", "not_ready", "pending", "records", "single")

    def __init__(self, single: bool) -> None:
        self.records: list[Record] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.single = single
        self.pending = 0
        self.error: str | None = None
        self.not_ready = False


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _StoredMsg(msgspec.Struct):
    subject: str
    seq: int
    data: str = ""
    hdrs: str = ""


class _MsgGetReply(msgspec.Struct):
    message: _StoredMsg | None = None
    error: _ApiError | None = None


_decode_msg_get = msgspec.json.Decoder(_MsgGetReply).decode


class DirectGetter:
    """Reads messages of one stream by sequence, subject filter or last-by-subject.

    ``timeout`` bounds each read as a whole; a request that gets no answer within a
    second is sent again meanwhile (reads are idempotent). ``retried`` counts the
    replies that were behind a needed sequence and asked again, ``from_leader`` the
    reads the leader answered.
    """

    def __init__(self, nc: NATS, stream: str, *, timeout: float) -> None:
        self._nc = nc
        self.stream = stream
        self._api = f"$JS.API.DIRECT.GET.{stream}"
        self._leader_api = f"$JS.API.STREAM.MSG.GET.{stream}"
        self._timeout = timeout
        self._prefix = ""
        self._sub: Subscription | None = None
        self._reads: dict[str, _Read] = {}
        self._ids = itertools.count(1)
        self.retried = 0
        self.from_leader = 0

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
            elif status == "503":  # no responders: no replica serves direct gets yet
                read.not_ready = True
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
        payload = msgspec.json.encode(body)
        deadline = time.monotonic() + self._timeout
        while True:
            token = str(next(self._ids))
            read = _Read(single)
            self._reads[token] = read
            failure: BaseException | None = None
            try:
                await self._nc.publish(self._api, payload, reply=self._prefix + token)
                left = deadline - time.monotonic()
                await asyncio.wait_for(read.done, max(min(_TRY_S, left), 0.01))
            except (TimeoutError, NatsError) as exc:
                failure = exc
            finally:
                del self._reads[token]
            if failure is None and read.error is not None:
                raise JetStreamUnavailableError(f"direct get on {self._api} failed: {read.error}")
            if failure is None and not read.not_ready:
                return read
            if time.monotonic() >= deadline:
                why = type(failure).__name__ if failure is not None else "503 no responders"
                raise JetStreamUnavailableError(
                    f"reading stream via {self._api} failed ({why}): "
                    "the server did not answer in time"
                ) from failure
            if read.not_ready:
                await asyncio.sleep(_NOT_READY_PAUSE_S)

    async def last(self, subject_filter: str, *, need: int = 0) -> Record | None:
        """The newest message on any subject matching ``subject_filter``, as one replica
        knows it; with ``need``, one at sequence ``need`` or later (asked again, then of
        the leader, until a reply reaches it; the leader's answer stands as it is)."""
        body: dict[str, object] = {"last_by_subj": subject_filter}
        for attempt in range(_FRESH_TRIES):
            read = await self._request(body, single=True)
            record = read.records[0] if read.records else None
            if need <= 0 or (record is not None and record.seq >= need):
                return record
            self.retried += 1
            await asyncio.sleep(0.001 * (attempt + 1))
        return await self.leader_last(subject_filter)

    async def confirmed_last(self, subject_filter: str) -> Record | None:
        """The newest message matching ``subject_filter``; "none" only as the leader says.

        A message a replica returns was stored (replicas hold only what was committed),
        so a found one is an answer at once; an empty answer may come from a replica that
        is behind, so it is asked of the leader.
        """
        record = await self.last(subject_filter)
        return record if record is not None else await self.leader_last(subject_filter)

    async def leader_last(self, subject_filter: str) -> Record | None:
        """The newest message matching ``subject_filter``, as the stream's leader knows
        it: never stale, about a millisecond, and not answered while the stream elects
        a leader (raises :class:`JetStreamUnavailableError` after the read's timeout)."""
        return await self._leader_get({"last_by_subj": subject_filter})

    async def _leader_get(self, body: dict[str, object]) -> Record | None:
        payload = msgspec.json.encode(body)
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                left = deadline - time.monotonic()
                reply = await self._nc.request(
                    self._leader_api, payload, timeout=max(min(_TRY_S, left), 0.01)
                )
                answer = _decode_msg_get(reply.data)
            except (TimeoutError, NatsError, msgspec.DecodeError) as exc:
                # No leader answers while the stream elects one: ask again until the
                # read's deadline.
                if time.monotonic() >= deadline:
                    raise JetStreamUnavailableError(
                        f"the leader of stream {self.stream!r} did not answer "
                        f"({type(exc).__name__}); it may be electing one"
                    ) from exc
                await asyncio.sleep(_NOT_READY_PAUSE_S)
                continue
            self.from_leader += 1
            if answer.error is not None:
                if answer.error.err_code == ErrorCode.NO_MESSAGE_FOUND:
                    return None
                raise JetStreamUnavailableError(
                    f"reading stream {self.stream!r} from its leader failed: "
                    f"{answer.error.description} (error {answer.error.err_code})"
                )
            if answer.message is None:
                return None
            return _record_of(answer.message)

    async def scan(
        self,
        subject_filter: str,
        *,
        start_seq: int = 1,
        page: int = 1000,
        until: Callable[[Record], bool] | None = None,
        need: int = 0,
    ) -> list[Record]:
        """Messages matching ``subject_filter`` from ``start_seq`` on, in stream order.

        Pages through the stream until it is exhausted or ``until(record)`` is true for
        the last record read. With ``need``, the answer reaches sequence ``need``: a
        replica's answer that ends before it is continued by asking again, and after a
        few tries by asking the leader, whose answer stands as it is.
        """
        out: list[Record] = []
        seq = max(start_seq, 1)
        behind = 0
        while True:
            read = await self._request(
                {"seq": seq, "next_by_subj": subject_filter, "batch": page}, single=False
            )
            out.extend(read.records)
            if read.records:
                seq = read.records[-1].seq + 1
                if until is not None and until(read.records[-1]):
                    return out
                if read.pending > 0:
                    continue
            # This replica has nothing more: enough if it reached what must be seen.
            if seq > need:
                return out
            behind += 1
            if behind >= _FRESH_TRIES:
                out.extend(await self._leader_scan(subject_filter, start_seq=seq))
                return out
            self.retried += 1
            await asyncio.sleep(0.001 * behind)

    async def _leader_scan(self, subject_filter: str, *, start_seq: int) -> list[Record]:
        """The rest of a scan from the leader, one message per request."""
        out: list[Record] = []
        seq = start_seq
        while True:
            record = await self._leader_get({"seq": seq, "next_by_subj": subject_filter})
            if record is None:
                return out
            out.append(record)
            seq = record.seq + 1


def _record_of(message: _StoredMsg) -> Record:
    headers: dict[str, str] = {}
    if message.hdrs:
        raw = base64.b64decode(message.hdrs)
        # The first line is the version ("NATS/1.0"); the rest are "Name: value".
        for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
            name, sep, value = line.partition(":")
            if sep and name.strip():
                headers[name.strip()] = value.strip()
    headers[Header.SEQUENCE] = str(message.seq)
    headers[Header.SUBJECT] = message.subject
    return Record(
        seq=message.seq,
        subject=message.subject,
        data=base64.b64decode(message.data) if message.data else b"",
        headers=headers,
    )
